"""Ingest of every input kind into one DataFrame (real Spark, real files)."""
from __future__ import annotations

import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import PreprocessConfig
from pipelines.decode import read_local
from pipelines.sources import InputKind, classify, expand_tar, list_tar, load_sources
from tests.pipelines.imagefactory import encode, photo_like, write_tar

CFG = PreprocessConfig()


def _jpeg(seed: int) -> bytes:
    return encode(photo_like(40, 40, seed=seed), "JPEG")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    files = root / "files"
    (files / "cat").mkdir(parents=True)
    (files / "dog").mkdir()
    (files / "cat" / "a.jpg").write_bytes(_jpeg(1))
    (files / "dog" / "b.jpg").write_bytes(_jpeg(2))
    (files / "dog" / "empty.jpg").write_bytes(b"")  # Spark's scan drops 0-byte files: they must come back
    (files / "c.jpg").write_bytes(_jpeg(3))
    shards = root / "shards"
    write_tar(shards / "shard-000.tar", [("000.jpg", _jpeg(4)), ("000.cls", b"3"), ("cat/001.jpg", _jpeg(5))])
    write_tar(shards / "shard-001.tar", [("002.jpg", _jpeg(6)), ("002.json", b"{}")])
    (root / "list.txt").write_text(f"# comment\n{files / 'cat' / 'a.jpg'}\n\nfiles/c.jpg\n{root / 'missing.jpg'}\n{files / 'c.jpg'}\n")
    pq_dir = root / "pq"
    pq_dir.mkdir()
    pq.write_table(pa.table({"image": [_jpeg(7), _jpeg(8)], "label": ["x", "y"]}), pq_dir / "part-0.parquet")
    hf = root / "hf.parquet"
    pq.write_table(pa.table({"img": [{"bytes": _jpeg(9), "path": "cat/9.jpg"}]}), hf)
    return root


def _rows(spark, specs):
    df = load_sources(spark, specs, CFG, partitions=2).df
    assert df.columns == ["source_uri", "rel_path", "content", "length", "source_error", "read_uri"]
    return {r["source_uri"]: r for r in df.collect()}


def _bytes(row) -> bytes | None:
    """The row's bytes: carried in content, or (local files) read by the decode stage from read_uri."""
    return read_local(row["read_uri"]) if row["content"] is None and row["read_uri"] else row["content"]


def test_classify(spark, tree):
    assert classify(spark, str(tree / "files")).kind == InputKind.FILES
    assert classify(spark, str(tree / "files" / "*" / "*.jpg")).kind == InputKind.FILES
    assert classify(spark, str(tree / "list.txt")).kind == InputKind.URI_LIST
    shards = classify(spark, str(tree / "shards"))
    assert shards.kind == InputKind.TAR and len(shards.paths) == 2
    assert classify(spark, str(tree / "shards" / "shard-000.tar")).kind == InputKind.TAR
    assert classify(spark, str(tree / "pq")).kind == InputKind.PARQUET
    assert classify(spark, str(tree / "hf.parquet")).kind == InputKind.PARQUET
    with pytest.raises(FileNotFoundError, match="does not exist"):
        classify(spark, str(tree / "nope"))


def test_directory_recursive_with_empty_file_and_rel_paths(spark, tree):
    rows = _rows(spark, [classify(spark, str(tree / "files"))])
    base = f"file:{tree}/files"
    assert set(rows) == {f"{base}/cat/a.jpg", f"{base}/dog/b.jpg", f"{base}/dog/empty.jpg", f"{base}/c.jpg"}
    assert rows[f"{base}/cat/a.jpg"]["rel_path"] == "cat/a.jpg"
    a = rows[f"{base}/cat/a.jpg"]
    assert a["content"] is None and a["read_uri"] == f"{base}/cat/a.jpg"  # local: the decode stage reads the bytes
    assert _bytes(a) == (tree / "files" / "cat" / "a.jpg").read_bytes()
    assert rows[f"{base}/dog/empty.jpg"]["length"] == 0 and _bytes(rows[f"{base}/dog/empty.jpg"]) == b""


def test_binary_file_content_when_not_reading_in_worker(spark, tree):
    spec = classify(spark, str(tree / "files"))
    df = load_sources(spark, [spec], PreprocessConfig(read_local_in_worker=False), partitions=2).df
    rows = {r["source_uri"]: r for r in df.collect()}
    assert len(rows) == 4 and all(r["read_uri"] is None for r in rows.values())
    assert rows[f"file:{tree}/files/cat/a.jpg"]["content"] == (tree / "files" / "cat" / "a.jpg").read_bytes()
    assert rows[f"file:{tree}/files/dog/empty.jpg"]["content"] == b""


