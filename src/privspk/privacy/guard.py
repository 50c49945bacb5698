"""A client's own budget enforcement: refuse a round that would overspend, record the spend before release.

The guard runs *in the client*; the server does not have to be trusted for it.
Its order of work is the spend-before-release rule:

1. :meth:`BudgetGuard.authorize_round` - would this round stay within the budget?
   If not, :class:`~privspk.errors.BudgetExceededError` is raised and nothing is
   written: the client reports "out of budget" to the server and stops.
2. :meth:`BudgetGuard.commit_spend` - checks again and writes the ledger row in
   one committed, fsync'ed transaction.
3. only then does the update leave the client (``ledger.mark_released``).

When the client declares which speakers' recordings were eligible in a round,
each speaker's epsilon is the composition of the rounds it was eligible in, each
speaker is held to the budget, and the row's epsilon is the worst speaker's.

>>> import tempfile, pathlib
>>> from privspk.privacy.budget import PrivacyBudget
>>> from privspk.privacy.ledger import Ledger
>>> led = Ledger(pathlib.Path(tempfile.mkdtemp()) / "l.sqlite", run_id="r", settings={})
>>> from privspk.privacy.mechanism import Mechanism
>>> guard = BudgetGuard(led, "c0", PrivacyBudget(epsilon=4.0, delta=1e-5))
>>> mech = Mechanism(noise_multiplier=1.0, sample_rate=0.05, steps=50, clip=1.0, delta=1e-5)
>>> round(guard.authorize_round(1, mech), 3)
3.176
>>> row = guard.commit_spend(1, mech, scheme="mask")
>>> guard.authorize_round(2, mech)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
privspk.errors.BudgetExceededError: client c0: round 2 would take epsilon from 3.176 to 4.038; over its budget ...
>>> led.close()
"""

from __future__ import annotations

import dataclasses  # noqa: F401 - the doctests use it
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from privspk.errors import BudgetExceededError, ConfigError, LedgerError
from privspk.privacy._checks import nonempty_str, positive_int, probability
from privspk.privacy.accounting import (
    ClientLevelMechanism,
    ClientLevelRound,
    RoundSpend,
    SpendStep,
    check_accountant,
    client_level_epsilon,
    rounds_epsilon,
    speaker_epsilons,
)
from privspk.privacy.budget import PrivacyBudget
from privspk.privacy.ledger import ClientLevelSpend, Ledger, Spend, SpendRow
from privspk.privacy.mechanism import Mechanism

__all__ = ["BudgetGuard", "RoundPreview"]

logger = logging.getLogger(__name__)

_REL_TOL = 1e-9  # a plan at the budget and the guard's recomposition may differ in the last bits
_EXAMPLE = Mechanism(noise_multiplier=1.0, sample_rate=0.05, steps=50, clip=1.0, delta=1e-5)  # for the doctests


def _example_guard(epsilon: float = 4.0, unit: str = "utterance") -> BudgetGuard:
    """A guard over a fresh temporary ledger, for the doctests of this module."""
    import tempfile
    from pathlib import Path

    led = Ledger(Path(tempfile.mkdtemp()) / "ledger.sqlite", run_id="demo", settings={})
    return BudgetGuard(led, "c0", PrivacyBudget(epsilon=epsilon, delta=1e-5, unit=unit))


@dataclass(frozen=True, kw_only=True)
class RoundPreview:
    """What a round would cost: epsilons after it, per speaker, and whether it fits.

    >>> RoundPreview(round=1, epsilon_after=1.0, within_budget=True).client_epsilon_after is None
    True
    """

    round: int
    epsilon_after: float
    within_budget: bool
    client_epsilon_after: float | None = None
    speaker_epsilons: dict[str, float] = field(default_factory=dict)
    over_budget_speakers: tuple[str, ...] = ()


