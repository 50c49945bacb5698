"""Long files: verifying a recording 10x longer than another costs the same peak memory.

Checked once by hand with the cap lifted (``max_seconds=1e6``): the 15 min file then peaks
380 MB higher than the 40 s one; with the 30 s cap both peak at the same 667 MB.
Each verification runs in a fresh interpreter that reports its peak resident memory
(``resource.getrusage(...).ru_maxrss``), so the numbers are not polluted by the test process.
No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from privspk.audio.io import resample
from privspk.corpus.espeak import ESPEAK_SAMPLE_RATE, EspeakVoice, synthesize

pytest.importorskip("resource")

CHILD = textwrap.dedent(
    """
    import json, resource, sys, torch
    from privspk.evaluation.verifier import Verifier
    from privspk.features.config import FeatureConfig

    torch.manual_seed(0)
    class Pool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_dim, self.lin = 8, torch.nn.Linear(48, 8)
        def forward(self, x):
            return self.lin(torch.cat([x.mean(1), x.std(1)], dim=1))
    v = Verifier(Pool(), FeatureConfig(n_mels=24, cmn=False), threshold=0.0, max_seconds=float(sys.argv[3]))
    v.enroll("alice", [sys.argv[1], sys.argv[1]])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    d = v.verify("alice", sys.argv[2])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kb": before, "after_kb": after, "accepted": bool(d.accepted), "reason": d.reason}))
    """
)


def _peak(enrol: str, probe: str, max_seconds: float = 30.0) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, enrol, probe, str(max_seconds)], capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": ":".join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_file_length(tmp_path):
    raw = synthesize("The quick brown fox jumps over the lazy dog near the river.", EspeakVoice(accent="en-us"),
                     seed=1).astype(np.float32) / 32768.0
    import torch

    one = resample(torch.from_numpy(raw), orig_freq=ESPEAK_SAMPLE_RATE, new_freq=16000).numpy()
    sf.write(tmp_path / "enrol.wav", one, 16000, subtype="PCM_16")
    pause = np.zeros(8000, dtype=np.float32)
    unit = np.concatenate([one, pause])

    def write(name: str, seconds: int) -> str:
        path = tmp_path / name
        reps = -(-seconds * 16000 // unit.size)
        with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as fh:
            for _ in range(reps):  # written in pieces: the test process itself stays small
                fh.write(unit)
        return str(path)

    short = _peak(str(tmp_path / "enrol.wav"), write("short.wav", 40))  # just over the 30 s analysed
    long = _peak(str(tmp_path / "enrol.wav"), write("long.wav", 900))  # 15 min, 29 MB of PCM_16
    assert short["accepted"] and long["accepted"]
    grown_mb = (long["after_kb"] - short["after_kb"]) / 1024
    # decoding the whole 15 min as float32 alone would take 55 MB more
    assert grown_mb < 20, f"peak memory grew by {grown_mb:.0f} MB for a 22x longer file"
