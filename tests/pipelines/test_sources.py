"""Ingest of every input kind into one DataFrame (real Spark, real files)."""
from __future__ import annotations

import os
import shutil
import tarfile
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import PreprocessConfig
from pipelines.decode import read_local
from pipelines.sources import InputKind, classify, load_sources
from pipelines.sources.tar import expand_tar, list_tar
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
    # 4 files (one empty) + 3 tar images + 1 listed (missing; its a.jpg and c.jpg are files/'s, so repeats: 13/14)
    # + 2 + 1 Parquet rows; 2 tar sidecars
    loaded = load_sources(spark, specs, CFG, partitions=2)
    assert (loaded.input_count, loaded.tar_sidecars, loaded.repeated) == (11, 2, 2)
    assert loaded.df.count() == 11


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


# ----------------------------------------------------------------------------- local listing: any legal name
def _nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def _nfd(s: str) -> str:
    return unicodedata.normalize("NFD", s)


# Every one a legal Linux file name; together in one folder. Each must be ONE input, spelled file:<path>.
ODD_NAMES = [
    "a b.png", "  two  spaces .png", _nfc("résumé.png"), _nfd("résumé.png"), "日本語.png", "100%.png",
    "a%20b.png", "a%2520b.png", "#hash#.png", "what?.png", "[x].png", "a[1].png", "]b[.png", "star*.png",
    "new\nline.png", "-leading.png", "--.png", "tab\there.png", "quote'\"s.png", "back\\slash.png",
    "colon:name.png", "semi;amp&.png", "a{b,c}.png", "~tilde.png", "+plus=eq.png",
    "l" * 246 + ".png", "é" * 123 + ".png",  # 250 bytes each
]
EMPTY_NAMES = ["empty.png", "empty %20 file.png", _nfd("vidé.png")]


def test_odd_names_are_legal_and_distinct():
    assert len(set(ODD_NAMES + EMPTY_NAMES)) == len(ODD_NAMES) + len(EMPTY_NAMES)
    assert _nfc("résumé.png") != _nfd("résumé.png")
    assert max(len(n.encode()) for n in ODD_NAMES) == 250


def _listing(spark, inputs, partitions, cfg=CFG):
    specs = [classify(spark, str(i)) for i in inputs]
    loaded = load_sources(spark, specs, cfg, partitions=partitions)
    rows = loaded.df.collect()
    assert loaded.input_count == len(rows)
    return rows


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd") / "in put #1"
    (root / "sub dir %41").mkdir(parents=True)
    for i, name in enumerate(ODD_NAMES):
        (root / name).write_bytes(_jpeg(20 + i))
        (root / "sub dir %41" / name).write_bytes(_jpeg(20 + i))
    for name in EMPTY_NAMES:
        (root / name).write_bytes(b"")
        (root / "sub dir %41" / name).write_bytes(b"")
    return root


# partitions=1: the driver lists the root and hands "sub dir %41" to a task as a subtree;
# partitions=8: the driver walks the whole (small) tree and tasks list each directory's files.
@pytest.mark.parametrize("partitions", [1, 8])
def test_odd_names_and_empty_files_are_listed_once_with_their_real_path(spark, odd, partitions):
    rows = _listing(spark, [odd], partitions)
    on_disk = sorted(f"file:{p}" for p in odd.rglob("*") if p.is_file())
    uris = sorted(r["source_uri"] for r in rows)
    assert uris == on_disk and len(on_disk) == 2 * (len(ODD_NAMES) + len(EMPTY_NAMES))
    by_uri = {r["source_uri"]: r for r in rows}
    for name in ODD_NAMES:
        row = by_uri[f"file:{odd}/sub dir %41/{name}"]
        assert row["rel_path"] == f"sub dir %41/{name}" and row["read_uri"] == row["source_uri"]
        assert row["source_error"] is None and row["length"] == len(_jpeg(20 + ODD_NAMES.index(name)))
        assert read_local(row["read_uri"]) == (odd / "sub dir %41" / name).read_bytes()
    for name in EMPTY_NAMES:
        row = by_uri[f"file:{odd}/{name}"]
        assert row["length"] == 0 and read_local(row["read_uri"]) == b"" and row["rel_path"] == name


