"""Andrew et al.'s one-shot estimate: the two-Gaussian epsilon against the analytic Gaussian mechanism."""

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from privspk.audit.one_shot import one_shot_epsilon, two_gaussian_epsilon
from privspk.errors import ConfigError


def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """Balle & Wang (2018): delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu)."""
    return brentq(lambda e: norm.cdf(mu / 2 - e / mu) - math.exp(e) * norm.cdf(-mu / 2 - e / mu) - delta, 0, 200)


@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0, 3.0])
def test_equal_variances_match_the_gaussian_mechanism(mu):
    got = two_gaussian_epsilon(mu0=0.0, sigma0=1.0, mu1=mu, sigma1=1.0, delta=1e-5)
    assert got == pytest.approx(analytic_gaussian_epsilon(mu, 1e-5), rel=1e-6)


def test_a_wider_canary_distribution_costs_more():
    same = two_gaussian_epsilon(mu0=0.0, sigma0=1.0, mu1=1.0, sigma1=1.0, delta=1e-5)
    wider = two_gaussian_epsilon(mu0=0.0, sigma0=1.0, mu1=1.0, sigma1=1.5, delta=1e-5)
    assert wider > same


def test_estimate_recovers_a_simulated_gaussian_mechanism():
    """1000 canaries in d = 75k (the demo's trainable size): the interval holds the true epsilon."""
    d, mu = 75_000, 2.0
    true = analytic_gaussian_epsilon(mu, 1e-5)
    rng = np.random.default_rng(0)
    cos = rng.normal(mu / math.sqrt(d), 1 / math.sqrt(d), size=1000)
    for equal in (True, False):
        est = one_shot_epsilon(cos, dim=d, delta=1e-5, equal_variance=equal, bootstrap=100)
        assert est.low <= true <= est.high
        assert est.epsilon == pytest.approx(true, rel=0.15)


def test_canaries_that_never_took_part_estimate_about_zero():
    d = 75_000
    cos = np.random.default_rng(3).normal(0.0, 1 / math.sqrt(d), size=1000)
    assert one_shot_epsilon(cos, dim=d, delta=1e-5, equal_variance=True, bootstrap=50).epsilon < 0.5


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="canary cosines"):
        one_shot_epsilon(np.array([0.1]), dim=10, delta=1e-5)
    with pytest.raises(ConfigError, match="sigma0"):
        two_gaussian_epsilon(mu0=0, sigma0=0, mu1=1, sigma1=1, delta=1e-5)


def test_fitted_null_recovers_the_gaussian_mechanism():
    from privspk.audit.one_shot import fitted_epsilon

    rng = np.random.default_rng(5)
    est = fitted_epsilon(rng.normal(1.0, 0.5, 3000), rng.normal(0.0, 0.5, 3000), delta=1e-5, bootstrap=100)
    true = analytic_gaussian_epsilon(2.0, 1e-5)  # mu / sigma = 2
    assert est.low <= true <= est.high and est.epsilon == pytest.approx(true, rel=0.1)
