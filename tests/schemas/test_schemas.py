"""The Spark StructType and its pyarrow twin must describe the same table."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest
from pyspark.sql.pandas.types import to_arrow_schema

from schemas import (
    DUPLICATES_ARROW,
    IMAGES_ARROW,
    REJECTS_ARROW,
    SCHEMA_VERSION,
    Manifest,
    RejectReason,
    duplicates_spark,
    images_spark,
    rejects_spark,
)


@pytest.mark.parametrize(
    ("arrow_schema", "spark_schema"),
    [(IMAGES_ARROW, images_spark), (REJECTS_ARROW, rejects_spark), (DUPLICATES_ARROW, duplicates_spark)],
)
def test_spark_and_arrow_twins_agree(arrow_schema: pa.Schema, spark_schema):
    converted = to_arrow_schema(spark_schema())
    assert converted.names == arrow_schema.names
    for ours, theirs in zip(arrow_schema, converted):
        assert (ours.name, ours.type, ours.nullable) == (theirs.name, theirs.type, theirs.nullable)
    assert arrow_schema.metadata[b"imagegen.schema_version"] == str(SCHEMA_VERSION).encode()


def test_reject_vocabulary_is_the_documented_one():
    assert {r.value for r in RejectReason} >= {
        "empty_file", "not_an_image", "truncated", "decode_error", "too_small",
        "too_large", "bad_aspect", "blank", "unsupported_mode",
    }


def _manifest(**overrides):
    fields = dict(
        schema_version=SCHEMA_VERSION, run_id="r1", resolution=32, channels=3, pixel_encoding="raw",
        classes=["cat", "dog"], counts={"inputs": 3, "written": 2, "rejected": {"blank": 1}}, label_counts={"cat": 1, "dog": 1},
        pixel_mean=[0.5] * 3, pixel_std=[0.2] * 3, config={}, input_fingerprint="abc", timings={}, versions={},
        files={"images": [{"path": "images/run_id=r1/part-0.parquet", "rows": 2}], "rejects": [], "duplicates": []},
    )
    fields.update(overrides)
    return Manifest(**fields)


def test_manifest_round_trips_and_rejects_other_versions(tmp_path):
    m = _manifest()
    (tmp_path / "manifest.json").write_text(m.to_json())
    back = Manifest.read(str(tmp_path))
    assert back == m
    assert back.class_to_index == {"cat": 0, "dog": 1}
    assert back.manifest_id == m.manifest_id and back.manifest_id != _manifest(run_id="r2").manifest_id
    (tmp_path / "manifest.json").write_text(_manifest(schema_version=SCHEMA_VERSION + 1).to_json())
    with pytest.raises(ValueError, match="schema_version"):
        Manifest.read(str(tmp_path))


def test_manifest_without_a_file_list_is_refused(tmp_path):
    d = json.loads(_manifest().to_json())
    del d["files"]
    with pytest.raises(ValueError, match=r"missing fields \['files'\]"):
        Manifest.from_dict(d)
    assert _manifest().data_files("images") == [("images/run_id=r1/part-0.parquet", 2)] and _manifest().rows("images") == 2


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete imagegen dataset"):
        Manifest.read(str(tmp_path))
