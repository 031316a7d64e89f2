"""Tar shards as hostile input: a gzip bomb, links, devices, FIFOs and member paths that climb out.
Real shards written in tmp, the real job (Spark, Parquet) run on them."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.config import LabelMode, PreprocessConfig
from pipelines.preprocess import run_preprocess
from pipelines.sources.tar import expand_tar, list_tar
from schemas.images import RejectReason
from tests.conftest import REPO
from tests.pipelines.imagefactory import encode, photo_like

BOMB_BYTES = 1 << 30  # the member's declared (and real) size: 1 GiB of zeros, about 1 MB gzipped


class _Zeros(io.RawIOBase):
    """n zero bytes, produced as read: the test writes the bomb without ever holding it."""

    def __init__(self, n: int):
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def _jpeg(seed: int) -> bytes:
    return encode(photo_like(40, 40, seed=seed), "JPEG")


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if data else None)


def _write_hostile_shard(path: Path) -> None:
    with tarfile.open(path, "w:gz", compresslevel=9) as tar:
        _add(tar, "cat/", type=tarfile.DIRTYPE)                      # a directory: a container, not an input
        _add(tar, "cat/a.jpg", _jpeg(1))
        bomb = tarfile.TarInfo("cat/bomb.jpg")
        bomb.size = BOMB_BYTES
        tar.addfile(bomb, io.BufferedReader(_Zeros(BOMB_BYTES), 1 << 20))
        _add(tar, "dog/b.jpg", _jpeg(2))                              # after the bomb: the stream goes on
        _add(tar, "dog/link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tar, "dog/hard.jpg", type=tarfile.LNKTYPE, linkname="cat/a.jpg")
        _add(tar, "dog/tty.jpg", type=tarfile.CHRTYPE, devmajor=5, devminor=0)
        _add(tar, "dog/disk.jpg", type=tarfile.BLKTYPE, devmajor=8, devminor=0)
        _add(tar, "dog/pipe.jpg", type=tarfile.FIFOTYPE)
        _add(tar, "../escape.jpg", _jpeg(3))
        _add(tar, "/abs/root.jpg", _jpeg(4))
        _add(tar, "dog/../../up.jpg", _jpeg(5))
        _add(tar, "../meta.json", b"{}")                              # an unsafe sidecar is rejected, not skipped
        _add(tar, "dog/b.json", b"{}")                                # a webdataset sidecar: skipped


def _rows(table: Path) -> list[dict]:
    return [r for f in sorted(table.rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]


# name -> (reason, detail fragment) of every member that must be rejected
REFUSED = {
    "cat/bomb.jpg": (RejectReason.TOO_LARGE, f"{BOMB_BYTES} bytes"),
    "dog/link.jpg": (RejectReason.READ_ERROR, "symbolic link to '/etc/passwd'"),
    "dog/hard.jpg": (RejectReason.READ_ERROR, "hard link to 'cat/a.jpg'"),
    "dog/tty.jpg": (RejectReason.READ_ERROR, "character device"),
    "dog/disk.jpg": (RejectReason.READ_ERROR, "block device"),
    "dog/pipe.jpg": (RejectReason.READ_ERROR, "a FIFO"),
    "../escape.jpg": (RejectReason.UNSAFE_PATH, 'a ".." component'),
    "/abs/root.jpg": (RejectReason.UNSAFE_PATH, "an absolute path"),
    "dog/../../up.jpg": (RejectReason.UNSAFE_PATH, 'a ".." component'),
    "../meta.json": (RejectReason.UNSAFE_PATH, 'a ".." component'),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    (root / "in").mkdir()
    _write_hostile_shard(root / "in" / "shard.tar.gz")
    assert (root / "in" / "shard.tar.gz").stat().st_size < 4 * 1024 * 1024  # a bomb: ~1 MB holding 1 GiB
    return root


def test_hostile_shard_every_member_ends_in_one_place_and_nothing_escapes(spark, hostile):
    shard = hostile / "in" / "shard.tar.gz"
    out = hostile / "out"
    before = sorted(p for p in hostile.parent.rglob("*") if not str(p).startswith(str(hostile)))
    cfg = PreprocessConfig(resolution=32, labels=LabelMode.DIRS, min_size=16, dedup=False, progress_interval_s=60)
    manifest = run_preprocess(spark, [str(shard)], str(out), cfg, log=lambda s: None).manifest
    uri = f"file:{shard}"
    images = _rows(out / "images")
    rejects = {r["source_uri"]: r for r in _rows(out / "rejects")}
    assert {r["source_uri"]: r["label"] for r in images} == {f"{uri}#cat/a.jpg": "cat", f"{uri}#dog/b.jpg": "dog"}
    assert set(rejects) == {f"{uri}#{name}" for name in REFUSED}
    for name, (reason, fragment) in REFUSED.items():
        row = rejects[f"{uri}#{name}"]
        assert row["reason"] == reason.value and fragment in row["detail"], (name, row)
    assert manifest.counts["inputs"] == 2 + len(REFUSED)  # the directory and the sidecar are not inputs
    assert manifest.counts["tar_sidecars_skipped"] == 1
    assert manifest.classes == ["cat", "dog"]  # ".." never became a class
    # Nothing was extracted anywhere: the only new files are under OUT (and the shard itself).
    after = sorted(p for p in hostile.parent.rglob("*") if not str(p).startswith(str(hostile)))
    assert after == before
    assert not (hostile / "escape.jpg").exists() and not Path("/abs/root.jpg").exists()
    assert all(p == out or out in p.parents or p in (hostile / "in", shard) for p in hostile.rglob("*"))


def test_gzip_bomb_is_counted_and_expanded_in_bounded_memory(hostile):
    """The 1 GiB member is refused from its header and drained in chunks: a fresh process counting and
    expanding the shard peaks far below the member's size (it was 2.2 GB when members were read whole)."""
    shard = hostile / "in" / "shard.tar.gz"
    code = (
        "import json, sys; from pipelines.sources.tar import expand_tar, list_tar\n"
        f"n = list_tar({f'file:{shard}'!r})\n"
        f"rows = [(r[0].rsplit('#', 1)[1], r[2] is not None, r[4]) for r in expand_tar({f'file:{shard}'!r})]\n"
        # VmHWM, not ru_maxrss: after fork + exec Linux keeps the forked copy's high-water mark in ru_maxrss, i.e. the
        # pytest parent's RSS (1.2 GB late in a full run); VmHWM belongs to this process's own address space.
        "peak = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1])\n"
        "print(json.dumps({'count': n, 'rows': rows, 'peak_kib': peak}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    got = json.loads(done.stdout)
    assert got["count"] == [2 + len(REFUSED), 1]
    by_name = {name: (has_bytes, error) for name, has_bytes, error in got["rows"]}
    assert len(by_name) == len(got["rows"]) == 2 + len(REFUSED)
    assert by_name["cat/a.jpg"] == (True, None) and by_name["dog/b.jpg"] == (True, None)
    assert by_name["cat/bomb.jpg"][0] is False and by_name["cat/bomb.jpg"][1].startswith("too_large: ")
    assert got["peak_kib"] < 400 * 1024, got["peak_kib"]  # KiB: under 400 MiB (imports ~100 MiB), not >= 1 GiB


def test_unsafe_member_paths_never_yield_a_rel_path(tmp_path):
    """rel_path (what labels come from) is None for a refused path, so no label can name a directory
    outside the shard's root."""
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "../x/escape.jpg", _jpeg(1))
        _add(tar, "ok/fine.jpg", _jpeg(2))
    rows = {r[0].rsplit("#", 1)[1]: r for r in expand_tar(f"file:{shard}")}
    assert rows["../x/escape.jpg"][1] is None and rows["../x/escape.jpg"][2] is None
    assert rows["../x/escape.jpg"][4].startswith("unsafe_path: ")
    assert rows["ok/fine.jpg"][1] == "ok/fine.jpg" and rows["ok/fine.jpg"][4] is None
    assert list_tar(f"file:{shard}") == (2, 0)


