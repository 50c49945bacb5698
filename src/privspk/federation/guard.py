"""Binds a federated client to the privacy ledger: its budget, its spends, its releases.

A thin adapter from the client's round steps to :class:`privspk.privacy.BudgetGuard`
and :class:`privspk.privacy.Ledger`: the ledger row carries the digest of the exact
update bytes, so a re-send after a crash can only release the recorded update.

>>> import tempfile, pathlib
>>> from privspk.privacy import Ledger, Mechanism, PrivacyBudget
>>> led = Ledger(pathlib.Path(tempfile.mkdtemp()) / "l.sqlite", run_id="r", settings={})
>>> g = LedgerGuard(led, "client0", PrivacyBudget(epsilon=8, delta=1e-5), accountant="rdp")
>>> mech = Mechanism(noise_multiplier=1.0, sample_rate=0.05, steps=10, clip=1.0, delta=1e-5)
>>> round(g.commit(round_id=1, mechanism=mech, scheme="mask", update=b"x"), 3) == round(g.epsilon(), 3)
True
>>> g.committed(1), g.committed(2)
(True, False)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from privspk.errors import CheckpointError, ConfigError
from privspk.privacy import BudgetGuard, Ledger, Mechanism, PrivacyBudget
from privspk.privacy.ledger import SignedHead, digest_update
from privspk.secagg.keys import IdentityKey

__all__ = ["LedgerGuard", "client_identity"]

_EXAMPLE = Mechanism(noise_multiplier=1.0, sample_rate=0.05, steps=10, clip=1.0, delta=1e-5)  # for the doctests


def _example_guard() -> LedgerGuard:
    """A guard over a fresh temporary ledger, for the doctests of this module."""
    import tempfile

    led = Ledger(Path(tempfile.mkdtemp()) / "l.sqlite", run_id="r", settings={})
    return LedgerGuard(led, "client0", PrivacyBudget(epsilon=8, delta=1e-5), accountant="rdp")


class LedgerGuard:
    """The :class:`privspk.federation.client.SpendGuard` of one client, over the run's ledger.

    >>> _example_guard().client
    'client0'
    """

    def __init__(self, ledger: Ledger, client: str, budget: PrivacyBudget, *, accountant: str,
                 client_budget: PrivacyBudget | None = None, client_mechanism=None,
                 identity: IdentityKey | None = None) -> None:
        self.ledger = ledger
        self.client = client
        self.identity = identity  # signs the ledger's chain head after each of this client's spends
        self.client_mechanism = client_mechanism
        self.guard = BudgetGuard(ledger, client, budget, accountant=accountant, client_budget=client_budget)

    def _client_level(self) -> dict:
        if self.client_mechanism is None:
            return {}
        # participation is not secretly sampled here: every round counts at rate 1
        return {"client_mechanism": self.client_mechanism, "client_sample_rate": 1.0}

    def authorize(self, *, round_id: int, mechanism: Mechanism) -> float:
        """Epsilon after the round; BudgetExceededError (nothing written) when over budget.

        >>> round(_example_guard().authorize(round_id=1, mechanism=_EXAMPLE), 3)
        2.156
        """
        return self.guard.authorize_round(round_id, mechanism, **self._client_level())

    def commit(self, *, round_id: int, mechanism: Mechanism, scheme: str, update) -> float:
        """Record the spend (the mechanism, with the update's digest) in one committed transaction.

        >>> g = _example_guard()
        >>> g.commit(round_id=1, mechanism=_EXAMPLE, scheme="mask", update=b"u") == g.epsilon()
        True
        """
        row = self.guard.commit_spend(round_id, mechanism, scheme=scheme, update_digest=_digest(update),
                                      signer=self.identity, **self._client_level())
        return row.epsilon_after

    def signed_head(self, round_id: int) -> SignedHead | None:
        """The ledger's chain head after this client's spend of ``round_id``, signed (what it shows the server).

        >>> g = _example_guard(); _ = g.commit(round_id=1, mechanism=_EXAMPLE, scheme="mask", update=b"u")
        >>> g.signed_head(1).seq  # unsigned here: no identity key
        1
        """
        return self.ledger.signed_head(self.client, round_id)

    def client_epsilon(self) -> float | None:
        """Client-level epsilon spent so far (``None`` without client-level DP).

        >>> _example_guard().client_epsilon() is None
        True
        """
        return self.ledger.client_epsilon(self.client)

    def committed(self, round_id: int) -> bool:
        """Whether this client's spend for the round is recorded.

        >>> _example_guard().committed(1)
        False
        """
        return self.ledger.row(self.client, round_id) is not None

    def released(self, round_id: int, update) -> None:
        """Mark released; refuses an update other than the recorded one.

        >>> g = _example_guard(); _ = g.commit(round_id=1, mechanism=_EXAMPLE, scheme="mask", update=b"u")
        >>> g.released(1, b"u"); g.ledger.row("client0", 1).status
        'released'
        """
        self.ledger.mark_released(self.client, round_id, update_digest=_digest(update))

    def abandon(self, round_id: int, reason: str) -> None:
        """Mark the round abandoned (its spend still counts); ``reason`` goes in the row's note.

        >>> g = _example_guard(); _ = g.commit(round_id=1, mechanism=_EXAMPLE, scheme="mask", update=b"u")
        >>> g.abandon(1, "server timed out"); g.ledger.row("client0", 1).note
        'server timed out'
        """
        self.ledger.mark_abandoned(self.client, round_id, reason=reason)

    def epsilon(self) -> float:
        """Epsilon spent so far, from the ledger.

        >>> _example_guard().epsilon()
        0.0
        """
        return self.ledger.epsilon(self.client)


def client_identity(path: str | Path) -> IdentityKey:
    """The client's long-term Ed25519 identity key, kept in its store: loaded, or made once (mode 0600).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "identity.key"
    >>> client_identity(p).public_bytes() == client_identity(p).public_bytes()
    True
    """
    path = Path(path)
    if path.exists():
        try:
            return IdentityKey.from_private_bytes(path.read_bytes())
        except ConfigError:
            raise CheckpointError(f"{path}: not a 32-byte identity key; the client cannot sign its ledger rows - "
                                  "restore the file (a new key would not match the server's record)") from None
    key = IdentityKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return key


def _digest(update) -> str:
    return digest_update(np.ascontiguousarray(update) if isinstance(update, np.ndarray) else update)
