"""The pure parts of batch prediction (``pipeline.evaluation.predict``): a shard's rows, writing a shard, and what
an output folder holds. The prediction itself runs in ``tests/workflows/test_predict_workflow.py``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.evaluation.predict import (
    CLAIM_FILE,
    META_CLASS_NAMES,
    META_MODEL_URI,
    ModelRef,
    claim_output,
    prediction_table,
    shard_uri,
    write_shard,
)

MODEL = ModelRef("models:/stpa-ucf101/3", "stpa-ucf101", "3")
CLASSES = ["a", "b", "c"]


def test_rows_hold_top_k_best_first_the_score_vector_and_the_error():
    scores = np.array([[0.2, 0.5, 0.3], [np.nan, np.nan, np.nan], [0.4, 0.2, 0.4]])
    table = prediction_table(["v0", "v1", "v2"], scores, ["", "cannot read the file", ""], CLASSES, 2, MODEL)
    rows = table.to_pylist()
    assert rows[0]["top_classes"] == ["b", "c"] and rows[0]["top_scores"] == [0.5, 0.3]
    assert rows[0]["scores"] == [0.2, 0.5, 0.3] and rows[0]["error"] == ""
    assert rows[1] == {
        "video": "v1",
        "error": "cannot read the file",
        "top_classes": [],
        "top_scores": [],
        "scores": None,
        "model_name": "stpa-ucf101",
        "model_version": "3",
    }
    assert rows[2]["top_classes"] == ["a", "c"]  # a tie: the lower class index first
    assert json.loads(table.schema.metadata[META_CLASS_NAMES]) == CLASSES
    assert table.schema.metadata[META_MODEL_URI] == b"models:/stpa-ucf101/3"
    wide = prediction_table(["v0"], scores[:1], [""], CLASSES, 10, MODEL)
    assert wide.to_pylist()[0]["top_classes"] == ["b", "c", "a"]  # top-k is at most the class count


def test_a_shard_is_written_whole_under_its_name(tmp_path):
    table = prediction_table(["v0"], np.array([[0.1, 0.2, 0.7]]), [""], CLASSES, 1, MODEL)
    uri = shard_uri(str(tmp_path), 12)
    write_shard(uri, table)
    assert uri.endswith("part-00012.parquet") and pq.read_table(uri).equals(table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00012.parquet"]  # no temporary file left


def test_an_output_folder_refuses_predictions_of_something_else(tmp_path):
    identity = {"model_uri": "models:/stpa-ucf101/3", "videos_sha256": "ab", "shard_size": 256, "top_k": 5}
    claim_output(str(tmp_path / "check"), identity, write=False)
    assert not (tmp_path / "check").exists()
    claim_output(str(tmp_path), identity)
    claim_output(str(tmp_path), dict(identity))  # the same prediction again: a resume
    other = {**identity, "model_uri": "models:/stpa-ucf101/4", "top_k": 3}
    with pytest.raises(ValueError, match=r"model_uri: 'models:/stpa-ucf101/3' there, 'models:/stpa-ucf101/4' now; "
                       r"top_k: 5 there, 3 now"):  # fmt: skip
        claim_output(str(tmp_path), other)
    assert json.loads((tmp_path / CLAIM_FILE).read_text()) == identity
