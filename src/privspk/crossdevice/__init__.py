"""Cross-device federation: one speaker per phone, a sample of phones per round, user-level DP.

``[federation] mode = "cross-device"`` (preset ``phones``): see :mod:`privspk.crossdevice.loop`
for the round, :mod:`~privspk.crossdevice.population` for the simulated phones and
:mod:`~privspk.crossdevice.objective` for the positives-only secret-codeword objective.

>>> from privspk.config import RunConfig
>>> RunConfig.preset("phones").federation.mode
'cross-device'
"""

from privspk.crossdevice.loop import CrossDeviceResult, run_crossdevice

__all__ = ["CrossDeviceResult", "run_crossdevice"]