def test_member_above_max_file_bytes_is_refused_without_reading(tmp_path):
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "big.jpg", _jpeg(1))
        _add(tar, "small.png", b"\x89PNG")
    big = len(_jpeg(1))
    rows = {r[0].rsplit("#", 1)[1]: r for r in expand_tar(f"file:{shard}", max_bytes=big - 1)}
    assert rows["big.jpg"][2] is None and rows["big.jpg"][3] == big
    assert rows["big.jpg"][4] == f"too_large: tar member is {big} bytes, limit max_file_bytes={big - 1}; it is not read"
    assert rows["small.png"][2] == b"\x89PNG"
    assert list_tar(f"file:{shard}", max_bytes=big - 1) == (2, 0)


def _plain_hostile_shard(path: Path) -> Path:
    """An uncompressed shard with every member kind the listing must classify, long (GNU and pax) names included."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, "cat/", type=tarfile.DIRTYPE)
        for i in range(6):
            _add(tar, f"cat/{i}.jpg", _jpeg(10 + i))
        _add(tar, "cat/" + "n" * 150 + ".jpg", _jpeg(20))              # a GNU long name
        _add(tar, "dog/link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tar, "dog/hard.jpg", type=tarfile.LNKTYPE, linkname="cat/0.jpg")
        _add(tar, "dog/pipe.jpg", type=tarfile.FIFOTYPE)
        _add(tar, "../escape.jpg", _jpeg(21))
        _add(tar, "cat/0.json", b'{"label": 1}')                      # a sidecar: skipped
        _add(tar, "cat/big.jpg", bytes(5000))
    with tarfile.open(path, "a", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "dog/" + "é" * 80 + ".jpg", _jpeg(22))               # a pax header
        _add(tar, "dog/1.cls", b"3")
    return path


def test_a_whole_plain_shard_is_counted_from_its_headers_exactly_as_it_is_expanded(tmp_path, monkeypatch):
    """The fast count (headers only, 10/14) gives the streaming count on a whole shard, and every cut or broken
    copy of it falls back to the streaming count, so listing and expansion never disagree."""
    from pipelines.sources import tar as tar_mod

    whole = _plain_hostile_shard(tmp_path / "whole.tar")
    data = whole.read_bytes()
    variants = {"whole": data}
    for cut in range(0, len(data), 512 * 7):                            # header and data boundaries
        variants[f"cut{cut}"] = data[:cut]
        variants[f"cut{cut}+100"] = data[: cut + 100]
    broken = bytearray(data)
    broken[512 * 9: 512 * 9 + 100] = b"\xff" * 100                     # a header torn mid-archive
    variants["torn"] = bytes(broken)
    fast_used = []
    for name, blob in variants.items():
        shard = tmp_path / f"{name}.tar"
        shard.write_bytes(blob)
        uri = f"file:{shard}"
        rows = list(expand_tar(uri, max_bytes=4096))
        fast = list_tar(uri, max_bytes=4096)
        if tar_mod._index_tar(uri) is not None:
            fast_used.append(name)
        with monkeypatch.context() as m:
            m.setattr(tar_mod, "_index_tar", lambda uri: None)
            streamed = list_tar(uri, max_bytes=4096)
        assert fast == streamed and fast[0] == len(rows), name
    assert "whole" in fast_used and len(fast_used) > 1                  # the fast path ran, not only the fallback
    assert list_tar(f"file:{whole}", max_bytes=4096) == (13, 2)


@pytest.mark.parametrize("indexed_by", ["driver", "tasks"])
def test_indexed_and_streamed_shards_list_exactly_what_the_streaming_expansion_yields(spark, tmp_path, monkeypatch,
                                                                                     indexed_by):
    """One TAR input mixing a whole plain shard (listed from its headers, read by ranges), its gzip copy, a copy cut
    short and a copy with a torn header (streamed): every member row, its bytes and the count are the expansion's,
    whether the driver's processes index the shards or Spark tasks do (more shards than DRIVER_INDEX_MAX_SHARDS)."""
    import gzip

    from pipelines.sources import tar as tar_mod

    if indexed_by == "tasks":
        monkeypatch.setattr(tar_mod, "DRIVER_INDEX_MAX_SHARDS", 0)

    from pipelines.config import PreprocessConfig
    from pipelines.sources import classify, load_sources
    from pipelines.sources.tar import index_shard

    shards = tmp_path / "shards"
    shards.mkdir()
    data = _plain_hostile_shard(tmp_path / "plain.tar").read_bytes()
    (shards / "a-whole.tar").write_bytes(data)
    (shards / "b-zipped.tar.gz").write_bytes(gzip.compress(data))
    (shards / "c-cut.tar").write_bytes(data[: len(data) * 2 // 3])
    torn = bytearray(data)
    torn[512 * 9: 512 * 9 + 100] = b"\xff" * 100
    (shards / "d-torn.tar").write_bytes(bytes(torn))
    spec = classify(spark, str(shards))
    assert index_shard(spec.paths[0], PreprocessConfig.max_file_bytes)[3] is False  # the whole shard is indexed
    assert index_shard(spec.paths[2], PreprocessConfig.max_file_bytes)[3] is True   # the cut one is streamed
    want, sidecars = {}, 0
    for uri in spec.paths:
        for source_uri, rel, content, length, error, _ in expand_tar(uri):
            assert source_uri not in want
            want[source_uri] = (rel, content, length, error)
        sidecars += list_tar(uri)[1]
    loaded = load_sources(spark, [spec], PreprocessConfig(), 4)
    got = {r["source_uri"]: (r["rel_path"], None if r["content"] is None else bytes(r["content"]), r["length"], r["source_error"])
           for r in loaded.df.collect()}
    assert got == want
    assert (loaded.input_count, loaded.tar_sidecars) == (len(want), sidecars)
    assert sum(1 for u in want if u.startswith(spec.paths[0] + "#")) == 13
