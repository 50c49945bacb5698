"""privspk on Flower's deployment engine (SuperLink, SuperNodes, ServerApp, ClientApp).

Who does what:

- :mod:`~privspk.runtimes.flower.serverapp` is the Flower ``ServerApp``. It holds the
  global model and drives each round: a ``train`` message to every node, then one
  message per scheme stage (:meth:`privspk.secagg.ServerRound.outbox`), its own
  push/pull loop with short polling and a timeout per stage; a node that errors or
  times out simply does not answer, and the scheme's own recovery handles it.
- :mod:`~privspk.runtimes.flower.clientapp` is the Flower ``ClientApp``: a thin bridge
  (no torch import) that hands each message to the node's privspk agent over a local
  socket and returns its reply. Flower starts a fresh process per message, so the
  node's state (data, private head, ledger, scheme endpoint and its keys) lives in the
  agent (:mod:`~privspk.runtimes.flower.node`), which ``privspk join`` starts next to
  the SuperNode in the same process.
- :mod:`~privspk.runtimes.flower.launch` wraps ``flower-superlink``,
  ``flower-supernode`` and ``flwr run`` as ``privspk serve``, ``privspk join`` and
  ``privspk run``.

Small metadata travels as one JSON string in a ``ConfigRecord``; a payload of up to
1 MiB travels as bytes in the same record, a larger one as a ``uint8`` array in an
``ArrayRecord`` (Flower chunks it) (:mod:`~privspk.runtimes.flower.messages`). Nothing
here parses a scheme's bytes.
"""
