"""Runtimes that move privspk's messages between separate processes and machines.

The in-process runtime (:mod:`privspk.federation.runtime`) stays the default for
simulations, tests and benchmarks; :mod:`privspk.runtimes.flower` runs the same
clients, server round and key holder on Flower's deployment engine.
"""
