"""Data preparation for a run: corpus -> speaker split -> cached features -> held-out trials."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from privspk.audio.io import write_audio
from privspk.config import CorpusSection, EvalSection, FederationSection, RunConfig, SplitSection
from privspk.corpus import Corpus, Utterance
from privspk.errors import ConfigError, CorpusError
from privspk.prepare import builtin_dir, corpus_fingerprint, load_run_corpus, prepare_data
from test_api import shared_data_dir, tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = tiny_config(shared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("runs_prep"))
    return cfg, prepare_data(cfg, progress=False)


def test_builtin_dir_names_its_settings():
    cfg = RunConfig(data_dir="d", corpus=CorpusSection(n_speakers=12, utts_per_speaker=6, seed=3))
    assert builtin_dir(cfg) == Path("d") / "builtin_12x6_seed3"


def test_prepared_builtin_corpus(tiny):
    cfg, data = tiny
    assert len(data.corpus) == 32 and len(data.corpus.speakers) == 8
    s = data.split
    groups = [set(s.public), set(s.heldout), *map(set, s.clients)]
    assert sum(len(g) for g in groups) == len(set().union(*groups)), "speaker groups overlap"
    assert len(s.heldout) == math.ceil(8 / 5) and s.n_clients == 3 and all(s.clients)
    assert data.corpus_id == corpus_fingerprint(data.corpus)
    assert set(data.utt2spk.values()) == set(s.speakers)
    held = set(s.heldout)
    assert data.trials and all(data.utt2spk[t.enroll] in held and data.utt2spk[t.test] in held for t in data.trials)
    assert {t.target for t in data.trials} == {True, False}
    for t in data.trials:
        assert t.target == (data.utt2spk[t.enroll] == data.utt2spk[t.test])
    feats = data.features.get(data.corpus.utterances[0].utt_id)
    assert feats.dim() == 2 and feats.shape[1] == cfg.features.n_mels and feats.shape[0] > 50
    assert bool(torch.isfinite(feats).all())
    pairs = data.utterances_of(s.clients[0])
    assert pairs == [(u.utt_id, u.speaker) for u in data.corpus.utterances if u.speaker in set(s.clients[0])]


def test_a_second_preparation_reuses_everything(tiny):
    cfg, data = tiny
    again = prepare_data(cfg, progress=False)
    assert again.corpus_id == data.corpus_id and again.trials == data.trials and again.split == data.split
    assert again.seconds["corpus"] + again.seconds["features"] < 2.0


def test_another_client_count_repartitions_the_client_speakers(tiny):
    cfg, data = tiny
    other = cfg.replace(federation=dataclasses.replace(cfg.federation, n_clients=2))
    _, split = load_run_corpus(other, progress=False)
    assert split.public == data.split.public and split.heldout == data.split.heldout
    assert split.n_clients == 2
    assert sorted(sum(map(list, split.clients), [])) == sorted(sum(map(list, data.split.clients), []))


def test_skew_needs_enough_client_speakers(tiny):
    cfg, _ = tiny
    other = cfg.replace(split=dataclasses.replace(cfg.split, skew=1.5))
    with pytest.raises(ConfigError, match="3 speakers cannot fill 3 skewed clients"):
        load_run_corpus(other, progress=False)


def test_corpus_fingerprint_follows_ids_speakers_and_file_names():
    a = Corpus(Path("r"), (Utterance("u1", "s1", Path("r/s1/u1.wav")), Utterance("u2", "s2", Path("r/s2/u2.wav"))))
    moved = Corpus(Path("elsewhere"), (Utterance("u1", "s1", Path("elsewhere/s1/u1.wav")),
                                       Utterance("u2", "s2", Path("elsewhere/s2/u2.wav"))))
    relabelled = Corpus(Path("r"), (Utterance("u1", "s2", Path("r/s1/u1.wav")),
                                    Utterance("u2", "s2", Path("r/s2/u2.wav"))))
    assert corpus_fingerprint(a) == corpus_fingerprint(moved) and len(corpus_fingerprint(a)) == 12
    assert corpus_fingerprint(a) != corpus_fingerprint(relabelled)


def _folder_corpus(root: Path, n_speakers: int, utts: int = 2) -> None:
    for s in range(n_speakers):
        for u in range(utts):
            t = torch.arange(16000) / 16000
            wav = 0.3 * torch.sin(2 * math.pi * (120 + 25 * s + 3 * u) * t)
            write_audio(root / f"spk{s}" / f"utt{u}.wav", wav, sample_rate=16000)


def test_a_folder_corpus_with_too_few_speakers_is_refused_with_what_to_change(tmp_path):
    _folder_corpus(tmp_path / "corpus", 5)
    cfg = RunConfig(data_dir=str(tmp_path / "data"), corpus=CorpusSection(path=str(tmp_path / "corpus")),
                    split=SplitSection(heldout=2))
    with pytest.raises(CorpusError, match=r"5 speakers cannot give 2 held-out speakers and at least 2 per client "
                                          r"for 3 clients; lower \[split\] heldout or \[federation\] n_clients"):
        prepare_data(cfg, progress=False)


def test_a_folder_corpus_is_split_and_prepared(tmp_path):
    _folder_corpus(tmp_path / "corpus", 8)
    cfg = RunConfig(threads=1, data_dir=str(tmp_path / "data"), corpus=CorpusSection(path=str(tmp_path / "corpus")),
                    split=SplitSection(heldout=2, public_fraction=0.25), federation=FederationSection(n_clients=2),
                    eval=EvalSection(target_per_utt=1, nontarget_per_utt=2))
    data = prepare_data(cfg, progress=False)
    assert len(data.corpus) == 16 and len(data.split.heldout) == 2 and data.split.n_clients == 2
    assert set(data.split.speakers) == set(data.corpus.speakers)
    assert all(data.utt2spk[t.enroll] in data.split.heldout for t in data.trials)
    assert (tmp_path / "data" / "features" / data.corpus_id).is_dir()
