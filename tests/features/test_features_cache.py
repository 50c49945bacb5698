from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from privspk.errors import AudioError, ConfigError, FeatureError
from privspk.features.cache import MANIFEST_NAME, FeatureCache
from privspk.features.config import FeatureConfig
from privspk.features.extract import extract

CFG = FeatureConfig(n_mels=24)


def load_noise(path: str) -> torch.Tensor:
    """Module-level (picklable) loader: 'n_samples:seed' -> noise waveform."""
    n_samples, seed = (int(part) for part in path.split(":"))
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.standard_normal(n_samples) * 0.1).astype(np.float32))


def utterances(n: int, first: int = 0) -> list[SimpleNamespace]:
    return [SimpleNamespace(utt_id=f"u{i:03d}", path=f"{800 + 97 * i}:{i}") for i in range(first, first + n)]


class CountingLoader:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, path: str) -> torch.Tensor:
        self.calls.append(path)
        return load_noise(path)


def chunk_files(cache: FeatureCache) -> list[Path]:
    return sorted(cache.directory.glob("chunk-*"))


def test_cached_features_equal_fresh_extraction_within_float16(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, CFG)
    items = utterances(5)
    assert cache.build(items, load=load_noise, progress=False) == 5
    assert cache.utt_ids == tuple(u.utt_id for u in items)
    for item in items:
        fresh = extract(load_noise(item.path), CFG)
        got = cache.get(item.utt_id)
        assert got.dtype == torch.float32 and got.shape == fresh.shape
        assert cache.n_frames(item.utt_id) == fresh.shape[0]
        torch.testing.assert_close(got, fresh, atol=1e-2, rtol=1e-3)
    assert "u003" in cache and "u999" not in cache and len(cache) == 5
    assert cache.directory == tmp_path / CFG.key()


def test_pairs_of_id_and_loader_are_accepted(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, CFG)
    wav = load_noise("1600:9")
    cache.build([("only", lambda: wav)], progress=False)
    torch.testing.assert_close(cache.get("only"), extract(wav, CFG), atol=1e-2, rtol=1e-3)


def test_rerun_reuses_the_cache_without_loading(tmp_path: Path) -> None:
    FeatureCache(tmp_path, CFG).build(utterances(4), load=load_noise, progress=False)
    loader = CountingLoader()
    again = FeatureCache(tmp_path, CFG)
    assert len(again) == 4
    assert again.build(utterances(4), load=loader, progress=False) == 0
    assert loader.calls == []


def test_new_utterances_are_added_and_old_ones_kept(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, CFG)
    cache.build(utterances(3), load=load_noise, progress=False)
    before = {u: cache.get(u) for u in cache.utt_ids}
    loader = CountingLoader()
    assert cache.build(utterances(5), load=loader, progress=False) == 2
    assert loader.calls == [u.path for u in utterances(2, first=3)]
    reopened = FeatureCache(tmp_path, CFG)
    assert len(reopened) == 5 and len(chunk_files(reopened)) == 2
    assert all(torch.equal(reopened.get(u), before[u]) for u in before)


def test_small_chunks_split_the_data_and_still_read_back(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, CFG)
    cache.build(utterances(6), load=load_noise, progress=False, chunk_frames=9)
    # 3, 3, 4, 5, 5, 6 frames: a chunk closes once it holds >= 9 frames
    assert len(chunk_files(cache)) == 3
    fresh = extract(load_noise(utterances(6)[5].path), CFG)
    torch.testing.assert_close(cache.get("u005"), fresh, atol=1e-2, rtol=1e-3)


def test_another_config_uses_another_directory(tmp_path: Path) -> None:
    a = FeatureCache(tmp_path, CFG)
    a.build(utterances(2), load=load_noise, progress=False)
    b = FeatureCache(tmp_path, FeatureConfig(n_mels=24, cmn=False))
    assert b.directory != a.directory and len(b) == 0
    b.build(utterances(2), load=load_noise, progress=False)
    assert b.get("u000").shape == a.get("u000").shape and not torch.equal(b.get("u000"), a.get("u000"))


