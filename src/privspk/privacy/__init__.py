"""Privacy accounting for privspk: budgets, noise planning, the per-round ledger, distributed DP.

* :mod:`~privspk.privacy.budget` - :class:`PrivacyBudget` (epsilon, delta, unit).
* :mod:`~privspk.privacy.mechanism` - :class:`Mechanism`, one round's DP-SGD parameters, typed.
* :mod:`~privspk.privacy.accounting` - epsilon of a spend history (Opacus RDP / PRV) and client-level RDP.
* :mod:`~privspk.privacy.planner` - the mechanism whose noise fits a planned run.
* :mod:`~privspk.privacy.ledger` - the SQLite ledger: rows, storage, chain, audit (recompute), report.
* :mod:`~privspk.privacy.guard` - a client's own budget enforcement.
* :mod:`~privspk.privacy.noise` - integer noise samplers (discrete Gaussian, Skellam).
* :mod:`~privspk.privacy.distributed` - client-level distributed DP: clip, round, add a noise share; its plan.

Importing this package does not import Opacus or torch; they load on the first epsilon.

>>> from privspk.privacy import PrivacyBudget, epsilon
>>> budget = PrivacyBudget(epsilon=8, delta=1e-5)
>>> epsilon([(1.5, 0.04, 2250)], delta=budget.delta) < budget.epsilon
True
"""

from __future__ import annotations

from privspk.privacy.accounting import (
    ACCOUNTANTS,
    PrivacyAccountant,
    RoundSpend,
    SpendStep,
    epsilon,
    rounds_epsilon,
    speaker_epsilons,
)
from privspk.privacy.budget import PRIVACY_UNITS, PrivacyBudget
from privspk.privacy.distributed import (
    NOISE_KINDS,
    ClientLevelMechanism,
    ClientLevelRound,
    DistributedDP,
    client_level_epsilon,
    client_level_rdp,
    client_noise_share,
    clip_update_l2,
    headroom_bits,
    make_rng,
    modulus_bits,
    plan_client_noise_multiplier,
    sample_discrete_gaussian,
    sample_skellam,
)
from privspk.privacy.guard import BudgetGuard, RoundPreview
from privspk.privacy.ledger import (
    STATUSES,
    ClientLevelSpend,
    Ledger,
    RecomputeCheck,
    Spend,
    SpendRow,
    digest_update,
)
from privspk.privacy.mechanism import RANDOMNESS_MODES, SAMPLE_UNITS, Mechanism
from privspk.privacy.planner import MAX_SIGMA, plan_mechanism, search_noise_multiplier

__all__ = [
    "ACCOUNTANTS",
    "MAX_SIGMA",
    "NOISE_KINDS",
    "PRIVACY_UNITS",
    "RANDOMNESS_MODES",
    "SAMPLE_UNITS",
    "STATUSES",
    "BudgetGuard",
    "ClientLevelMechanism",
    "ClientLevelRound",
    "ClientLevelSpend",
    "DistributedDP",
    "Ledger",
    "Mechanism",
    "PrivacyAccountant",
    "PrivacyBudget",
    "RecomputeCheck",
    "RoundPreview",
    "RoundSpend",
    "Spend",
    "SpendRow",
    "SpendStep",
    "client_level_epsilon",
    "client_level_rdp",
    "client_noise_share",
    "clip_update_l2",
    "digest_update",
    "epsilon",
    "headroom_bits",
    "make_rng",
    "modulus_bits",
    "plan_client_noise_multiplier",
    "plan_mechanism",
    "rounds_epsilon",
    "sample_discrete_gaussian",
    "sample_skellam",
    "search_noise_multiplier",
    "speaker_epsilons",
]
