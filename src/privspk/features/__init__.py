"""Features: Kaldi fbank / MFCC with mean normalisation, an on-disk cache, random crops.

>>> import torch
>>> from privspk.features import FeatureConfig, extract
>>> tuple(extract(torch.randn(16000) * 0.1, FeatureConfig(n_mels=40)).shape)
(98, 40)
"""

from __future__ import annotations

from privspk.features.cache import FeatureCache
from privspk.features.config import FEATURE_KINDS, FeatureConfig
from privspk.features.crops import CropDataset, random_crop
from privspk.features.extract import extract

__all__ = ["FEATURE_KINDS", "CropDataset", "FeatureCache", "FeatureConfig", "extract", "random_crop"]
