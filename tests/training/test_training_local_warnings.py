"""A DP training round prints no torch "Full backward hook is firing" warnings (issue 17, quiet library calls).

Opacus' per-sample-gradient hooks are full backward hooks; when the first hooked module's input
does not require gradients (the features, or the output of frozen layers), torch warns once per
backward pass that the hook sees no input gradients. Opacus only reads the output gradients, so
the warning is harmless there and ``training.local`` silences exactly it around its own backward
passes, and nowhere else.
"""

from __future__ import annotations

import warnings

import pytest

from privspk.privacy import Mechanism
from privspk.training.local import LocalSettings, sample_rate_for, train_local
from training_support import client_data, tiny_net

HOOK_WARNING = "Full backward hook is firing"
_SETTINGS = LocalSettings(batch_size=4, physical_batch=2, lr=1e-2, crop_frames=20, speaker_batch=2)


@pytest.mark.parametrize("unit", ["utterance", "speaker"])
@pytest.mark.parametrize("freeze_front", [True, False])
def test_dp_round_emits_no_backward_hook_warning(unit, freeze_front):
    data = client_data(4, 4, frames=30, seed=1)
    net = tiny_net(data.n_speakers, freeze_front=freeze_front)
    q = sample_rate_for(data, unit=unit, batch_size=4, speaker_batch=2)
    dp = Mechanism(unit=unit, noise_multiplier=1.0, clip=1.0, sample_rate=q, steps=3, delta=1e-5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train_local(net, data, _SETTINGS, dp=dp, seed=0)
    assert res.steps == 3
    hook = [w for w in caught if HOOK_WARNING in str(w.message)]
    assert hook == [], f"{len(hook)} backward-hook warnings, first: {hook[0].message if hook else ''}"
    # no other torch UserWarning either (Opacus' own notices are its business, not torch's)
    torch_warnings = [w for w in caught if issubclass(w.category, UserWarning) and "/torch/" in w.filename]
    assert torch_warnings == []


def test_the_silencing_is_scoped_to_training():
    """After a round, the same warning raised elsewhere is still shown: no process-wide filter was left."""
    data = client_data(4, 4, frames=30, seed=1)
    q = sample_rate_for(data, unit="speaker", batch_size=4, speaker_batch=2)
    train_local(tiny_net(data.n_speakers), data, _SETTINGS, seed=0,
                dp=Mechanism(unit="speaker", noise_multiplier=1.0, clip=1.0, sample_rate=q, steps=1, delta=1e-5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        warnings.warn(HOOK_WARNING + " (raised by the test itself)", UserWarning, stacklevel=1)
    assert len(caught) == 1
