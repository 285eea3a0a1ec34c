"""Suite-wide settings.

The tensors in the tests are small: on a 2-core machine a second OpenMP thread spinning for each of
thousands of tiny ops makes the suite several times slower (and much slower when the machine is
shared), so every test runs on one intra-op thread. Benchmarks set their own thread count.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
