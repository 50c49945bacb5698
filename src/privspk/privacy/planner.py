"""Pick the noise multiplier that keeps a planned run within its privacy budget.

Same contract as Opacus' ``get_noise_multiplier`` (double the noise until the
target holds, then bisect, and return the *upper* end so epsilon <= target,
within ``tolerance`` of it), written on top of :func:`privspk.privacy.accounting.epsilon`
so that what was already spent is composed in, and with errors that say what to
change when no noise multiplier can do it.

>>> from privspk.privacy.budget import PrivacyBudget
>>> mech = plan_mechanism(budget=PrivacyBudget(epsilon=8, delta=1e-5), sample_rate=0.04, steps=2000, clip=1.0)
>>> round(mech.noise_multiplier, 4)  # Opacus' own test value: 1.3562
1.3562
>>> 8 - 0.01 <= mech.epsilon() <= 8
True
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from privspk.errors import BudgetExceededError, ConfigError
from privspk.privacy._checks import positive_float, positive_int, probability
from privspk.privacy.accounting import SpendEntry, SpendStep, as_history, check_accountant, epsilon
from privspk.privacy.budget import PrivacyBudget
from privspk.privacy.mechanism import SAMPLE_UNITS, Mechanism

__all__ = ["MAX_SIGMA", "plan_mechanism", "search_noise_multiplier"]

logger = logging.getLogger(__name__)

MAX_SIGMA = 1e6
"""Largest noise multiplier the search tries (Opacus' ``MAX_SIGMA``)."""

_START_SIGMA = 10.0
_MAX_BISECTIONS = 200


def search_noise_multiplier(
    eps_of: Callable[[float], float],
    *,
    target_epsilon: float,
    tolerance: float = 0.01,
    max_sigma: float = MAX_SIGMA,
) -> tuple[float, float]:
    """Smallest-noise ``sigma`` (up to ``tolerance`` in epsilon) with ``eps_of(sigma) <= target_epsilon``.

    ``eps_of`` must be non-increasing in ``sigma``. Returns ``(sigma, eps_of(sigma))``
    with ``target_epsilon - tolerance <= eps <= target_epsilon`` (barring a flat
    ``eps_of``); raises :class:`~privspk.errors.BudgetExceededError` when even
    ``max_sigma`` is not enough.

    >>> sigma, eps = search_noise_multiplier(lambda s: 1.0 / s, target_epsilon=0.5, tolerance=1e-3)
    >>> round(sigma, 2), eps <= 0.5
    (2.0, True)
    """
    target_epsilon = positive_float("target_epsilon", target_epsilon)
    tolerance = positive_float("tolerance", tolerance)
    max_sigma = positive_float("max_sigma", max_sigma)
    sigma_low, sigma_high = 0.0, _START_SIGMA
    eps_high = float("inf")
    evaluated = False
    while eps_high > target_epsilon:  # double first, as Opacus does (first try: 2 x 10)
        if evaluated and sigma_high >= max_sigma:
            raise BudgetExceededError(
                f"no noise multiplier up to {max_sigma:g} reaches epsilon <= {target_epsilon:g} "
                f"(epsilon at {max_sigma:g} is {eps_high:.4g})"
            )
        sigma_high = min(2.0 * sigma_high, max_sigma)
        eps_high = eps_of(sigma_high)
        evaluated = True
    for _ in range(_MAX_BISECTIONS):
        if target_epsilon - eps_high <= tolerance or sigma_high - sigma_low <= 1e-12 * sigma_high:
            break
        sigma = (sigma_low + sigma_high) / 2.0
        eps = eps_of(sigma)
        if eps < target_epsilon:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    return sigma_high, eps_high


def plan_mechanism(
    *,
    budget: PrivacyBudget,
    sample_rate: float,
    steps: int,
    clip: float,
    rounds: int = 1,
    accountant: str = "rdp",
    randomness: str = "secret",
    already_spent: Iterable[SpendEntry] = (),
    tolerance: float = 0.01,
    max_sigma: float = MAX_SIGMA,
) -> Mechanism:
    """The mechanism of one round whose ``rounds`` rounds of ``steps`` DP-SGD steps at ``sample_rate`` fit ``budget``.

    Its noise multiplier is the smallest (within ``tolerance`` in epsilon) that keeps the
    composition of what was already spent and all planned rounds within the budget; its unit
    and delta are the budget's. ``mechanism.epsilon(rounds, already_spent=...)`` is the planned total.

    Args:
        budget: the (epsilon, delta) to stay within.
        sample_rate: Poisson sampling rate of one record (utterance or speaker) per step.
        steps: local DP-SGD steps per round.
        clip: the clipping bound the rounds train with.
        rounds: planned rounds.
        accountant: ``"rdp"`` or ``"prv"``.
        randomness: ``"secret"`` or ``"simulation"`` (recorded with the mechanism).
        already_spent: history already recorded (it is composed in, not re-planned).
        tolerance: the plan's epsilon is within this of the budget (and never above it).
        max_sigma: give up beyond this noise multiplier.

    Raises:
        BudgetExceededError: when what was spent already uses the budget up, or
            when no noise multiplier up to ``max_sigma`` fits; the message says what to change.

    >>> b = PrivacyBudget(epsilon=0.05, delta=1e-5)
    >>> plan_mechanism(budget=b, sample_rate=0.04, steps=100, clip=1.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    privspk.errors.BudgetExceededError: no noise multiplier up to 1e+06 keeps 1 round(s) x 100 step(s)...
    """
    if not isinstance(budget, PrivacyBudget):
        raise TypeError(f"budget must be a PrivacyBudget, got {type(budget).__name__}")
    if budget.unit not in SAMPLE_UNITS:
        raise ConfigError(f"DP-SGD protects one of {'|'.join(SAMPLE_UNITS)}; a {budget.unit!r} budget is planned "
                          "by plan_client_noise_multiplier")
    sample_rate = probability("sample_rate", sample_rate, allow_one=True)
    steps = positive_int("steps", steps)
    rounds = positive_int("rounds", rounds)
    accountant = check_accountant(accountant)
    spent = as_history(already_spent)
    delta = budget.delta

    spent_eps = epsilon(spent, delta=delta, accountant=accountant)
    if spent_eps >= budget.epsilon:
        raise BudgetExceededError(
            f"already spent epsilon={spent_eps:.4g} of the budget {budget}: no further round fits; "
            "stop training with this data or start a new run with a new budget"
        )

    def eps_of(sigma: float) -> float:
        planned = SpendStep(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps * rounds)
        return epsilon((*spent, planned), delta=delta, accountant=accountant)

    try:
        sigma, eps = search_noise_multiplier(
            eps_of, target_epsilon=budget.epsilon, tolerance=tolerance, max_sigma=max_sigma
        )
    except BudgetExceededError:
        floor = eps_of(max_sigma)
        hint = ""
        if accountant == "rdp":
            hint = (
                "; the rdp accountant's conversion cannot go much below this at this delta, "
                "try accountant='prv'"
            )
        raise BudgetExceededError(
            f"no noise multiplier up to {max_sigma:g} keeps {rounds} round(s) x {steps} step(s) at "
            f"sample rate {sample_rate:g} within {budget} (already spent {spent_eps:.4g}; the least "
            f"reachable is {floor:.4g}{hint}). Plan fewer rounds or local steps, a smaller sample rate, "
            "or a bigger epsilon"
        ) from None
    logger.info(
        "planned noise multiplier %.4f for %d round(s) x %d step(s) at q=%g: epsilon %.4f of %s",
        sigma, rounds, steps, sample_rate, eps, budget,
    )
    return Mechanism(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, clip=clip, delta=delta,
                     unit=budget.unit, accountant=accountant, randomness=randomness)
