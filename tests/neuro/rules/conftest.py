"""Fixtures for the rule tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run on one intra-op thread: the tensors here are tiny, and on a busy machine a second OpenMP
    thread spinning for each of thousands of small ops makes a test many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
