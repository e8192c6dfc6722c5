"""``s3://`` end to end against a real S3-compatible server (moto's standalone server on 127.0.0.1), reached
through s3fs configured only by the standard environment variables (``AWS_ENDPOINT_URL`` and credentials), the way a
user points ``stpa prepare`` at MinIO or any S3 endpoint. No client is patched."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import schema, storage
from pipeline.data import synth
from pipeline.data.manifest import read_manifest
from pipeline.data.prepare import dataset_root_paths, prepare_manifest

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

BUCKET = "stpa-test"


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3 server on 127.0.0.1 (free port), with the environment pointing s3fs at it for this test only."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # s3fs caches clients per arguments, not per environment
    try:
        yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def test_prepare_on_s3_end_to_end(s3_endpoint: str, tmp_path: Path) -> None:
    local = tmp_path / "ucf"
    summary = synth.synthesize(
        "ucf101", str(local), num_classes=3, videos_per_class=2, width=64, height=48, num_frames=16
    )
    fs = s3fs.S3FileSystem()  # endpoint and credentials from the environment only
    assert fs.client_kwargs == {} and fs.endpoint_url is None
    fs.mkdir(BUCKET)
    fs.put(str(local), f"{BUCKET}/ucf", recursive=True)
    assert storage.exists(f"s3://{BUCKET}/ucf/ucfTrainTestlist/classInd.txt")

    videos, annotations = dataset_root_paths("ucf101", f"s3://{BUCKET}/ucf")
    # One training video per class: none to spare for a val split.
    report = prepare_manifest(
        "ucf101", videos, annotations, f"s3://{BUCKET}/manifests/ucf101", val_fraction=0
    )
    assert report.num_written == {"train": 3, "test": 3}
    assert report.missing == [] and report.unreadable == []
    assert fs.exists(f"{BUCKET}/manifests/ucf101/report.json")

    table, class_names = read_manifest(f"s3://{BUCKET}/manifests/ucf101/train.parquet")
    assert class_names == list(summary.class_names)
    uris = table[schema.VIDEO_URI].to_pylist()
    assert all(uri.startswith(f"s3://{BUCKET}/ucf/UCF-101/") for uri in uris)
    truth = {v.video_id: v.label for v in summary.videos}
    assert all(truth[r[schema.VIDEO_ID]] == r[schema.LABEL] for r in table.to_pylist())

    video_module = pytest.importorskip("pipeline.video.decode")
    row = table.slice(0, 1).to_pylist()[0]
    index = video_module.index_from_bytes(row[schema.VIDEO_URI], row[schema.FRAME_INDEX])
    frames = video_module.read_frames(row[schema.VIDEO_URI], [0, row[schema.NUM_FRAMES] - 1], index=index)
    assert frames.shape == (2, 48, 64, 3)
    local_path = str(local / "UCF-101" / row[schema.VIDEO_URI].split("/UCF-101/")[1])
    local_frames = video_module.read_frames(
        local_path, [0, row[schema.NUM_FRAMES] - 1], index=video_module.index_video(local_path)
    )
    assert (frames == local_frames).all()  # the same bytes, read from the object store
