"""Runs ``privspk.train`` on a TOML config in its own process (a script, never imported).

The API crash tests start it with ``PRIVSPK_FAULT=point:client:round`` so that the client's
fault hook kills it mid-round; the test then resumes the run in its own process.

    python federation_api_worker.py CONFIG.toml ENCODER_NAME [--resume]

``ENCODER_NAME`` is registered here as the tests' tiny ECAPA (the tests register the same one).
"""

from __future__ import annotations

import argparse
import warnings

import torch

import privspk
from privspk.config import RunConfig
from privspk.models import ECAPAEncoder, register_encoder


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("encoder")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    @register_encoder(args.encoder)
    def _tiny(*, in_dim: int) -> ECAPAEncoder:
        return ECAPAEncoder(in_dim, channels=16, embed_dim=16, dilations=(2, 3), attention_channels=8)

    privspk.train(RunConfig.load(args.config), progress=False, resume=args.resume)


if __name__ == "__main__":
    main()
