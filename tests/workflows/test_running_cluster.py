"""Workflows beside a Ray cluster that ``ray start --head --num-cpus 2`` runs on the same machine (issue 13, 3 and 4).

One head with 2 logical CPUs (``cluster/local.sh``) for the module. ``ray start`` records its address in
``<Ray temp dir>/ray_current_cluster``, which plain ``ray.init()`` joins; the test points ``RAY_TMPDIR`` at a private
folder holding that record, so the situation is the one a user has, without touching the machine's own Ray files.

- No ``RAY_ADDRESS``: a local run starts a private local Ray and says so (plain ``ray.init(num_cpus=...)`` died with
  "When connecting to an existing cluster, num_cpus and num_gpus must not be provided").
- ``RAY_ADDRESS`` set: the run joins the cluster.
- Joined, the smoke preset's 2 training workers would hold both CPUs and starve the decode tasks: the workflow
  refuses to start, in one line.
- Made to start anyway (``--autoscaling``), the first epoch gets no batch: the train step fails after
  ``train.batch_timeout_s`` naming the pending demands, once (neither Ray Train nor the workflow retries it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.ray_cluster import LocalRayCluster

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROBE = (
    "from pipeline.runtime import init_ray; import ray; init_ray(num_train_workers=1); "
    "print('GCS', ray.get_runtime_context().gcs_address); ray.shutdown()"
)


@pytest.fixture(scope="module")
def head():
    with LocalRayCluster(num_workers=0, head_cpus=2) as cluster:
        # What `ray start` leaves in the default Ray temp dir, in a private one (short path: Ray's sockets).
        ray_tmpdir = Path(tempfile.mkdtemp(prefix="stpa-rt-", dir="/tmp"))
        (ray_tmpdir / "ray").mkdir()
        shutil.copy(cluster.temp_dir / "ray_current_cluster", ray_tmpdir / "ray" / "ray_current_cluster")
        yield cluster, ray_tmpdir
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


def _local_env(ray_tmpdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    return {**env, "RAY_TMPDIR": str(ray_tmpdir), "PYTHONPATH": str(REPO)}


def test_local_run_starts_a_private_ray_and_says_so(head):
    cluster, ray_tmpdir = head
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=_local_env(ray_tmpdir), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Ray records the head by its node IP: compare ports
    assert "note: a Ray cluster is running on this machine (" in done.stdout
    assert f":{cluster.port}) but RAY_ADDRESS is not set: this run starts a private local Ray" in done.stdout
    gcs = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("GCS "))
    assert not gcs.endswith(f":{cluster.port}")


def test_ray_address_joins_the_cluster(head):
    cluster, ray_tmpdir = head
    env = cluster.env({**_local_env(ray_tmpdir)})
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    gcs = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("GCS "))
    assert gcs.endswith(f":{cluster.port}") and "is running on this machine" not in done.stdout


@pytest.fixture(scope="module")
def own_videos(tmp_path_factory) -> Path:
    from pipeline.data.synth import synthesize

    root = tmp_path_factory.mktemp("videos")
    synthesize("ucf101", str(root), num_classes=3, videos_per_class=4, width=64, height=48, num_frames=16)
    return root / "UCF-101"


def _workflow(head, own_videos: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cluster, ray_tmpdir = head
    command = [sys.executable, str(REPO / "workflows" / "train_folder.py"), "--data-root", str(own_videos)]
    command += ["--storage", str(tmp_path / "runs"), "--epochs", "1", "--no-register", *args]
    env = cluster.env(
        {**_local_env(ray_tmpdir), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    )
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_joined_cluster_without_a_cpu_for_decoding_is_refused(head, own_videos, tmp_path):
    done = _workflow(head, own_videos, tmp_path)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert [line for line in done.stderr.splitlines() if line.startswith("error: ")] == [
        "error: the cluster has 2 CPUs and the 2 training workers hold 2 of them for the whole run: none is left "
        "for the Ray Data tasks that decode their clips, so training would wait for batches for ever. Lower "
        "--num-workers, or give the cluster more CPUs (ray start --num-cpus N, another node; an autoscaling "
        "cluster: --autoscaling)"
    ]
    assert "submit prepare" not in done.stdout  # refused before any step ran


def test_training_that_gets_no_batch_fails_naming_the_demands(head, own_videos, tmp_path):
    done = _workflow(head, own_videos, tmp_path, "--autoscaling", "--set", "train.batch_timeout_s=5")
    log = done.stdout + done.stderr
    assert done.returncode == 2, log[-5000:]
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith(
        "error: step train: no training batch for 5 s (train.batch_timeout_s): 0 of 2 CPUs free"
    )
    assert "pending demands: " in error and "'CPU': 1.0" in error and "no CPU is free" in error, error
    assert log.count("train: started") == 1, log[-5000:]  # the workflow did not retry the step
    print(error)
