"""Inputs that change under the job: files deleted or replaced after listing, files above the size limit,
and a corrupt Parquet input. Real Spark, real files."""
from __future__ import annotations

import functools
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql.pandas.types import from_arrow_schema

from jobs.preprocess import main as preprocess_main
from pipelines.config import PreprocessConfig
from pipelines.decode import STAGED_ARROW, decode_partition
from pipelines.sources import UnreadableInputError, classify, load_sources
from tests.pipelines.imagefactory import encode, photo_like


def _jpeg(seed: int) -> bytes:
    return encode(photo_like(40, 40, seed=seed), "JPEG")


def _decode(df, cfg):
    fn = functools.partial(decode_partition, cfg=cfg, run_id="r", labels=None)
    return {r["source_uri"]: r for r in df.mapInArrow(fn, from_arrow_schema(STAGED_ARROW)).collect()}


@pytest.mark.parametrize("in_worker", [True, False])
def test_a_file_deleted_or_replaced_after_listing_is_a_read_error_reject(spark, tmp_path, in_worker):
    root = tmp_path / "in"
    root.mkdir()
    for name in ("keep.jpg", "gone.jpg", "now-a-dir.jpg"):
        (root / name).write_bytes(_jpeg(len(name)))
    cfg = PreprocessConfig(resolution=32, min_size=16, read_local_in_worker=in_worker)
    loaded = load_sources(spark, [classify(spark, str(root))], cfg, partitions=2)
    assert loaded.input_count == 3  # listed (and persisted) now; the bytes are read later
    os.remove(root / "gone.jpg")
    os.remove(root / "now-a-dir.jpg")
    (root / "now-a-dir.jpg").mkdir()
    rows = _decode(loaded.df, cfg)
    base = f"file:{root}"
    assert set(rows) == {f"{base}/keep.jpg", f"{base}/gone.jpg", f"{base}/now-a-dir.jpg"}
    assert rows[f"{base}/keep.jpg"]["kind"] == "image"
    gone, moved = rows[f"{base}/gone.jpg"], rows[f"{base}/now-a-dir.jpg"]
    assert (gone["kind"], gone["reason"]) == ("reject", "read_error") and "FileNotFoundError" in gone["detail"]
    assert (moved["kind"], moved["reason"]) == ("reject", "read_error") and "IsADirectoryError" in moved["detail"]


def test_a_local_file_above_max_file_bytes_is_too_large_without_being_read(spark, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "big.jpg").write_bytes(_jpeg(1))
    (root / "small.jpg").write_bytes(_jpeg(2))
    big = (root / "big.jpg").stat().st_size
    cfg = PreprocessConfig(resolution=32, min_size=16, max_file_bytes=big - 1)
    loaded = load_sources(spark, [classify(spark, str(root))], cfg, partitions=2)
    (root / "big.jpg").chmod(0)  # would not stop root from reading; the detail below shows it was not read
    rows = _decode(loaded.df, cfg)
    row = rows[f"file:{root}/big.jpg"]
    assert (row["reason"], row["detail"]) == ("too_large", f"file is {big} bytes, limit max_file_bytes={big - 1}; it is not read")
    assert rows[f"file:{root}/small.jpg"]["kind"] == "image"


@pytest.mark.parametrize("broken", ["part-0.parquet", "part-1.parquet"])  # the file Spark infers the schema from, or another
def test_a_corrupt_parquet_input_is_one_line_naming_the_file(spark, tmp_path, broken):
    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    for name in ("part-0.parquet", "part-1.parquet"):
        pq.write_table(pa.table({"image": [_jpeg(3)]}), pq_dir / name)
    (pq_dir / broken).write_bytes(b"PAR1" + b"\0garbage" * 8)
    with pytest.raises(UnreadableInputError, match=rf"^file:{pq_dir}/{broken}: not a readable Parquet file \([A-Z_.]+, input {pq_dir}\); repair or remove it$"):
        load_sources(spark, [classify(spark, str(pq_dir))], PreprocessConfig(), partitions=2)


def test_the_cli_prints_a_corrupt_parquet_input_as_one_line(spark, tmp_path, capsys):
    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    (pq_dir / "bad.parquet").write_bytes(b"not parquet at all")
    rc = preprocess_main([str(pq_dir), "--output", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imagegen preprocess:")]
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"imagegen preprocess: file:{pq_dir}/bad.parquet: not a readable Parquet file (")
    assert not (tmp_path / "out" / "manifest.json").exists()
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
