"""Corpora: the data model, readers for common layouts, speaker splits, and the built-in corpus.

>>> import tempfile, shutil
>>> root = tempfile.mkdtemp()
>>> corpus = build_builtin_corpus(root, n_speakers=3, utts_per_speaker=1, workers=1, progress=False)
>>> split = load_builtin_split(root)
>>> (load_corpus(root) == corpus, len(split.heldout))
(True, 1)
>>> shutil.rmtree(root)
"""

from __future__ import annotations

from privspk.corpus.builtin import (
    BUILTIN_SAMPLE_RATE,
    SpeakerProfile,
    build_builtin_corpus,
    default_split,
    load_builtin_split,
    load_speaker_profiles,
    make_speaker_profiles,
    render_utterance,
)
from privspk.corpus.espeak import ENGLISH_ACCENTS, ESPEAK_SAMPLE_RATE, EspeakVoice, list_variants, synthesize
from privspk.corpus.readers import (
    CORPUS_FORMATS,
    detect_format,
    load_corpus,
    read_folder,
    read_kaldi_dir,
    read_librispeech,
    read_voxceleb,
    read_wav_scp,
)
from privspk.corpus.splits import client_sizes, partition_speakers, split_speakers
from privspk.corpus.types import Corpus, SkippedFile, SpeakerSplit, Utterance

__all__ = [
    "BUILTIN_SAMPLE_RATE",
    "CORPUS_FORMATS",
    "ENGLISH_ACCENTS",
    "ESPEAK_SAMPLE_RATE",
    "Corpus",
    "EspeakVoice",
    "SkippedFile",
    "SpeakerProfile",
    "SpeakerSplit",
    "Utterance",
    "build_builtin_corpus",
    "client_sizes",
    "default_split",
    "detect_format",
    "list_variants",
    "load_builtin_split",
    "load_corpus",
    "load_speaker_profiles",
    "make_speaker_profiles",
    "partition_speakers",
    "read_folder",
    "read_kaldi_dir",
    "read_librispeech",
    "read_voxceleb",
    "read_wav_scp",
    "render_utterance",
    "split_speakers",
    "synthesize",
]