def test_interrupted_build_leaves_no_manifest_and_is_rebuilt(tmp_path: Path) -> None:
    def dies_on_fourth(path: str) -> torch.Tensor:
        if path == utterances(4)[3].path:
            raise AudioError(path, "file is truncated")
        return load_noise(path)

    cache = FeatureCache(tmp_path, CFG)
    with pytest.raises(FeatureError, match="u003.*file is truncated"):
        cache.build(utterances(4), load=dies_on_fourth, progress=False, chunk_frames=1)
    assert chunk_files(cache) and not (cache.directory / MANIFEST_NAME).exists()
    orphans = set(chunk_files(cache))
    half = FeatureCache(tmp_path, CFG)
    assert len(half) == 0
    assert half.build(utterances(4), load=load_noise, progress=False) == 4
    assert not orphans & set(chunk_files(half))
    assert len(chunk_files(half)) == 1 and len(FeatureCache(tmp_path, CFG)) == 4


def test_interrupted_append_keeps_the_previous_cache(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, CFG)
    cache.build(utterances(2), load=load_noise, progress=False)
    stray = cache.directory / "chunk-00001-deadbeef.npy"
    np.save(stray, np.zeros((3, 24), dtype=np.float16))
    (cache.directory / "manifest.json.tmp-0000").write_text("{")
    reopened = FeatureCache(tmp_path, CFG)
    assert len(reopened) == 2
    reopened.build(utterances(2), load=load_noise, progress=False)
    assert not stray.exists() and not list(cache.directory.glob("*.tmp-*"))


def test_unreadable_manifest_names_the_directory_to_delete(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, CFG)
    cache.build(utterances(2), load=load_noise, progress=False)
    (cache.directory / MANIFEST_NAME).write_text('{"format": "privspk-feature-cache", "vers')
    with pytest.raises(FeatureError, match=f"corrupt.*delete the directory {cache.directory}"):
        FeatureCache(tmp_path, CFG)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(format="other"), "not a privspk-feature-cache manifest"),
        (lambda m: m.update(version=99), "version"),
        (lambda m: m["config"].update(n_mels=40), "settings"),
        (lambda m: m["config"].update(n_mels="x"), "bad settings"),
        (lambda m: m["chunks"][0].update(file="chunk-99999-x.npy"), "missing"),
        (lambda m: m["chunks"][0].pop("sha256"), "malformed"),
        (lambda m: m["index"].update(u000=[0, 10_000, 5]), "outside its chunk"),
        (lambda m: m["index"].update(u000=[3, 0, 5]), "outside its chunk"),
    ],
    ids=["format", "version", "config", "config-type", "chunk-missing", "no-hash", "offset", "chunk-no"],
)
def test_inconsistent_manifest_is_corruption(tmp_path: Path, edit, match: str) -> None:  # type: ignore[no-untyped-def]
    cache = FeatureCache(tmp_path, CFG)
    cache.build(utterances(2), load=load_noise, progress=False)
    path = cache.directory / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(FeatureError, match=match):
        FeatureCache(tmp_path, CFG)


def test_chunk_of_wrong_shape_is_corruption(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, CFG)
    cache.build(utterances(2), load=load_noise, progress=False)
    np.save(chunk_files(cache)[0], np.zeros((3, 24), dtype=np.float16))
    with pytest.raises(FeatureError, match=r"float16\(3, 24\), expected float16"):
        FeatureCache(tmp_path, CFG)


