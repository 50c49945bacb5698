"""The built-in corpus: many synthetic speakers, synthesised offline with eSpeak NG.

A speaker is a voice variant (``espeak-ng-data/voices/!v``, ~100 of them) x an English
accent voice x base pitch (20..80) x pitch range x speaking rate (125..210 wpm) x a
vocal-tract warp (the audio is resampled by a factor 0.85..1.15, which moves pitch and
formants together) x a fixed spectral tilt (speaker EQ). Every utterance has its own
sentence (1.5..6 s after trimming), small pitch / range / rate jitter, +-5 % speed jitter,
noise at 15..30 dB SNR (white, pink or babble-like), reverberation by a random synthetic
room on half of the utterances, and a random gain.

Held-out speakers use voice variants that no public or client speaker uses, so
verification on them tests generalisation to unseen voices, not recall of synthesiser
settings. The default split (``split.json``) holds out ``ceil(n_speakers / 5)`` speakers,
makes about a third of all speakers public, and deals the rest to 3 clients.

Layout of ``out_dir``::

    wav/<speaker>/<utt_id>.wav   16 kHz mono PCM16
    manifest.tsv                 utt_id, speaker, relative path
    speakers.json                each speaker's generating parameters
    split.json                   the default SpeakerSplit
    build.json                   build parameters, written first ("complete": false) and last

Building is deterministic (same parameters and seed -> identical files, whatever
``workers`` is) and idempotent (a finished build with the same parameters is returned as
is; a half-written one is rebuilt).

>>> import tempfile, shutil
>>> d = tempfile.mkdtemp()
>>> corpus = build_builtin_corpus(d, n_speakers=3, utts_per_speaker=1, workers=1, progress=False)
>>> (len(corpus), len(corpus.speakers))
(3, 3)
>>> shutil.rmtree(d)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privspk.audio.augment import add_noise, random_gain, reverberate, synthetic_rir
from privspk.audio.io import resample, write_audio
from privspk.corpus.espeak import (
    ENGLISH_ACCENTS,
    ESPEAK_SAMPLE_RATE,
    EspeakVoice,
    espeak_version,
    list_variants,
    synthesize,
)
from privspk.corpus.splits import split_speakers
from privspk.corpus.text import make_sentence
from privspk.corpus.types import Corpus, SpeakerSplit, Utterance
from privspk.errors import ConfigError, CorpusError

__all__ = [
    "BUILTIN_SAMPLE_RATE",
    "GENERATOR_VERSION",
    "SpeakerProfile",
    "build_builtin_corpus",
    "default_split",
    "draw_voice_settings",
    "heldout_count",
    "load_builtin_split",
    "load_speaker_profiles",
    "make_speaker_profiles",
    "render_utterance",
]

logger = logging.getLogger(__name__)

#: Bump when the generator changes what it writes; stored builds of another version are rebuilt.
GENERATOR_VERSION = 1
#: Rate of the written files, in Hz.
BUILTIN_SAMPLE_RATE = 16000
#: Allowed utterance duration after trimming, in seconds.
MIN_UTT_SECONDS, MAX_UTT_SECONDS = 1.5, 6.0
#: Share of all speakers that are public in the default split.
PUBLIC_FRACTION = 1.0 / 3.0
#: Number of clients in the default split.
DEFAULT_CLIENTS = 3

_OWN_FILES = ("manifest.tsv", "speakers.json", "split.json", "build.json")
_NOISE_KINDS = ("white", "pink", "babble-like")
_REVERB_PROBABILITY = 0.5
_MAX_ATTEMPTS = 6
#: The warp x speed factor is realised as a source rate that is a multiple of this many Hz.
_RATE_STEP = 100
#: Range of the duration aimed at when choosing a sentence length, in seconds.
_TARGET_SECONDS = (2.0, 4.6)
# stream tags of the SeedSequence: one independent random stream per purpose
_TAG_PROFILES, _TAG_UTTERANCE, _TAG_TEXT = 1, 2, 3


@dataclass(frozen=True)
class SpeakerProfile:
    """How one synthetic speaker is generated.

    Attributes:
        speaker: speaker id (``spk000`` ...).
        variant: eSpeak voice variant (voice source and formant set).
        accent: eSpeak English language voice.
        pitch: base pitch parameter, 0..100.
        pitch_range: intonation range parameter, 0..100.
        rate_wpm: speaking rate heard in the output (after the warp), words per minute.
        warp: vocal-tract / spectral warp; pitch and formants are multiplied by it.
        tilt: first-order spectral tilt ``y[n] = x[n] - tilt * x[n-1]`` (> 0 brighter).
        word_gap: extra pause between words, in units of 10 ms.
        heldout: uses a voice variant reserved for held-out speakers.

    >>> p = SpeakerProfile("spk000", "Alex", "en-us", 50, 50, 170.0, 1.0, 0.0, 0, False)
    >>> SpeakerProfile.from_dict(p.to_dict()) == p
    True
    """

    speaker: str
    variant: str
    accent: str
    pitch: int
    pitch_range: int
    rate_wpm: float
    warp: float
    tilt: float
    word_gap: int
    heldout: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict.

        >>> make_speaker_profiles(3, seed=0)[0].to_dict()["speaker"]
        'spk000'
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeakerProfile:
        """Inverse of :meth:`to_dict`; unknown or missing fields are a CorpusError.

        >>> p = make_speaker_profiles(3, seed=0)[1]
        >>> SpeakerProfile.from_dict(p.to_dict()) == p
        True
        """
        try:
            return cls(**data)
        except TypeError as exc:
            raise CorpusError(f"malformed speaker profile {data!r}: {exc}") from exc


def heldout_count(n_speakers: int) -> int:
    """Held-out speakers in the default split: ``ceil(n_speakers / 5)``, at least 1.

    >>> heldout_count(200), heldout_count(4)
    (40, 1)
    """
    return max(1, math.ceil(n_speakers / 5))


def _check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{name} must be in [{low}, {'inf' if high is None else high}], got {value}")
    return int(value)


def draw_voice_settings(rng: np.random.Generator) -> dict[str, Any]:
    """A speaker's pitch, pitch range, rate, vocal-tract warp, spectral tilt and word gap, drawn from ``rng``.

    The ranges of the built-in corpus; the cross-device population draws its owners with the same call.

    >>> sorted(draw_voice_settings(np.random.default_rng(0)))
    ['pitch', 'pitch_range', 'rate_wpm', 'tilt', 'warp', 'word_gap']
    """
    return {
        "pitch": int(rng.integers(20, 81)),
        "pitch_range": int(rng.integers(20, 91)),
        "rate_wpm": round(float(rng.uniform(125.0, 210.0)), 2),
        "warp": round(float(rng.uniform(0.85, 1.15)), 4),
        "tilt": round(float(rng.uniform(-0.5, 0.5)), 3),
        "word_gap": int(rng.choice([0, 0, 0, 1, 2])),
    }


def make_speaker_profiles(n_speakers: int, *, seed: int) -> tuple[SpeakerProfile, ...]:
    """Draw ``n_speakers`` speaker profiles, deterministically from ``seed``.

    A quarter of the variants at most (about one per two held-out speakers) is reserved for
    the :func:`heldout_count` held-out speakers; the other speakers share the remaining
    variants. Accents are dealt round-robin within each group so all are used. The
    profiles are shuffled before naming, so an id says nothing about the role.

    >>> ps = make_speaker_profiles(10, seed=0)
    >>> held = {p.variant for p in ps if p.heldout}
    >>> (len(ps), sum(p.heldout for p in ps), held.isdisjoint(p.variant for p in ps if not p.heldout))
    (10, 2, True)
    """
    n = _check_int(n_speakers, "n_speakers", 3, 100_000)
    s = _check_int(seed, "seed", 0)
    rng = np.random.default_rng([s, _TAG_PROFILES])
    variants = list(list_variants())
    order = rng.permutation(len(variants))
    n_held = heldout_count(n)
    n_held_variants = min(max(1, math.ceil(n_held / 2)), len(variants) // 4)
    held_variants = [variants[i] for i in order[:n_held_variants]]
    train_variants = [variants[i] for i in order[n_held_variants:]]

    def deal(pool: Sequence[str], count: int) -> list[str]:
        out: list[str] = []
        while len(out) < count:
            out += [pool[i] for i in rng.permutation(len(pool))]
        return out[:count]

    raw: list[tuple[str, str, bool]] = []
    for pool, count, held in ((held_variants, n_held, True), (train_variants, n - n_held, False)):
        for variant, accent in zip(deal(pool, count), deal(ENGLISH_ACCENTS, count)):
            raw.append((variant, accent, held))
    width = max(3, len(str(n - 1)))
    profiles = []
    for idx, k in enumerate(rng.permutation(n)):
        variant, accent, held = raw[int(k)]
        profiles.append(
            SpeakerProfile(
                speaker=f"spk{idx:0{width}d}",
                variant=variant,
                accent=accent,
                **draw_voice_settings(rng),
                heldout=held,
            )
        )
    return tuple(profiles)


def _speaker_key(speaker: str) -> int:
    """A stable 64-bit integer of a speaker id, to seed that speaker's random streams."""
    return int.from_bytes(hashlib.sha256(speaker.encode("utf-8")).digest()[:8], "little")


