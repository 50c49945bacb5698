"""``ClientEndpoint`` declares every method a federated client calls on it.

``FederatedClient._submit`` hands client-level DP integer codes to ``submit_integers``; every
scheme's endpoint must answer it: ``mask`` takes the codes, the others refuse clearly.
"""

from __future__ import annotations

import numpy as np
import pytest

from privspk.errors import ConfigError
from privspk.secagg import ClientEndpoint, build_scheme
from privspk.secagg.registry import scheme_names


def test_submit_integers_is_declared_on_the_interface():
    assert callable(getattr(ClientEndpoint, "submit_integers", None))


@pytest.mark.parametrize("name", ["plain", "ckks", "bfv"])
def test_schemes_without_integer_sums_refuse_codes_with_a_clear_error(name):
    opts = {"he_trust": "no-client-colludes-with-server"} if name in ("ckks", "bfv") else {}
    client = build_scheme(name, opts).client("a")
    with pytest.raises(ConfigError, match="takes float updates only.*need the 'mask' scheme"):
        client.submit_integers(0, np.array([1, -2, 3]), min_survivors=2)


def test_mask_takes_integer_codes():
    client = build_scheme("mask").client("a")
    client.submit_integers(0, np.array([1, -2, 3]), min_survivors=2)  # accepted: no error
    with pytest.raises(ConfigError, match="integer codes must be a non-empty 1-D integer array"):
        client.submit_integers(1, np.array([0.5]))
    assert set(scheme_names()) >= {"plain", "mask", "ckks", "bfv"}