def test_flipped_bytes_are_caught_by_the_content_hash(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, CFG)
    cache.build(utterances(2), load=load_noise, progress=False)
    chunk = chunk_files(cache)[0]
    data = bytearray(chunk.read_bytes())
    data[-7] ^= 0xFF
    chunk.write_bytes(bytes(data))
    reopened = FeatureCache(tmp_path, CFG)  # header still fine: opening is cheap
    with pytest.raises(FeatureError, match="SHA-256.*delete the directory"):
        reopened.verify()
    with pytest.raises(FeatureError, match="SHA-256"):
        reopened.build(utterances(2), load=load_noise, progress=False)


def test_two_workers_give_the_same_features(tmp_path: Path) -> None:
    serial = FeatureCache(tmp_path / "a", CFG)
    serial.build(utterances(40), load=load_noise, progress=False)
    parallel = FeatureCache(tmp_path / "b", CFG)
    assert parallel.build(utterances(40), load=load_noise, workers=2, progress=False) == 40
    assert parallel.utt_ids == serial.utt_ids
    # Workers run torch on one thread; another thread count may sum in another order, which
    # can move a float16 value by one unit in the last place.
    for u in serial.utt_ids:
        torch.testing.assert_close(parallel.get(u), serial.get(u), atol=1e-3, rtol=1e-3)


def test_worker_errors_name_the_utterance(tmp_path: Path) -> None:
    items = utterances(3) + [SimpleNamespace(utt_id="tiny", path="10:0")]
    with pytest.raises(FeatureError, match="'tiny'.*10 samples"):
        FeatureCache(tmp_path, CFG).build(items, load=load_noise, workers=2, progress=False)


def test_unpicklable_loader_with_workers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="picklable"):
        FeatureCache(tmp_path, CFG).build(utterances(2), load=lambda p: load_noise(p), workers=2, progress=False)


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    items = utterances(2) + utterances(1)
    with pytest.raises(FeatureError, match="'u000' appears twice"):
        FeatureCache(tmp_path, CFG).build(items, load=load_noise, progress=False)


@pytest.mark.parametrize(
    ("items", "kwargs", "match"),
    [
        (utterances(1), {}, "pass load="),
        ([42], {"load": load_noise}, "item 0 must be"),
        ("u1", {"load": load_noise}, "not a string"),
        ([("", lambda: torch.zeros(800))], {}, "utt_id must be a non-empty str"),
        (utterances(1), {"load": load_noise, "workers": 0}, "workers"),
        (utterances(1), {"load": load_noise, "chunk_frames": 0}, "chunk_frames"),
    ],
)
def test_bad_build_arguments(tmp_path: Path, items: object, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FeatureCache(tmp_path, CFG).build(items, progress=False, **kwargs)  # type: ignore[arg-type]


def test_unknown_id_and_wrong_config_type(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, CFG)
    with pytest.raises(FeatureError, match="'nope' is not in the feature cache"):
        cache.get("nope")
    with pytest.raises(ConfigError, match="FeatureConfig"):
        FeatureCache(tmp_path, {"n_mels": 24})  # type: ignore[arg-type]


def test_building_nothing_on_an_empty_cache_is_harmless(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, CFG)
    assert cache.build([], progress=False) == 0 and len(cache) == 0


def test_corpus_utterances_read_from_wav_files(tmp_path: Path) -> None:
    """The way privspk.prepare uses the cache: corpus Utterances, read_audio, two workers."""
    import soundfile

    from privspk.audio.io import read_audio
    from privspk.corpus.types import Utterance

    items = []
    for i in range(4):
        wav = load_noise(f"{3000 + 500 * i}:{i}").numpy()
        path = tmp_path / f"spk{i % 2}-{i}.wav"
        soundfile.write(path, wav, 16000, subtype="PCM_16")
        items.append(Utterance(f"spk{i % 2}-{i}", f"spk{i % 2}", path))
    cache = FeatureCache(tmp_path / "feats", CFG)
    assert cache.build(items, load=read_audio, workers=2, progress=False) == 4
    for item in items:
        fresh = extract(read_audio(item.path), CFG)
        torch.testing.assert_close(cache.get(item.utt_id), fresh, atol=1e-2, rtol=1e-3)
