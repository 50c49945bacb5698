"""Training of the speaker encoder: public pretraining and a client's local round.

Local rounds run non-privately (baselines), with utterance-level DP-SGD through
Opacus' ``PrivacyEngine``, or with speaker-level (user-level) DP-SGD where each
sampled speaker's summed gradient is clipped as one unit.
"""

from privspk.training.data import ClientData
from privspk.training.local import LocalResult, LocalSettings, train_local
from privspk.training.net import SpeakerNet
from privspk.training.pretrain import pretrain

__all__ = ["ClientData", "LocalResult", "LocalSettings", "SpeakerNet", "pretrain", "train_local"]
