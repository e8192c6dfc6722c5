"""``batches_within``: the training loop's guard against a cluster that cannot feed its workers (issue 13)."""

from __future__ import annotations

import time

import pytest

from pipeline.errors import UserError
from pipeline.training.loop import BatchTimeoutError, batches_within


def _slow(delays):
    for i, delay in enumerate(delays):
        time.sleep(delay)
        yield i


def test_passes_every_batch_through_in_order():
    assert list(batches_within(iter(range(50)), 5.0, lambda: "")) == list(range(50))
    assert list(batches_within(iter(range(3)), 0, lambda: "")) == [0, 1, 2]  # 0: no limit


def test_a_batch_that_does_not_come_fails_naming_what_ray_waits_for():
    got = []
    with pytest.raises(
        BatchTimeoutError, match=r"no training batch for 0.2 s \(train.batch_timeout_s\): 0 of 2 CPUs"
    ):
        for batch in batches_within(_slow([0, 30]), 0.2, lambda: "0 of 2 CPUs free"):
            got.append(batch)
    assert got == [0]
    assert issubclass(BatchTimeoutError, UserError)  # not retried by Ray Train or the workflow


def test_time_spent_on_a_batch_is_not_waiting_for_one():
    seen = []
    for batch in batches_within(_slow([0, 0, 0]), 0.2, lambda: ""):
        time.sleep(0.4)  # a long training step: the next batch is ready, nothing waits
        seen.append(batch)
    assert seen == [0, 1, 2]


def test_the_iterators_error_reaches_the_loop():
    def broken():
        yield 1
        raise OSError("decode task lost")

    with pytest.raises(OSError, match="decode task lost"):
        list(batches_within(broken(), 5.0, lambda: ""))
