"""What ``workflows/predict.py --videos`` reads (``pipeline.data.video_list``): a folder, a list file, a manifest."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema
from pipeline.data.video_list import FOLDER, LIST_FILE, MANIFEST, list_videos


def _touch(path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


def test_folder_lists_video_files_recursively_by_extension_sorted(tmp_path):
    videos = [
        _touch(tmp_path / "b" / "x.MP4"),
        _touch(tmp_path / "a" / "deep" / "y.avi"),
        _touch(tmp_path / "z.mkv"),
    ]
    _touch(tmp_path / "a" / "notes.txt")
    _touch(tmp_path / "a" / "clip.avi.json")
    listed = list_videos(str(tmp_path))
    assert listed.kind == FOLDER and listed.uris == sorted(videos)
    assert listed.table.column(schema.VIDEO_ID).to_pylist() == listed.uris
    assert listed.table.column(schema.FRAME_INDEX).null_count == 3  # indexed later, by the decode tasks
    assert listed.fingerprint() == list_videos(str(tmp_path)).fingerprint()
    _touch(tmp_path / "c.webm")
    assert listed.fingerprint() != list_videos(str(tmp_path)).fingerprint()  # another video: another list


def test_list_file_keeps_order_resolves_relative_paths_and_names_a_duplicate_line(tmp_path):
    listing = tmp_path / "lists" / "videos.txt"
    listing.parent.mkdir()
    listing.write_text("# my videos\n\nclips/b.mp4\n  /data/a.avi  \ns3://bucket/c.mp4\n")
    listed = list_videos(str(listing))
    assert listed.kind == LIST_FILE
    assert listed.uris == [str(tmp_path / "lists" / "clips" / "b.mp4"), "/data/a.avi", "s3://bucket/c.mp4"]
    listing.write_text("a.mp4\n/x/b.mp4\n\n./a.mp4\n")
    with pytest.raises(ValueError, match=r"videos.txt:4: ./a.mp4 is listed twice \(first on line 1\)"):
        list_videos(str(listing))
    listing.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="videos.txt: the list file names no video"):
        list_videos(str(listing))


def test_manifest_keeps_its_rows_and_frame_indices(tmp_path):
    from pipeline.data.prepare import prepare_manifest
    from pipeline.data.synth import synthesize

    summary = synthesize("ucf101", str(tmp_path / "data"), num_classes=3, videos_per_class=2, num_frames=8)
    report = prepare_manifest(
        "ucf101",
        summary.videos_uri,
        summary.annotations_uri,
        str(tmp_path / "m"),
        use_ray=False,
        val_fraction=0,
    )
    manifest = report.manifest_uris["test"]
    listed = list_videos(manifest)
    table = pq.read_table(manifest)
    assert listed.kind == MANIFEST
    assert listed.uris == table.column(schema.VIDEO_URI).to_pylist()
    assert listed.table.column(schema.FRAME_INDEX).to_pylist() == table.column(schema.FRAME_INDEX).to_pylist()
    assert listed.table.column(schema.FRAME_INDEX).null_count == 0

    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"video_uri": ["/a.mp4"]}), plain)
    with pytest.raises(ValueError, match="plain.parquet: not an stpa manifest"):
        list_videos(str(plain))


def test_nothing_to_list_is_an_error_naming_the_source(tmp_path):
    with pytest.raises(ValueError, match="no such file, folder or bucket prefix"):
        list_videos(str(tmp_path / "missing"))
    _touch(tmp_path / "only" / "readme.md")
    with pytest.raises(ValueError, match=r"only: no video files \(.avi, .mp4"):
        list_videos(str(tmp_path / "only"))
