"""Scoring inside DDP when ranks hold different numbers of evaluation batches (issue 13: a 1-video val split over
2 workers hung training after its first epoch).

Two real processes in a gloo process group, each with the debug STPANet wrapped in DistributedDataParallel as
``ray.train.torch.prepare_model`` wraps it: rank 0 scores one batch, rank 1 none, then both gather. Scoring through
the DDP wrapper would broadcast BatchNorm buffers from rank 0 in a collective rank 1 never joins.
"""

from __future__ import annotations

import multiprocessing
import os
import socket

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, port: int, results) -> None:
    import torch
    import torch.distributed as dist

    from pipeline import schema
    from pipeline.evaluation.evaluate import gather_predictions, predict_batches
    from stpa_model import STPANet, model_config

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = model_config("debug", num_classes=3, num_segments=3, input_size=32)
    model = torch.nn.parallel.DistributedDataParallel(STPANet(config))
    assert any(True for _ in model.module.buffers())  # BatchNorm buffers: what DDP's forward broadcasts
    batches = []
    if rank == 0:
        frames = np.random.default_rng(0).integers(0, 256, size=(1, 3, 1, 32, 32, 3), dtype=np.uint8)
        batches = [{schema.FRAMES: frames, schema.VIDEO_ID: np.array(["a/b"]), schema.VIEW: np.array([0])}]
    local = predict_batches(model, batches, False, torch.device("cpu"), None)
    gathered = gather_predictions(local)
    results.put((rank, gathered.video_ids.tolist(), gathered.scores.shape))
    # Both ranks leave together: a rank tearing gloo down while its peer still reads from the pair aborts the peer
    # ("terminate called without an active exception", exit -6; seen once in CI).
    dist.barrier()
    dist.destroy_process_group()


def test_ranks_with_different_batch_counts_score_and_gather():
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    ranks = [context.Process(target=_rank, args=(rank, port, results)) for rank in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=180)  # a hang guard, not a speed check: before the fix this never returned
    hung = [process.pid for process in ranks if process.is_alive()]
    for process in ranks:
        if process.is_alive():
            process.kill()
    assert not hung, "scoring inside DDP hung: a rank waited in a collective the other never joined"
    assert all(process.exitcode == 0 for process in ranks), [process.exitcode for process in ranks]
    outcome = sorted(results.get(timeout=10) for _ in ranks)
    assert outcome == [(0, ["a/b"], (1, 3)), (1, ["a/b"], (1, 3))]