def _trim(x: np.ndarray, rate: int, *, floor_db: float = 40.0, margin_s: float = 0.03) -> np.ndarray:
    """Cut leading and trailing frames more than ``floor_db`` below the loudest 10 ms frame."""
    hop = max(1, rate // 100)
    n_frames = len(x) // hop
    if n_frames == 0:
        return x
    energy = (x[: n_frames * hop].reshape(n_frames, hop) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy > energy.max() * 10.0 ** (-floor_db / 10.0))
    if loud.size == 0:
        return x[:0]
    margin = int(margin_s * rate)
    start = max(0, loud[0] * hop - margin)
    stop = min(len(x), (loud[-1] + 1) * hop + margin)
    return x[start:stop]


def _render_speech(
    profile: SpeakerProfile, *, seed: int, index: int, rng: np.random.Generator
) -> tuple[np.ndarray, int, str]:
    """Synthesise and trim one utterance; return (samples at 22.05 kHz, source rate, text).

    The source rate is the rate the samples are *declared* to have before resampling to
    16 kHz; ``source_rate / 22050`` is the warp x speed factor (a multiple of 100 Hz, 0.45 %
    steps, so the resampling kernel stays small: 160 phases).
    """
    speed = float(rng.uniform(0.95, 1.05))
    source_rate = int(round(ESPEAK_SAMPLE_RATE * profile.warp * speed / _RATE_STEP)) * _RATE_STEP
    rate_heard = profile.rate_wpm * float(rng.uniform(0.94, 1.06))
    voice = EspeakVoice(
        accent=profile.accent,
        variant=profile.variant,
        rate_wpm=int(np.clip(round(rate_heard / profile.warp), 80, 450)),
        pitch=int(np.clip(profile.pitch + rng.integers(-3, 4), 0, 100)),
        pitch_range=int(np.clip(profile.pitch_range + rng.integers(-5, 6), 0, 100)),
        word_gap=profile.word_gap,
    )
    espeak_seed = int(rng.integers(0, 2**31 - 1))
    target = float(rng.uniform(_TARGET_SECONDS[0], _TARGET_SECONDS[1]))
    n_words = max(2, round(target * rate_heard / 60.0))
    spk_key = _speaker_key(profile.speaker)
    last = (np.zeros(0, dtype=np.float32), "")
    for attempt in range(_MAX_ATTEMPTS):
        text_rng = np.random.default_rng([seed, _TAG_TEXT, spk_key, index, attempt])
        text = make_sentence(text_rng, n_words=n_words)
        raw = synthesize(text, voice, seed=espeak_seed).astype(np.float32) / 32768.0
        speech = _trim(raw, ESPEAK_SAMPLE_RATE)
        seconds = len(speech) / source_rate
        last = (speech, text)
        if MIN_UTT_SECONDS <= seconds <= MAX_UTT_SECONDS:
            return speech, source_rate, text
        scale = target / max(seconds, 1e-3)
        n_words = int(np.clip(round(n_words * scale), 1, 200))
    speech, text = last
    if len(speech) / source_rate > MAX_UTT_SECONDS:
        return speech[: int(MAX_UTT_SECONDS * source_rate)], source_rate, text
    raise CorpusError(
        f"could not synthesise {MIN_UTT_SECONDS}-{MAX_UTT_SECONDS} s for speaker {profile.speaker} "
        f"utterance {index} in {_MAX_ATTEMPTS} attempts; report this with the seed ({seed})"
    )


def render_utterance(profile: SpeakerProfile, *, index: int, seed: int) -> tuple[torch.Tensor, str]:
    """Generate utterance ``index`` of a speaker: a 16 kHz float32 waveform and its text.

    Deterministic in (profile, index, seed). Steps: sentence -> eSpeak (with pitch, range
    and rate jitter) -> trim -> spectral tilt -> resample by warp x speed jitter to 16 kHz
    -> reverberation (half of the utterances) -> noise at 15..30 dB SNR -> peak 0.9 and a
    random gain of -14..0 dB.

    >>> p = make_speaker_profiles(3, seed=0)[0]
    >>> wav, text = render_utterance(p, index=0, seed=0)
    >>> (1.5 <= wav.shape[0] / 16000 <= 6.0, float(wav.abs().max()) <= 0.9, text.endswith("."))
    (True, True, True)
    """
    idx = _check_int(index, "index", 0)
    s = _check_int(seed, "seed", 0)
    spk_key = _speaker_key(profile.speaker)
    rng = np.random.default_rng([s, _TAG_UTTERANCE, spk_key, idx])
    speech, source_rate, text = _render_speech(profile, seed=s, index=idx, rng=rng)
    tilted = speech.copy()
    tilted[1:] -= profile.tilt * speech[:-1]
    wav = resample(torch.from_numpy(tilted), orig_freq=source_rate, new_freq=BUILTIN_SAMPLE_RATE)
    max_len = int(MAX_UTT_SECONDS * BUILTIN_SAMPLE_RATE)
    min_len = math.ceil(MIN_UTT_SECONDS * BUILTIN_SAMPLE_RATE)
    wav = wav[:max_len]
    if wav.shape[0] < min_len:  # resampling rounding at the lower bound
        wav = torch.nn.functional.pad(wav, (0, min_len - wav.shape[0]))
    if rng.random() < _REVERB_PROBABILITY:
        rir = synthetic_rir(
            sample_rate=BUILTIN_SAMPLE_RATE,
            rt60=float(rng.uniform(0.15, 0.7)),
            rng=rng,
            drr_db=float(rng.uniform(-2.0, 12.0)),
        )
        wav = reverberate(wav, rir)
    kind = _NOISE_KINDS[int(rng.integers(len(_NOISE_KINDS)))]
    wav = add_noise(
        wav, snr_db=float(rng.uniform(15.0, 30.0)), rng=rng, kind=kind, sample_rate=BUILTIN_SAMPLE_RATE
    )
    peak = float(wav.abs().max())
    if peak > 0.0:
        wav = wav * (0.9 / peak)
    wav = random_gain(wav, rng=rng, min_db=-14.0, max_db=0.0)
    return wav.to(torch.float32), text


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread (identical float results in every process) and restore after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build_speaker(task: tuple[SpeakerProfile, int, int, str]) -> list[tuple[str, str, float]]:
    """Worker: write all utterances of one speaker; return (utt_id, relative path, seconds)."""
    profile, n_utts, seed, out_dir = task
    rows: list[tuple[str, str, float]] = []
    with _one_thread():
        for j in range(n_utts):
            wav, _text = render_utterance(profile, index=j, seed=seed)
            utt_id = f"{profile.speaker}-{j:03d}"
            rel = f"wav/{profile.speaker}/{utt_id}.wav"
            write_audio(Path(out_dir) / rel, wav, sample_rate=BUILTIN_SAMPLE_RATE)
            rows.append((utt_id, rel, wav.shape[0] / BUILTIN_SAMPLE_RATE))
    return rows


def default_split(profiles: Sequence[SpeakerProfile], *, seed: int) -> SpeakerSplit:
    """The documented default split of a built-in corpus.

    Held out: the speakers with reserved voice variants. Public: ``round(n / 3)`` of the
    others. Clients: the rest, dealt to 3 clients (fewer when there are fewer than 3 left).

    >>> ps = make_speaker_profiles(200, seed=0)
    >>> s = default_split(ps, seed=0)
    >>> (len(s.heldout), len(s.public), [len(c) for c in s.clients])
    (40, 67, [31, 31, 31])
    """
    speakers = [p.speaker for p in profiles]
    held = [p.speaker for p in profiles if p.heldout]
    n_public = round(PUBLIC_FRACTION * len(speakers))
    left = len(speakers) - len(held) - n_public
    return split_speakers(
        speakers,
        public_fraction=PUBLIC_FRACTION,
        heldout=held,
        n_clients=max(1, min(DEFAULT_CLIENTS, left)),
        skew=0.0,
        seed=seed,
    )


def _params(n_speakers: int, utts_per_speaker: int, seed: int) -> dict[str, Any]:
    return {
        "generator": "privspk-builtin",
        "generator_version": GENERATOR_VERSION,
        "n_speakers": n_speakers,
        "utts_per_speaker": utts_per_speaker,
        "seed": seed,
        "sample_rate": BUILTIN_SAMPLE_RATE,
        "espeak": espeak_version(),
    }


def _read_build(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / "build.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _finished(out: Path, params: dict[str, Any]) -> Corpus | None:
    """The stored corpus if it is complete and was built with ``params``, else None."""
    build = _read_build(out)
    if build is None or not build.get("complete") or build.get("params") != params:
        return None
    try:
        corpus = Corpus.from_manifest(out / "manifest.tsv")
    except CorpusError:
        return None
    expected = params["n_speakers"] * params["utts_per_speaker"]
    if len(corpus) != expected or not all((out / n).is_file() for n in _OWN_FILES):
        return None
    if not all(u.path.is_file() for u in corpus.utterances):
        return None
    return corpus


def _clear(out: Path) -> None:
    """Remove a previous build's files (only files this module writes)."""
    if (out / "wav").exists() and _read_build(out) is None:
        raise CorpusError(
            f"{out}: has a wav/ folder but no build.json, so it is not a privspk built-in corpus; "
            "build into an empty or new folder"
        )
    shutil.rmtree(out / "wav", ignore_errors=True)
    for name in _OWN_FILES:
        (out / name).unlink(missing_ok=True)


def build_builtin_corpus(
    out_dir: str | os.PathLike[str],
    *,
    n_speakers: int = 200,
    utts_per_speaker: int = 40,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> Corpus:
    """Synthesise the built-in corpus into ``out_dir`` (or return it if already built).

    Args:
        out_dir: target folder (created); only files this function writes are ever removed.
        n_speakers: number of speakers, >= 3.
        utts_per_speaker: utterances per speaker, >= 1.
        seed: seed of every random draw; same seed -> identical files.
        workers: processes that synthesise in parallel (``spawn`` start method; each has its
            own eSpeak instance). 1 runs in this process. Scripts that call this with
            ``workers > 1`` need the usual ``if __name__ == "__main__":`` guard.
        progress: show a progress bar (tqdm, on stderr).

    Returns:
        The corpus (root ``out_dir``); its default split: :func:`load_builtin_split`.

    Raises:
        ConfigError: bad arguments.
        CorpusError: ``out_dir`` holds a ``wav/`` folder that is not a built-in corpus, or
            synthesis failed.

    >>> import tempfile, shutil
    >>> d = tempfile.mkdtemp()
    >>> c = build_builtin_corpus(d, n_speakers=4, utts_per_speaker=2, seed=1, workers=1, progress=False)
    >>> (len(c), c.speakers[:2], c.utterances[0].utt_id)
    (8, ('spk000', 'spk001'), 'spk000-000')
    >>> build_builtin_corpus(d, n_speakers=4, utts_per_speaker=2, seed=1, workers=1, progress=False) == c
    True
    >>> shutil.rmtree(d)
    """
    n = _check_int(n_speakers, "n_speakers", 3, 100_000)
    per = _check_int(utts_per_speaker, "utts_per_speaker", 1, 1000)
    s = _check_int(seed, "seed", 0)
    w = _check_int(workers, "workers", 1, 256)
    out = Path(out_dir)
    params = _params(n, per, s)
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{out}: exists and is not a folder")
    done = _finished(out, params) if out.is_dir() else None
    if done is not None:
        logger.info("built-in corpus in %s is complete (%d utterances); reusing it", out, len(done))
        return done
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    _write_json(out / "build.json", {"complete": False, "params": params})
    started = time.perf_counter()
    profiles = make_speaker_profiles(n, seed=s)
    tasks = [(p, per, s, str(out)) for p in profiles]
    results: dict[str, list[tuple[str, str, float]]] = {}
    from tqdm import tqdm

    with tqdm(total=n, desc="built-in corpus", unit="spk", disable=not progress) as bar:
        if w == 1 or n == 1:
            for task in tasks:
                results[task[0].speaker] = _build_speaker(task)
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(w, n)) as pool:
                for task, rows in zip(tasks, pool.imap(_build_speaker, tasks)):
                    results[task[0].speaker] = rows
                    bar.update(1)
    utterances = []
    durations = []
    for p in profiles:
        for utt_id, rel, seconds in results[p.speaker]:
            utterances.append(Utterance(utt_id, p.speaker, out / rel))
            durations.append(seconds)
    corpus = Corpus(out, tuple(utterances))
    corpus.to_manifest(out / "manifest.tsv")
    _write_json(out / "speakers.json", {"speakers": [p.to_dict() for p in profiles]})
    default_split(profiles, seed=s).save(out / "split.json")
    d = np.asarray(durations)
    stats = {
        "utterances": len(utterances),
        "hours": round(float(d.sum()) / 3600.0, 3),
        "seconds_min": round(float(d.min()), 3),
        "seconds_mean": round(float(d.mean()), 3),
        "seconds_max": round(float(d.max()), 3),
        "build_seconds": round(time.perf_counter() - started, 1),
        "workers": w,
    }
    _write_json(out / "build.json", {"complete": True, "params": params, "stats": stats})
    logger.info("built-in corpus: %s", stats)
    return corpus


def load_builtin_split(out_dir: str | os.PathLike[str]) -> SpeakerSplit:
    """The default split stored with a built-in corpus (``split.json``).

    >>> import tempfile, shutil
    >>> d = tempfile.mkdtemp()
    >>> c = build_builtin_corpus(d, n_speakers=3, utts_per_speaker=1, workers=1, progress=False)
    >>> load_builtin_split(d).speakers == c.speakers
    True
    >>> shutil.rmtree(d)
    """
    return SpeakerSplit.load(Path(out_dir) / "split.json")


def load_speaker_profiles(out_dir: str | os.PathLike[str]) -> tuple[SpeakerProfile, ...]:
    """The generating parameters stored with a built-in corpus (``speakers.json``).

    >>> import tempfile, shutil
    >>> d = tempfile.mkdtemp()
    >>> _ = build_builtin_corpus(d, n_speakers=3, utts_per_speaker=1, workers=1, progress=False)
    >>> [p.speaker for p in load_speaker_profiles(d)]
    ['spk000', 'spk001', 'spk002']
    >>> shutil.rmtree(d)
    """
    path = Path(out_dir) / "speakers.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data["speakers"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CorpusError(f"{path}: not a readable speakers.json ({exc}); rebuild the corpus") from exc
    return tuple(SpeakerProfile.from_dict(r) for r in rows)
