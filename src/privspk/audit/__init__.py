"""Empirical privacy audits of a trained run: what an attacker actually learns.

- :mod:`~privspk.audit.one_run`: the one-run lower bound on epsilon (Steinke, Nasr & Jagielski 2023).
- :mod:`~privspk.audit.one_shot`: the one-shot epsilon estimate for client-level DP (Andrew et al. 2023).

>>> from privspk.audit import ceiling
>>> round(ceiling(m=100, delta=1e-5), 1)
3.5
"""

from privspk.audit.one_run import OneRunBound, best_lower_bound, ceiling, epsilon_lower_bound
from privspk.audit.one_shot import OneShotEstimate, one_shot_epsilon, two_gaussian_epsilon

__all__ = ["OneRunBound", "OneShotEstimate", "best_lower_bound", "ceiling", "epsilon_lower_bound",
           "one_shot_epsilon", "two_gaussian_epsilon"]
