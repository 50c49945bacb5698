"""Client domains: the clients' speech as heard through a channel the public data lacks.

``[corpus] domains = ["callcentre", ...]`` deals the listed domains to the clients round-robin
(client ``i`` gets ``domains[i % len(domains)]``). A client in a domain holds only that
domain's version of its speakers' utterances; public speakers stay clean wideband. Every
held-out speaker is evaluated in each listed domain twice: *in-domain* (enrolment and test
both through the channel, condition ``<domain>``) and *cross-channel* (clean enrolment,
channel test, condition ``<domain>/cross``), on the same trial pairs as the clean list.

A domain utterance is named ``<utt_id>@<domain>``. Its audio is the clean file passed through
:func:`privspk.audio.channels.simulate_channel`, seeded by (corpus seed, utterance id, domain),
so every run seed shares the same domain data; its features are cached under
``<features root>/domains/<domain>-seed<seed>-v<channel version>/`` beside the clean cache.

>>> domain_utt("spk001-003", "car"), split_domain_utt("spk001-003@car"), split_domain_utt("spk001-003")
('spk001-003@car', ('spk001-003', 'car'), ('spk001-003', None))
>>> client_domains(("callcentre", "phone"), n_clients=3)
('callcentre', 'phone', 'callcentre')
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from privspk.errors import ConfigError, FeatureError

__all__ = [
    "DOMAIN_SEP",
    "DomainFeatures",
    "build_domain_caches",
    "client_domains",
    "domain_cache_root",
    "domain_conditions",
    "domain_utt",
    "load_domain_audio",
    "split_domain_utt",
]

#: Separates an utterance id from its domain in a domain utterance id.
DOMAIN_SEP = "@"


def _known() -> tuple[str, ...]:
    from privspk.audio.channels import DOMAINS

    return DOMAINS


def domain_utt(utt_id: str, domain: str) -> str:
    """The id of ``utt_id`` as heard through ``domain``.

    >>> domain_utt("u1", "phone")
    'u1@phone'
    """
    if not isinstance(utt_id, str) or not utt_id or DOMAIN_SEP in utt_id:
        raise ConfigError(f"utterance id must be a non-empty string without {DOMAIN_SEP!r}, got {utt_id!r}")
    if domain not in _known():
        raise ConfigError(f"unknown domain {domain!r}; known domains: {', '.join(_known())}")
    return f"{utt_id}{DOMAIN_SEP}{domain}"


def split_domain_utt(uid: str) -> tuple[str, str | None]:
    """``(clean utterance id, domain or None)`` of an utterance id.

    >>> split_domain_utt("u1@smarthome")
    ('u1', 'smarthome')
    """
    base, sep, domain = uid.rpartition(DOMAIN_SEP)
    return (base, domain) if sep else (uid, None)


def client_domains(domains: Sequence[str], *, n_clients: int) -> tuple[str, ...]:
    """The domain of each client: ``domains`` dealt round-robin; every listed domain needs a client.

    >>> client_domains(["car"], n_clients=2)
    ('car', 'car')
    >>> client_domains(["car", "phone", "smarthome"], n_clients=2)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: [corpus] domains lists 3 domains for 2 clients: every domain needs a client; raise [federation] n_clients to 3 or list fewer domains
    """
    doms = tuple(domains)
    for d in doms:
        if d not in _known():
            raise ConfigError(f"[corpus] domains: unknown domain {d!r}; known domains: {', '.join(_known())}")
    if not doms:
        raise ConfigError("[corpus] domains is empty: nothing to deal")
    if len(doms) > n_clients:
        raise ConfigError(f"[corpus] domains lists {len(doms)} domains for {n_clients} clients: every domain needs "
                          f"a client; raise [federation] n_clients to {len(doms)} or list fewer domains")
    return tuple(doms[i % len(doms)] for i in range(n_clients))


def domain_conditions(trials: Sequence, domains: Iterable[str]) -> dict[str, list]:
    """Per domain, the in-domain trial list (``<domain>``) and the cross-channel one (``<domain>/cross``).

    Both reuse the pairs of ``trials``: in-domain maps enrolment and test to the domain,
    cross-channel only the test.

    >>> from privspk.evaluation.trials import Trial
    >>> conds = domain_conditions([Trial("a1", "b1", False)], ["car"])
    >>> conds["car"][0], conds["car/cross"][0]
    (Trial(enroll='a1@car', test='b1@car', target=False), Trial(enroll='a1', test='b1@car', target=False))
    """
    from privspk.evaluation.trials import Trial

    out: dict[str, list] = {}
    for d in dict.fromkeys(domains):
        out[d] = [Trial(domain_utt(t.enroll, d), domain_utt(t.test, d), t.target) for t in trials]
        out[f"{d}/cross"] = [Trial(t.enroll, domain_utt(t.test, d), t.target) for t in trials]
    return out


def load_domain_audio(spec: tuple[str, str, str, int]):  # noqa: ANN201 - returns a Tensor (lazy torch import)
    """Read ``(path, utt_id, domain, seed)``'s clean file and pass it through the domain's channel.

    A module-level function, so feature workers in other processes can call it.

    >>> import tempfile, pathlib, torch
    >>> from privspk.audio.io import write_audio
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_audio(pathlib.Path(d) / "a.wav", 0.2 * torch.sin(torch.arange(16000) * 0.1), sample_rate=16000)
    ...     load_domain_audio((str(pathlib.Path(d) / "a.wav"), "a", "car", 0)).shape
    torch.Size([16000])
    """
    from privspk.audio.channels import simulate_channel
    from privspk.audio.io import read_audio

    path, utt_id, domain, seed = spec
    return simulate_channel(read_audio(path), domain=domain, seed=seed, utt_id=utt_id, sample_rate=16000)


@dataclass(frozen=True)
class _DomainItem:
    utt_id: str
    path: tuple[str, str, str, int]


def domain_cache_root(features_root: str | os.PathLike[str], *, domain: str, seed: int) -> Path:
    """Folder of one domain's feature caches beside the clean cache of a corpus.

    >>> domain_cache_root("data/features/abc", domain="car", seed=0).as_posix()
    'data/features/abc/domains/car-seed0-v1'
    """
    from privspk.audio.channels import CHANNEL_VERSION

    return Path(features_root) / "domains" / f"{domain}-seed{seed}-v{CHANNEL_VERSION}"


def build_domain_caches(features_root: str | os.PathLike[str], cfg, wanted: Mapping[str, Iterable], *,
                        seed: int, workers: int = 1, progress: bool = True) -> dict:
    """Build (or reuse) each domain's feature cache for the utterances it needs.

    Args:
        features_root: the clean cache's root (``data/features/<corpus id>``).
        cfg: the :class:`~privspk.features.config.FeatureConfig`.
        wanted: domain -> the corpus utterances (``.utt_id``, ``.path``) to derive.
        seed: seed of the channel draws (the corpus seed).
        workers: feature worker processes.
        progress: progress bars.

    Returns:
        domain -> :class:`~privspk.features.cache.FeatureCache` keyed by ``<utt_id>@<domain>``.

    >>> import tempfile, pathlib, torch
    >>> from types import SimpleNamespace
    >>> from privspk.audio.io import write_audio
    >>> from privspk.features.config import FeatureConfig
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_audio(pathlib.Path(d) / "a.wav", 0.2 * torch.sin(torch.arange(16000) * 0.1), sample_rate=16000)
    ...     u = SimpleNamespace(utt_id="a", path=pathlib.Path(d) / "a.wav")
    ...     caches = build_domain_caches(d, FeatureConfig(n_mels=40), {"phone": [u]}, seed=0, progress=False)
    ...     tuple(caches["phone"].get("a@phone").shape)
    (98, 40)
    """
    from privspk.features.cache import FeatureCache

    out = {}
    for domain, utts in wanted.items():
        cache = FeatureCache(domain_cache_root(features_root, domain=domain, seed=seed), cfg)
        items = [_DomainItem(domain_utt(u.utt_id, domain), (str(u.path), u.utt_id, domain, int(seed))) for u in utts]
        cache.build(items, load=load_domain_audio, workers=workers, progress=progress)
        out[domain] = cache
    return out


class DomainFeatures:
    """A feature source that serves clean ids from the clean cache and ``<utt>@<domain>`` from that domain's.

    It has the :meth:`get` of :class:`~privspk.features.cache.FeatureCache`, which is all
    training and evaluation use.

    >>> import torch
    >>> class Fake(dict):
    ...     def get(self, u): return self[u]
    >>> f = DomainFeatures(Fake(a=torch.zeros(2, 3)), {"car": Fake({"a@car": torch.ones(2, 3)})})
    >>> float(f.get("a").sum()), float(f.get("a@car").sum()), "a@car" in f
    (0.0, 6.0, True)
    """

    def __init__(self, clean, domains: Mapping[str, object]) -> None:
        self.clean = clean
        self.domains = dict(domains)

    def _source(self, uid: str):
        base, domain = split_domain_utt(uid)
        if domain is None:
            return self.clean
        cache = self.domains.get(domain)
        if cache is None:
            raise FeatureError(f"utterance {uid!r}: domain {domain!r} was not prepared (prepared: "
                               f"{', '.join(self.domains) or 'none'}); set [corpus] domains")
        return cache

    def get(self, uid: str):  # noqa: ANN201 - a Tensor
        """Features ``(T, F)`` of a clean or domain utterance id."""
        return self._source(uid).get(uid)

    def __contains__(self, uid: object) -> bool:
        """Whether ``uid`` is cached (clean or in its domain)."""
        if not isinstance(uid, str):
            return False
        try:
            return uid in self._source(uid)
        except FeatureError:
            return False

    def __getattr__(self, name: str):  # noqa: ANN204 - the clean cache's other attributes (directory, cfg, ...)
        if name in ("clean", "domains"):
            raise AttributeError(name)
        return getattr(self.clean, name)
