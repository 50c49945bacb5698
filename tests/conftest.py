"""Suite-wide settings.

- One torch thread per test process (the CI box has 2 shared cores).
- Hypothesis: no per-example deadline (timings on a shared box are noise, not bugs);
  the ``ci`` profile (``HYPOTHESIS_PROFILE=ci``, set by ``.ci/run``) derandomizes the draws
  so a CI run is repeatable, while local runs keep exploring new examples.
"""

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every test starts with one intra-op thread, whatever the test before it set (runs set their own)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
