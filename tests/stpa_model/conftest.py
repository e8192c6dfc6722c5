"""Fixtures for the model tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run the model tests on one intra-op thread, restoring the setting afterwards.

    The test models are tiny: on the shared 2-core machine two OpenMP threads spend more time synchronising than
    computing (measured: a debug-model training step took 19 ms on one thread and 340 ms on two under load).
    """
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)
