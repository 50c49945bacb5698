"""Where a client's random choices come from: the OS CSPRNG (``secret``) or the run's seed (``simulation``).

DP-SGD's epsilon assumes that the adversary does not know the round's random choices:
the Gaussian noise (else it subtracts it), the Poisson batch membership and the speaker
sample (else there is no amplification by sampling), and the crop each step takes. With
``secret`` randomness (the default) every local round draws a fresh seed for each of these
uses from the operating system's CSPRNG (:mod:`secrets`) and gives each use its own
generator, so nobody can replay them - not even with the config and the seed in hand.
``simulation`` derives them from the run's seed: a run repeats bit for bit (tests,
experiments), and the printed epsilon then assumes nothing; every epsilon shown beside it
carries :data:`SIMULATION_WARNING`.

Torch generators (Opacus' Poisson sampler and noise) are Mersenne twisters seeded with 63
secret bits; numpy generators (speaker sample, crops) with 128 secret bits.

>>> a, b = RoundSeeds.draw("secret", seed=3), RoundSeeds.draw("secret", seed=3)
>>> a == b, a.mode
(False, 'secret')
>>> RoundSeeds.draw("simulation", seed=3) == RoundSeeds.draw("simulation", seed=3)
True
>>> RoundSeeds.draw("run", seed=3)
Traceback (most recent call last):
...
privspk.errors.ConfigError: randomness must be one of secret|simulation, got 'run'
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch

from privspk.errors import ConfigError
from privspk.privacy.mechanism import RANDOMNESS_MODES, SIMULATION_WARNING

__all__ = ["RANDOMNESS_MODES", "SIMULATION_WARNING", "RoundSeeds", "check_randomness", "randomness_note"]

_TAGS = {"crops": 0x43524F50, "sampling": 0x53414D50, "noise": 0x4E4F4953}


def check_randomness(mode: object) -> str:
    """``mode`` if it is one of :data:`RANDOMNESS_MODES`, else ConfigError.

    >>> check_randomness("simulation")
    'simulation'
    """
    if mode not in RANDOMNESS_MODES:
        raise ConfigError(f"randomness must be one of {'|'.join(RANDOMNESS_MODES)}, got {mode!r}")
    return str(mode)


def randomness_note(mode: str | None) -> str:
    """The text to print beside an epsilon of a run with this randomness ('' for ``secret``).

    >>> randomness_note("simulation") == SIMULATION_WARNING, randomness_note("secret")
    (True, '')
    """
    return SIMULATION_WARNING if mode == "simulation" else ""


@dataclass(frozen=True)
class RoundSeeds:
    """One seed per use of one local round: ``crops``, ``sampling`` (batches, speakers), ``noise``."""

    mode: str
    crops: int
    sampling: int
    noise: int

    @classmethod
    def draw(cls, mode: str, *, seed: int) -> RoundSeeds:
        """Fresh CSPRNG seeds (``secret``; ``seed`` unused) or seeds derived from ``seed`` (``simulation``)."""
        mode = check_randomness(mode)
        if mode == "secret":
            return cls(mode=mode, crops=secrets.randbits(128), sampling=secrets.randbits(128),
                       noise=secrets.randbits(63))
        if type(seed) is not int or seed < 0:
            raise ConfigError(f"seed must be an int >= 0, got {seed!r}")

        def derive(use: str, bits: int) -> int:
            words = np.random.SeedSequence([seed, _TAGS[use]]).generate_state(4, np.uint32)
            return int.from_bytes(words.tobytes(), "little") >> (128 - bits)

        return cls(mode=mode, crops=derive("crops", 128), sampling=derive("sampling", 128), noise=derive("noise", 63))

    def numpy(self, use: str) -> np.random.Generator:
        """A numpy generator for ``use`` (``crops`` or ``sampling``).

        >>> s = RoundSeeds.draw("simulation", seed=0)
        >>> s.numpy("sampling").random() == s.numpy("sampling").random()
        True
        """
        return np.random.default_rng(self._seed(use))

    def torch(self, use: str, *, device: str | torch.device = "cpu") -> torch.Generator:
        """A torch generator on ``device`` for ``use`` (``sampling`` or ``noise``), seeded with at most 63 bits.

        >>> s = RoundSeeds.draw("simulation", seed=0)
        >>> bool(torch.rand(1, generator=s.torch("noise")) == torch.rand(1, generator=s.torch("noise")))
        True
        """
        return torch.Generator(device=device).manual_seed(self._seed(use) & ((1 << 63) - 1))

    def _seed(self, use: str) -> int:
        if use not in _TAGS:
            raise ConfigError(f"unknown randomness use {use!r} (known: {', '.join(_TAGS)})")
        return getattr(self, use)
