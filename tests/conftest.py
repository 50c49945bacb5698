"""Suite-wide settings: one torch thread per test process (the CI box has 2 shared cores)."""

import torch

torch.set_num_threads(1)