def test_glob_is_relative_to_its_fixed_prefix(spark, tree):
    rows = _rows(spark, [classify(spark, str(tree / "files" / "*" / "*.jpg"))])
    assert sorted(r["rel_path"] for r in rows.values()) == ["cat/a.jpg", "dog/b.jpg", "dog/empty.jpg"]


def test_uri_list_reads_listed_files_and_reports_missing(spark, tree):
    rows = _rows(spark, [classify(spark, str(tree / "list.txt"))])
    base = f"file:{tree}"
    assert set(rows) == {f"{base}/files/cat/a.jpg", f"{base}/files/c.jpg", f"{base}/missing.jpg"}  # duplicate line read once
    assert rows[f"{base}/missing.jpg"]["content"] is None and "not found" in rows[f"{base}/missing.jpg"]["source_error"]
    assert _bytes(rows[f"{base}/files/c.jpg"]) == (tree / "files" / "c.jpg").read_bytes()


def test_tar_shards_expand_to_members_and_skip_sidecars(spark, tree):
    rows = _rows(spark, [classify(spark, str(tree / "shards"))])
    s0, s1 = f"file:{tree}/shards/shard-000.tar", f"file:{tree}/shards/shard-001.tar"
    assert set(rows) == {f"{s0}#000.jpg", f"{s0}#cat/001.jpg", f"{s1}#002.jpg"}
    assert rows[f"{s0}#cat/001.jpg"]["rel_path"] == "cat/001.jpg"
    with tarfile.open(tree / "shards" / "shard-000.tar") as t:
        assert rows[f"{s0}#cat/001.jpg"]["content"] == t.extractfile("cat/001.jpg").read()
    assert list_tar(s0) == (2, 1) and list_tar(s1) == (1, 1)  # (inputs, sidecars)


def test_independent_input_count_over_all_kinds(spark, tree):
    specs = [classify(spark, str(tree / p)) for p in ("files", "shards", "list.txt", "pq", "hf.parquet")]
    # 4 files (one empty) + 3 tar images + 3 listed (one missing) + 2 + 1 Parquet rows; 2 tar sidecars
    loaded = load_sources(spark, specs, CFG, partitions=2)
    assert (loaded.input_count, loaded.tar_sidecars) == (13, 2)
    assert loaded.df.count() == 13


def test_broken_tar_becomes_one_read_error_row(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    rows = list(expand_tar(f"file:{bad}"))
    assert len(rows) == 1 and rows[0][0] == f"file:{bad}" and rows[0][2] is None and "unreadable" in rows[0][4]


def test_parquet_binary_column_and_hf_struct(spark, tree):
    rows = _rows(spark, [classify(spark, str(tree / "pq")), classify(spark, str(tree / "hf.parquet"))])
    uris = sorted(rows)
    assert any(u.endswith("part-0.parquet#row=0") for u in uris) and any(u.endswith("part-0.parquet#row=1") for u in uris)
    by_row = {u.rsplit("#", 1)[1] + ("hf" if "hf.parquet" in u else ""): r for u, r in rows.items()}
    assert by_row["row=1"]["content"] == _jpeg(8)
    assert by_row["row=0hf"]["content"] == _jpeg(9) and by_row["row=0hf"]["rel_path"] == "cat/9.jpg"
    with pytest.raises(ValueError, match="image_column 'pixels' not found"):
        load_sources(spark, [classify(spark, str(tree / "pq"))], PreprocessConfig(image_column="pixels"), 2)


@pytest.mark.parametrize("cut", [0.3, 0.55])
def test_a_shard_cut_short_is_counted_as_it_is_expanded(tmp_path, cut):
    """The listing count and the expansion agree on a truncated shard, so conservation holds and the
    break becomes a read_error row instead of failing the job."""
    whole = write_tar(tmp_path / "whole.tar", [(f"{i:03d}.jpg", _jpeg(10 + i)) for i in range(4)])
    data = whole.read_bytes()
    cut_shard = tmp_path / "cut.tar"
    cut_shard.write_bytes(data[: int(len(data) * cut)])
    rows = list(expand_tar(f"file:{cut_shard}"))
    assert list_tar(f"file:{cut_shard}") == (len(rows), 0)
    assert rows[-1][0] == f"file:{cut_shard}" and "unreadable" in rows[-1][4]  # the break, named
    assert all(r[4] is None for r in rows[:-1]) and len(rows) <= 4
