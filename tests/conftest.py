"""Suite-wide settings.

- One torch thread per test process (the CI box has 2 shared cores).
- Hypothesis: no per-example deadline (timings on a shared box are noise, not bugs);
  the ``ci`` profile (``HYPOTHESIS_PROFILE=ci``, set by ``.ci/run``) derandomizes the draws
  so a CI run is repeatable, while local runs keep exploring new examples.
"""

import os

import torch
from hypothesis import settings

torch.set_num_threads(1)

settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
