"""Data preparation for a run: corpus -> speaker split -> cached features -> trials.

Everything here is deterministic from the run config and cached under
``data_dir``, so a second run (or ``make demo`` after ``make demo``) reuses it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from privspk.config import RunConfig
from privspk.corpus import Corpus, SpeakerSplit
from privspk.errors import ConfigError, CorpusError

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """What a run trains and evaluates on."""

    corpus: Corpus
    split: SpeakerSplit
    features: object  # privspk.features.cache.FeatureCache
    utt2spk: dict[str, str]
    trials: list
    corpus_id: str
    seconds: dict[str, float] = field(default_factory=dict)
    #: client speaker -> its client's channel domain (empty: every speaker clean)
    speaker_domains: dict[str, str] = field(default_factory=dict)
    #: evaluation condition (``<domain>``, ``<domain>/cross``) -> its held-out trials
    domain_trials: dict[str, list] = field(default_factory=dict)
    #: pooled statistics of evaluated utterances by trunk fingerprint, shared by every evaluator of this data
    pooled: dict = field(default_factory=dict, repr=False, compare=False)

    def utterances_of(self, speakers) -> list[tuple[str, str]]:
        """``(utt_id, speaker)`` pairs of the given speakers, in corpus order.

        A speaker of a client in a channel domain gives its domain utterances (``<utt_id>@<domain>``).
        """
        wanted = set(speakers)
        dom = self.speaker_domains
        return [(f"{u.utt_id}@{dom[u.speaker]}" if u.speaker in dom else u.utt_id, u.speaker)
                for u in self.corpus.utterances if u.speaker in wanted]


def builtin_dir(cfg: RunConfig) -> Path:
    """Folder of the built-in corpus these settings describe."""
    c = cfg.corpus
    return Path(cfg.data_dir) / f"builtin_{c.n_speakers}x{c.utts_per_speaker}_seed{c.seed}"


def load_run_corpus(cfg: RunConfig, *, progress: bool = True) -> tuple[Corpus, SpeakerSplit]:
    """The corpus and its speaker split for ``cfg`` (building the built-in corpus if needed)."""
    from privspk.corpus import build_builtin_corpus, load_builtin_split, load_corpus, partition_speakers, split_speakers

    n_clients = cfg.federation.n_clients
    if not cfg.corpus.path:
        corpus = build_builtin_corpus(builtin_dir(cfg), n_speakers=cfg.corpus.n_speakers,
                                      utts_per_speaker=cfg.corpus.utts_per_speaker, seed=cfg.corpus.seed,
                                      workers=cfg.threads, progress=progress)
        split = load_builtin_split(builtin_dir(cfg))
        if split.n_clients != n_clients or cfg.split.skew > 0:
            pool = sorted(s for group in split.clients for s in group)
            groups = partition_speakers(pool, n_clients=n_clients, skew=cfg.split.skew, seed=cfg.split.seed)
            split = SpeakerSplit(public=split.public, clients=tuple(tuple(g) for g in groups),
                                 heldout=split.heldout)
        return corpus, split
    corpus = load_corpus(cfg.corpus.path, fmt=cfg.corpus.format, on_error=cfg.corpus.on_error)
    if corpus.skipped:
        log.warning("%s: %d unreadable or too short files were skipped", cfg.corpus.path, len(corpus.skipped))
    speakers = corpus.speakers
    if len(speakers) < cfg.split.heldout + n_clients * 2:
        raise CorpusError(
            f"{cfg.corpus.path}: {len(speakers)} speakers cannot give {cfg.split.heldout} held-out speakers and "
            f"at least 2 per client for {n_clients} clients; lower [split] heldout or [federation] n_clients"
        )
    split = split_speakers(speakers, public_fraction=cfg.split.public_fraction, heldout=cfg.split.heldout,
                           n_clients=n_clients, skew=cfg.split.skew, seed=cfg.split.seed)
    return corpus, split


def corpus_fingerprint(corpus: Corpus) -> str:
    """Short hash of a corpus' utterance ids, speakers and file names (names the feature cache)."""
    h = hashlib.sha256()
    for u in corpus.utterances:
        h.update(f"{u.utt_id}\t{u.speaker}\t{Path(u.path).name}\n".encode())
    return h.hexdigest()[:12]


def prepare_data(cfg: RunConfig, *, progress: bool = True) -> PreparedData:
    """Corpus, split, features (cached) and held-out trials for ``cfg``."""
    from privspk.audio.io import read_audio
    from privspk.evaluation.trials import make_trials
    from privspk.features.cache import FeatureCache

    t0 = time.perf_counter()
    corpus, split = load_run_corpus(cfg, progress=progress)
    t1 = time.perf_counter()
    used = set(split.speakers)
    missing = used - set(corpus.speakers)
    if missing:
        raise ConfigError(f"the split names {len(missing)} speakers that are not in the corpus, e.g. {sorted(missing)[:3]}")
    corpus_id = corpus_fingerprint(corpus)
    cache = FeatureCache(Path(cfg.data_dir) / "features" / corpus_id, cfg.features.feature_config())
    cache.build([u for u in corpus.utterances if u.speaker in used], load=read_audio,
                workers=cfg.threads, progress=progress)
    t2 = time.perf_counter()
    utt2spk = {u.utt_id: u.speaker for u in corpus.utterances if u.speaker in used}
    heldout = set(split.heldout)
    trials = make_trials({u: s for u, s in utt2spk.items() if s in heldout},
                         n_target_per_utt=cfg.eval.target_per_utt,
                         n_nontarget_per_utt=cfg.eval.nontarget_per_utt, seed=cfg.seed)
    t3 = time.perf_counter()
    seconds = {"corpus": t1 - t0, "features": t2 - t1, "trials": t3 - t2}
    features: object = cache
    speaker_domains: dict[str, str] = {}
    domain_trials: dict[str, list] = {}
    if cfg.corpus.domains:
        from privspk.corpus.domains import DomainFeatures, build_domain_caches, client_domains, domain_conditions

        per_client = client_domains(cfg.corpus.domains, n_clients=len(split.clients))
        speaker_domains = {s: d for group, d in zip(split.clients, per_client) for s in group}
        wanted: dict[str, list] = {d: [] for d in dict.fromkeys(per_client)}
        for u in corpus.utterances:
            if u.speaker in speaker_domains:
                wanted[speaker_domains[u.speaker]].append(u)
        held_utts = [u for u in corpus.utterances if u.speaker in heldout]
        for d in wanted:
            wanted[d] += held_utts
        caches = build_domain_caches(Path(cfg.data_dir) / "features" / corpus_id, cfg.features.feature_config(),
                                     wanted, seed=cfg.corpus.seed, workers=cfg.threads, progress=progress)
        features = DomainFeatures(cache, caches)
        domain_trials = domain_conditions(trials, wanted)
        seconds["domains"] = time.perf_counter() - t3
    return PreparedData(corpus=corpus, split=split, features=features, utt2spk=utt2spk, trials=trials,
                        corpus_id=corpus_id, seconds=seconds, speaker_domains=speaker_domains,
                        domain_trials=domain_trials)
