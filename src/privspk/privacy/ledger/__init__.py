"""The privacy ledger: one SQLite file (WAL mode) recording every round's spend per client.

A row per (run, client, round) holds everything needed to recompute its epsilon
later - accountant, noise multiplier, sampling rate, steps, delta, clipping
bound, scheme, the privacy unit it protects, the client-level (distributed DP)
mechanism when there is one - plus the epsilon after the round, the row's
randomness (``secret``: the round's noise and sampling came from the OS CSPRNG;
``simulation``: from the run's seed, the epsilon then assumes nothing) and the row's
status:

``spent`` -> ``released`` -> ``aggregated``, or -> ``abandoned``.

The spend is written and committed (``synchronous=FULL``: fsync'ed) *before*
the update leaves the client; every committed spend counts towards epsilon
whatever its status - a spend is never refunded. ``(run, client, round)`` is
unique, so a resumed run cannot count a round twice, and an optional digest of
the exact update bytes binds a spend to one release: a re-send after a crash must
be the same bytes.

One run per file. Opening a file of another run, with other privacy settings,
that is not a privspk ledger, or that another process keeps locked, raises
:class:`~privspk.errors.LedgerError` naming the file, and writes nothing.

>>> import tempfile, pathlib
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> from privspk.privacy.mechanism import Mechanism
>>> mech = Mechanism(noise_multiplier=1.1, sample_rate=0.05, steps=20, clip=1.0, delta=1e-5)
>>> with Ledger(tmp / "ledger.sqlite", run_id="demo", settings={"epsilon": 8.0}) as led:
...     row = led.record_spend(Spend(client="c0", round=1, mechanism=mech, epsilon_after=0.9, scheme="mask"))
...     led.mark_released("c0", 1).status
'released'

The package by role:

* :mod:`~privspk.privacy.ledger.rows` - :class:`Spend` (a round's mechanism and outcome), :class:`SpendRow`;
* :mod:`~privspk.privacy.ledger.database` - the SQLite file: schema, opening and its checks, migration;
* :mod:`~privspk.privacy.ledger.storage` - :class:`Ledger`: recording, status transitions, reading rows;
* :mod:`~privspk.privacy.ledger.chain` - the hash chain, signed heads, the server's :class:`AggregatedHeads`;
* :mod:`~privspk.privacy.ledger.audit` - recompute every epsilon, verify the chain (``privspk ledger --check``);
* :mod:`~privspk.privacy.ledger.report` - table, JSON, CSV, plot.
"""

from __future__ import annotations

from privspk.privacy.ledger.audit import RecomputeCheck
from privspk.privacy.ledger.chain import AGGREGATED_HEADS_FORMAT, GENESIS_HASH, AggregatedHeads, ChainFinding, \
    SignedHead, head_message
from privspk.privacy.ledger.rows import EXPORT_COLUMNS, STATUSES, ClientLevelSpend, Spend, SpendRow, digest_update
from privspk.privacy.ledger.storage import LEDGER_FORMAT, SCHEMA_VERSION, Ledger
from privspk.privacy.mechanism import RANDOMNESS_MODES, SIMULATION_WARNING

__all__ = [
    "AGGREGATED_HEADS_FORMAT",
    "GENESIS_HASH",
    "LEDGER_FORMAT",
    "RANDOMNESS_MODES",
    "SIMULATION_WARNING",
    "SCHEMA_VERSION",
    "STATUSES",
    "EXPORT_COLUMNS",
    "ClientLevelSpend",
    "Ledger",
    "RecomputeCheck",
    "Spend",
    "SpendRow",
    "SignedHead",
    "AggregatedHeads",
    "ChainFinding",
    "digest_update",
    "head_message",
]