def test_odd_names_through_binary_file_are_not_counted_twice(spark, odd):
    """The binaryFile path (kept for hdfs:, s3a:, ...) compares inputFiles() and its path column in one
    spelling, so the zero-length back-fill adds only the empty files. Exercised here on a local folder."""
    from pipelines.sources.hadoop import _binary_files, hadoop_spelling

    assert hadoop_spelling("file:///x/a%20b%2520c%23.png") == "file:/x/a b%20c#.png"
    assert hadoop_spelling("s3a://bucket/d/%E6%97%A5 x.png") == "s3a://bucket/d/日 x.png"
    df, n = _binary_files(spark, [f"file:{odd}"], True)
    paths = sorted(r["path"] for r in df.select("path").collect())
    assert paths == sorted(f"file:{p}" for p in odd.rglob("*") if p.is_file())
    assert n == len(paths)


def test_hidden_names_are_skipped_at_every_level(spark, tmp_path):
    root = tmp_path / "in"
    for rel in ["a.jpg", ".hidden.jpg", "_private.jpg", "x._COPYING_", "k=_v/b.jpg", "_k=v/c.jpg",
                "sub/.DS_Store", "sub/_SUCCESS", "sub/d.jpg", ".git/e.jpg", "_tmp/f.jpg", "sub/.cache/g.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_jpeg(1))
    for partitions in (1, 8):
        rel = sorted(r["rel_path"] for r in _listing(spark, [root], partitions))
        assert rel == ["_k=v/c.jpg", "a.jpg", "k=_v/b.jpg", "sub/d.jpg"]  # Spark's rule, "=" exception included
    # an input named explicitly is taken as named, even when hidden
    (row,) = _listing(spark, [root / "_private.jpg"], 2)
    assert row["source_uri"] == f"file:{root}/_private.jpg" and row["rel_path"] == "_private.jpg"


@pytest.fixture
def links(tmp_path):
    """root/real/{1,2}.jpg, root/real/deeper/3.jpg, loops up -> .. and abs -> ROOT, a file link, and two links
    to one directory outside the root (its files are reachable only through them)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real" / "deeper").mkdir(parents=True)
    outside.mkdir()
    for i, rel in enumerate(["real/1.jpg", "real/2.jpg", "real/deeper/3.jpg"]):
        (root / rel).write_bytes(_jpeg(i))
    (outside / "o.jpg").write_bytes(_jpeg(9))
    (root / "real" / "deeper" / "up").symlink_to("..")
    (root / "real" / "abs").symlink_to(root)
    (root / "real" / "again.jpg").symlink_to(root / "real" / "1.jpg")
    (root / "ext-b").symlink_to(outside)
    (root / "ext-a").symlink_to(outside)
    (root / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    return root


@pytest.mark.parametrize("partitions", [1, 2, 8])
def test_symlink_loops_end_and_each_file_is_one_input(spark, links, partitions):
    rows = _listing(spark, [links], partitions)
    by_uri = {r["source_uri"]: r for r in rows}
    base = f"file:{links}"
    assert sorted(by_uri) == sorted([f"{base}/real/1.jpg", f"{base}/real/2.jpg", f"{base}/real/deeper/3.jpg",
                                     f"{base}/ext-a/o.jpg",  # the first of ext-a/o.jpg, ext-b/o.jpg
                                     f"{base}/dangling.jpg"])
    assert by_uri[f"{base}/ext-a/o.jpg"]["rel_path"] == "ext-a/o.jpg"
    assert by_uri[f"{base}/ext-a/o.jpg"]["read_uri"] == f"{base}/ext-a/o.jpg"
    dangling = by_uri[f"{base}/dangling.jpg"]
    assert dangling["read_uri"] is None and "cannot stat" in dangling["source_error"]


def test_a_directory_that_cannot_be_listed_is_one_read_error_row(spark, tmp_path):
    """As root, chmod 000 does not stop os.scandir, so the unreadable directory here is one whose path is
    longer than PATH_MAX (4096 bytes): os.stat/os.scandir fail on it with ENAMETOOLONG, the same OSError path
    a PermissionError takes. Its files cannot be inputs; the directory is one read_error row; the rest is listed."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "ok.jpg").write_bytes(_jpeg(1))
    fd = os.open(root, os.O_RDONLY)
    path = str(root)
    names = []
    try:
        while len(path) <= 4200:
            name = "d" * 200
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            path += "/" + name
            names.append(name)
        deep = os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
        os.write(deep, _jpeg(2))
        os.close(deep)
    finally:
        os.close(fd)
    for partitions in (1, 8):
        rows = _listing(spark, [root], partitions)
        errors = [r for r in rows if r["source_error"] is not None]
        assert len(errors) == 1 and len(rows) == 2
        assert f"file:{root}/ok.jpg" in {r["source_uri"] for r in rows}
        (err,) = errors
        assert err["content"] is None and err["read_uri"] is None and "too long" in err["source_error"]
        assert len(err["source_uri"]) > 4096 and err["source_uri"].startswith(f"file:{root}/{names[0]}/")
        assert len(err["source_uri"][len("file:"):].rsplit("/", 1)[0]) < 4096  # the first too-long directory
    shutil.rmtree(root, ignore_errors=True)


def test_uri_list_entries_are_literal_paths(spark, tmp_path):
    (tmp_path / "a[1].png").write_bytes(_jpeg(1))
    (tmp_path / "a1.png").write_bytes(_jpeg(2))  # what the glob a[1].png would match
    (tmp_path / "b*.png").write_bytes(_jpeg(3))
    (tmp_path / "bb.png").write_bytes(_jpeg(4))
    (tmp_path / "list.txt").write_text("a[1].png\nb*.png\nc?.png\n")
    rows = {r["source_uri"]: r for r in _listing(spark, [tmp_path / "list.txt"], 2)}
    assert set(rows) == {f"file:{tmp_path}/a[1].png", f"file:{tmp_path}/b*.png", f"file:{tmp_path}/c?.png"}
    assert read_local(rows[f"file:{tmp_path}/a[1].png"]["read_uri"]) == _jpeg(1)
    assert rows[f"file:{tmp_path}/a[1].png"]["rel_path"] == f"file:{tmp_path}/a[1].png"
    assert "not found" in rows[f"file:{tmp_path}/c?.png"]["source_error"]


def test_local_globs_and_inputs_that_exist_as_written(spark, tree, tmp_path):
    files = tree / "files"
    rows = _listing(spark, [f"{files}/{{cat,dog}}/*.jpg"], 2)
    assert sorted(r["rel_path"] for r in rows) == ["cat/a.jpg", "dog/b.jpg", "dog/empty.jpg"]
    rows = _listing(spark, [f"{files}/*"], 2)  # a matching directory is walked, a matching file listed
    assert sorted(r["rel_path"] for r in rows) == ["c.jpg", "cat/a.jpg", "dog/b.jpg", "dog/empty.jpg"]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        _listing(spark, [f"{files}/*.png"], 2)
    folder = tmp_path / "photos [2020]"  # as a glob it would match "photos 2" or "photos 0"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(_jpeg(1))
    spec = classify(spark, str(folder))
    assert spec.root == f"file:{folder}"
    (row,) = _listing(spark, [folder], 2)
    assert row["source_uri"] == f"file:{folder}/x.jpg" and row["rel_path"] == "x.jpg"


def test_odd_names_with_bytes_carried_in_content(spark, odd):
    rows = _listing(spark, [odd], 1, PreprocessConfig(read_local_in_worker=False))
    assert len(rows) == 2 * (len(ODD_NAMES) + len(EMPTY_NAMES)) and all(r["read_uri"] is None for r in rows)
    by_uri = {r["source_uri"]: r for r in rows}
    assert by_uri[f"file:{odd}/new\nline.png"]["content"] == (odd / "new\nline.png").read_bytes()
    assert by_uri[f"file:{odd}/empty.png"]["content"] == b""