class BudgetGuard:
    """Enforces one client's budget against its ledger rows.

    Args:
        ledger: the client's (or run's) ledger.
        client: client id.
        budget: sample-level budget (unit ``"utterance"`` or ``"speaker"``).
        accountant: ``"rdp"`` or ``"prv"``.
        client_budget: optional client-level budget (unit ``"client"``) for distributed DP;
            when given, every round must declare its client-level mechanism.

    Raises LedgerError when the client's rows in ``ledger`` were recorded with
    another unit, accountant or delta (a resume with changed privacy settings).

    >>> import tempfile, pathlib
    >>> led = Ledger(pathlib.Path(tempfile.mkdtemp()) / "l.sqlite", run_id="r", settings={})
    >>> g = BudgetGuard(led, "c1", PrivacyBudget(epsilon=8, delta=1e-5, unit="speaker"))
    >>> g.remaining()
    8.0
    >>> led.close()
    """

    def __init__(
        self,
        ledger: Ledger,
        client: str,
        budget: PrivacyBudget,
        *,
        accountant: str = "rdp",
        client_budget: PrivacyBudget | None = None,
    ) -> None:
        if not isinstance(ledger, Ledger):
            raise ConfigError(f"ledger must be a Ledger, got {type(ledger).__name__}")
        if not isinstance(budget, PrivacyBudget):
            raise ConfigError(f"budget must be a PrivacyBudget, got {type(budget).__name__}")
        if budget.unit == "client":
            raise ConfigError(
                "the sample-level budget protects an 'utterance' or a 'speaker'; pass a unit='client' budget as "
                "client_budget"
            )
        if client_budget is not None and (
            not isinstance(client_budget, PrivacyBudget) or client_budget.unit != "client"
        ):
            raise ConfigError("client_budget must be a PrivacyBudget with unit='client'")
        self._ledger = ledger
        self._client = nonempty_str("client", client)
        self._budget = budget
        self._accountant = check_accountant(accountant)
        self._client_budget = client_budget
        rows = ledger.rows(client)
        if rows:
            last = rows[-1]
            changed = [
                f"{name} {getattr(last, name)!r} -> {new!r}"
                for name, new in (("unit", budget.unit), ("accountant", self._accountant), ("delta", budget.delta))
                if getattr(last, name) != new
            ]
            if changed:
                raise LedgerError(
                    f"{ledger.path}: client {client} resumed with changed privacy settings ({'; '.join(changed)}); "
                    "keep the run's settings or start a new run"
                )

    @property
    def client(self) -> str:
        """The guarded client's id.

        >>> _example_guard().client
        'c0'
        """
        return self._client

    @property
    def budget(self) -> PrivacyBudget:
        """The sample-level budget.

        >>> str(_example_guard().budget)
        'epsilon=4 (delta=1e-05) per utterance'
        """
        return self._budget

    @property
    def client_budget(self) -> PrivacyBudget | None:
        """The client-level budget, if any.

        >>> _example_guard().client_budget is None
        True
        """
        return self._client_budget

    def spent(self) -> float:
        """Epsilon recorded so far (worst speaker when speakers are declared).

        >>> g = _example_guard(); _ = g.commit_spend(1, _EXAMPLE, scheme="mask")
        >>> round(g.spent(), 3)
        3.176
        """
        return self._ledger.epsilon(self._client)

    def remaining(self) -> float:
        """Budget epsilon minus what was spent (never negative).

        >>> _example_guard().remaining()
        4.0
        """
        return max(0.0, self._budget.epsilon - self.spent())

    def client_spent(self) -> float | None:
        """Client-level epsilon recorded so far (``None`` without client-level DP).

        >>> _example_guard().client_spent() is None
        True
        """
        return self._ledger.client_epsilon(self._client)

    def speaker_epsilons(self) -> dict[str, float]:
        """Each declared speaker's epsilon so far.

        >>> g = _example_guard(unit="speaker")
        >>> _ = g.commit_spend(1, dataclasses.replace(_EXAMPLE, unit="speaker"), scheme="mask", speakers=["ann"])
        >>> {s: round(e, 3) for s, e in g.speaker_epsilons().items()}
        {'ann': 3.176}
        """
        return speaker_epsilons(
            self._ledger.round_spends(self._client), delta=self._budget.delta, accountant=self._accountant
        )

    def _client_level_args(
        self, client_mechanism: ClientLevelMechanism | None, client_sample_rate: float | None
    ) -> tuple[ClientLevelMechanism, float] | None:
        if client_mechanism is None and client_sample_rate is None:
            if self._client_budget is not None:
                raise ConfigError(
                    f"client {self._client} has a client-level budget: every round needs client_mechanism and "
                    "client_sample_rate"
                )
            return None
        if not isinstance(client_mechanism, ClientLevelMechanism) or client_sample_rate is None:
            raise ConfigError(
                "client-level DP needs both client_mechanism (ClientLevelMechanism) and client_sample_rate"
            )
        return client_mechanism, probability("client_sample_rate", client_sample_rate, allow_one=True)

    def _check_mechanism(self, mechanism: Mechanism) -> SpendStep:
        """The round's accountant step, once the mechanism is known to be charged as this guard charges."""
        if not isinstance(mechanism, Mechanism):
            raise ConfigError(f"mechanism must be a Mechanism, got {type(mechanism).__name__}")
        changed = [
            f"{name} {getattr(mechanism, name)!r} (the guard's: {mine!r})"
            for name, mine in (("unit", self._budget.unit), ("accountant", self._accountant),
                               ("delta", self._budget.delta))
            if getattr(mechanism, name) != mine
        ]
        if changed:
            raise ConfigError(f"client {self._client}: the round's mechanism has another {'; '.join(changed)}")
        return mechanism.step

    def preview(
        self,
        round: int,
        mechanism: Mechanism,
        *,
        speakers: Sequence[str] = (),
        client_mechanism: ClientLevelMechanism | None = None,
        client_sample_rate: float | None = None,
    ) -> RoundPreview:
        """What a round of ``mechanism`` would cost, without writing anything.

        Raises LedgerError when ``round`` is already recorded or not above the client's last round,
        ConfigError when ``mechanism``'s unit, accountant or delta is not the guard's.

        >>> p = _example_guard(epsilon=4.0).preview(1, _EXAMPLE)
        >>> round(p.epsilon_after, 3), p.within_budget
        (3.176, True)
        """
        round = positive_int("round", round)
        if isinstance(speakers, str):
            raise ConfigError("speakers must be a sequence of speaker ids, not one string")
        step = self._check_mechanism(mechanism)
        cl = self._client_level_args(client_mechanism, client_sample_rate)
        rows = self._ledger.rows(self._client)
        if rows and round <= rows[-1].round:
            what = "is already recorded" if any(r.round == round for r in rows) else "is not after"
            raise LedgerError(
                f"{self._ledger.path}: client {self._client} round {round} {what} the last recorded round "
                f"{rows[-1].round}; a round is never counted twice - resume from the ledger's pending rows"
            )
        rounds = [RoundSpend(round=r.round, step=r.step, speakers=r.speakers) for r in rows]
        rounds.append(RoundSpend(round=round, step=step, speakers=tuple(speakers)))
        delta, limit = self._budget.delta, self._budget.epsilon * (1 + _REL_TOL)
        spk_eps: dict[str, float] = {}
        if any(r.speakers for r in rounds):
            spk_eps = speaker_epsilons(rounds, delta=delta, accountant=self._accountant)
            eps_after = max(spk_eps.values())
        else:
            eps_after = rounds_epsilon(rounds, delta=delta, accountant=self._accountant)
        this_round = set(rounds[-1].speakers) if rounds[-1].speakers else set(spk_eps)
        over = tuple(sorted(s for s in this_round if spk_eps.get(s, 0.0) > limit))
        within = eps_after <= limit and not over
        client_eps = None
        if cl is not None:
            prior = self._ledger.client_level_rounds(self._client)
            prior.append(ClientLevelRound(round=round, mechanism=cl[0], sample_rate=cl[1]))
            client_delta = (self._client_budget or self._budget).delta
            client_eps = client_level_epsilon(prior, delta=client_delta)
            if self._client_budget is not None and client_eps > self._client_budget.epsilon * (1 + _REL_TOL):
                within = False
        return RoundPreview(
            round=round,
            epsilon_after=eps_after,
            within_budget=within,
            client_epsilon_after=client_eps,
            speaker_epsilons=spk_eps,
            over_budget_speakers=over,
        )

    def exhausted_speakers(self, speakers: Sequence[str], mechanism: Mechanism) -> tuple[str, ...]:
        """The speakers among ``speakers`` whose epsilon a round with them would push past the budget.

        A client drops their recordings from the next round and keeps training on the rest.

        >>> g = _example_guard(epsilon=4.0, unit="speaker")
        >>> mech = dataclasses.replace(_EXAMPLE, unit="speaker")
        >>> _ = g.commit_spend(1, mech, scheme="mask", speakers=["ann"])
        >>> g.exhausted_speakers(["ann", "bob"], mech)
        ('ann',)
        """
        step = self._check_mechanism(mechanism)
        rounds = self._ledger.round_spends(self._client)
        nxt = (rounds[-1].round if rounds else 0) + 1
        out = []
        for spk in sorted(set(speakers)):
            trial = [*rounds, RoundSpend(round=nxt, step=step, speakers=(spk,))]
            eps = speaker_epsilons(trial, delta=self._budget.delta, accountant=self._accountant)[spk]
            if eps > self._budget.epsilon * (1 + _REL_TOL):
                out.append(spk)
        return tuple(out)

    def authorize_round(
        self,
        round: int,
        mechanism: Mechanism,
        *,
        speakers: Sequence[str] = (),
        client_mechanism: ClientLevelMechanism | None = None,
        client_sample_rate: float | None = None,
    ) -> float:
        """Epsilon after the round if it fits the budget(s); raises BudgetExceededError (nothing written) if not.

        >>> round(_example_guard().authorize_round(1, _EXAMPLE), 3)
        3.176
        """
        return self._authorize(round, mechanism, speakers=speakers, client_mechanism=client_mechanism,
                               client_sample_rate=client_sample_rate).epsilon_after

    def _authorize(self, round: int, mechanism: Mechanism, **round_facts: object) -> RoundPreview:
        p = self.preview(round, mechanism, **round_facts)  # type: ignore[arg-type]
        if p.within_budget:
            return p
        spent = self.spent()
        parts = []
        if p.over_budget_speakers:
            shown = ", ".join(p.over_budget_speakers[:5]) + (" ..." if len(p.over_budget_speakers) > 5 else "")
            parts.append(f"speaker(s) {shown} would exceed {self._budget} (drop them with exhausted_speakers())")
        elif p.epsilon_after > self._budget.epsilon * (1 + _REL_TOL):
            parts.append(f"over its budget {self._budget}")
        if (
            self._client_budget is not None
            and p.client_epsilon_after is not None
            and p.client_epsilon_after > self._client_budget.epsilon * (1 + _REL_TOL)
        ):
            parts.append(
                f"client-level epsilon would reach {p.client_epsilon_after:.4g}, over {self._client_budget}"
            )
        logger.info("client %s: round %d refused: %s", self._client, round, "; ".join(parts))
        raise BudgetExceededError(
            f"client {self._client}: round {round} would take epsilon from {spent:.4g} to {p.epsilon_after:.4g}; "
            f"{'; '.join(parts)}. The client stops here and reports 'out of budget' to the server"
        )

    def commit_spend(
        self,
        round: int,
        mechanism: Mechanism,
        *,
        scheme: str,
        speakers: Sequence[str] = (),
        client_mechanism: ClientLevelMechanism | None = None,
        client_sample_rate: float | None = None,
        update_digest: str | None = None,
        signer: object | None = None,
    ) -> SpendRow:
        """Authorize the round again and record its spend (committed before the update may leave).

        The row records ``mechanism`` (its randomness included: ``secret`` or ``simulation``, see
        :mod:`privspk.training.randomness`). ``signer`` (the client's identity key) signs the
        ledger's new chain head (see :meth:`privspk.privacy.Ledger.record_spend`).

        >>> g = _example_guard()
        >>> row = g.commit_spend(1, _EXAMPLE, scheme="bfv")
        >>> row.status, round(row.epsilon_after, 3), round(g.remaining(), 3)
        ('spent', 3.176, 0.824)
        """
        p = self._authorize(round, mechanism, speakers=speakers, client_mechanism=client_mechanism,
                            client_sample_rate=client_sample_rate)
        client_level = None
        if client_mechanism is not None and p.client_epsilon_after is not None:
            client_level = ClientLevelSpend(
                mechanism=client_mechanism,
                sample_rate=client_sample_rate,  # type: ignore[arg-type]
                delta=(self._client_budget or self._budget).delta,
                epsilon_after=p.client_epsilon_after,
            )
        spend = Spend(
            client=self._client,
            round=round,
            mechanism=mechanism,
            epsilon_after=p.epsilon_after,
            scheme=scheme,
            speakers=tuple(speakers),
            client_level=client_level,
            update_digest=update_digest,
        )
        return self._ledger.record_spend(spend, signer=signer)
