"""A run killed (SIGKILL, for real) at any point, then rerun, leaves the dataset an undisturbed run leaves; two writers
never share an OUT; readers see exactly the files the manifest lists (7/9)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.config import PreprocessConfig
from pipelines.lock import LockedError
from pipelines.preprocess import FAULT_POINTS, DatasetExistsError, run_preprocess
from schemas import TABLES, DatasetLayout, Manifest, listed_files
from schemas.layout import MARK_NAME
from tests.pipelines.imagefactory import encode, photo_like
from training.data import LoaderConfig, open_loader

REPO = Path(__file__).resolve().parents[2]
RES = 32
CFG = PreprocessConfig(resolution=RES, partitions=2)


def _cli(src: Path, out: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "IMAGEGEN_FAULT"}
    if fault:
        env["IMAGEGEN_FAULT"] = fault
    cmd = [sys.executable, "-m", "jobs.cli", "preprocess", str(src), "--output", str(out), "--resolution", str(RES),
           "--partitions", "2", "--master", "local[2]", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _write_sources(src: Path, first: int, n: int) -> None:
    src.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + n):
        (src / f"p{i:03d}.png").write_bytes(encode(photo_like(48, 48, seed=i), "PNG"))
    if first == 0:
        shutil.copy(src / "p000.png", src / "copy-of-p000.png")  # a duplicate
        (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a reject


def _content(out: Path) -> dict:
    """What a reader sees, independent of run ids: rows of every listed file, and the manifest's counts."""
    m = Manifest.read(str(out))
    rows = {}
    for table, cols in (("images", ["image_id", "source_uri", "pixels_sha256"]), ("rejects", ["source_uri", "reason"]),
                        ("duplicates", ["source_uri", "kept_source_uri", "kind"])):
        rows[table] = sorted(
            tuple(r.values()) for f in listed_files(str(out), m, table) for r in pq.read_table(f, columns=cols).to_pylist()
        )
    with open_loader(LoaderConfig(data=str(out), batch_size=1, with_ids=True, shuffle=False)) as loader:
        rows["loader"] = sorted(i for b in loader.epoch(0) for i in b.ids)
    return {"rows": rows, "counts": m.counts, "classes": m.classes}


def _leftovers(out: Path) -> list[str]:
    """Files under OUT that the manifest does not list (nor its checksum siblings), and any staging or lock."""
    m = Manifest.read(str(out))
    listed = {rel for t in TABLES for rel, _ in m.data_files(t)}
    found = []
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_dir() or rel in ("manifest.json", MARK_NAME) or rel in listed:
            continue
        if p.name.startswith(".") and p.name.endswith(".crc") and f"{p.parent.relative_to(out).as_posix()}/{p.name[1:-4]}" in listed:
            continue
        found.append(rel)
    return found


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("crash")
    _write_sources(root / "first", 0, 12)
    shutil.copytree(root / "first", root / "both")
    _write_sources(root / "both", 100, 6)
    return {"first": root / "first", "both": root / "both", "root": root}


@pytest.fixture(scope="module")
def undisturbed(spark, sources) -> dict:
    """The datasets undisturbed runs leave: `first` alone, and `first` then `both` incrementally."""
    root = sources["root"]
    run_preprocess(spark, [str(sources["first"])], str(root / "base"), CFG, log=lambda s: None)
    fresh = _content(root / "base")
    shutil.copytree(root / "base", root / "base-inc")
    run_preprocess(spark, [str(sources["both"])], str(root / "base-inc"), PreprocessConfig(resolution=RES, partitions=2, incremental=True), log=lambda s: None)
    return {"fresh": fresh, "incremental": _content(root / "base-inc"), "base": root / "base"}


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_a_fresh_run_killed_at_any_point_then_rerun_equals_an_undisturbed_run(spark, sources, undisturbed, tmp_path, point):
    out = tmp_path / "out"
    killed = _cli(sources["first"], out, fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    logs: list[str] = []
    try:
        run_preprocess(spark, [str(sources["first"])], str(out), CFG, log=logs.append)
    except DatasetExistsError as exc:  # killed after the manifest was written: the run had completed
        assert point == "manifest-written" and "already holds a complete dataset" in str(exc)
    assert _content(out) == undisturbed["fresh"]
    assert _leftovers(out) == []
    if point != "manifest-written":  # then the rerun found the killed run's files and said what it removed
        assert any("leftover(s) of interrupted runs" in line for line in logs), logs


def test_an_incremental_run_killed_mid_commit_then_rerun_equals_an_undisturbed_one(spark, sources, undisturbed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(undisturbed["base"], out)
    killed = _cli(sources["both"], out, "--incremental", fault="commit:moved")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # the killed run's partitions are on disk, but nobody reads them: the old dataset is intact
    assert _content(out) == undisturbed["fresh"]
    run_preprocess(spark, [str(sources["both"])], str(out), PreprocessConfig(resolution=RES, partitions=2, incremental=True), log=lambda s: None)
    assert _content(out) == undisturbed["incremental"]  # the orphans were not "seen": their inputs were processed
    assert _leftovers(out) == []


def test_an_overwrite_killed_after_its_manifest_leaves_only_the_new_dataset(spark, sources, undisturbed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(undisturbed["base"], out)
    killed = _cli(sources["both"], out, "--overwrite", fault="manifest-written")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    m = Manifest.read(str(out))
    assert m.counts["inputs"] == 20 and len(_content(out)["rows"]["loader"]) == m.rows("images") == m.counts["written"]
    assert _leftovers(out)  # the replaced run's files are still on disk, invisible to readers
    run_preprocess(spark, [str(sources["first"])], str(out), PreprocessConfig(resolution=RES, partitions=2, overwrite=True), log=lambda s: None)
    assert _content(out) == undisturbed["fresh"] and _leftovers(out) == []


def test_two_writers_never_share_an_out(spark, sources, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "preprocess", str(sources["first"]), "--output", str(out), "--resolution", str(RES),
         "--partitions", "2", "--master", "local[2]"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lock = Path(DatasetLayout(str(out)).lock)
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.exists(), "the first writer never took the lock"
    holder = json.loads(lock.read_text() or "{}") if lock.stat().st_size else {}
    with pytest.raises(LockedError, match=rf"_lock is held by pid {first.pid} on "):
        run_preprocess(spark, [str(sources["first"])], str(out), CFG, log=lambda s: None)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert holder.get("pid") in (None, first.pid)
    m = Manifest.read(str(out))
    assert len(_content(out)["rows"]["loader"]) == m.counts["written"] == m.rows("images")
    assert not lock.exists()


def test_a_stale_lock_of_a_dead_writer_is_taken_over_and_named(spark, sources, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARK_NAME).write_text("{}")  # a writer marks OUT before it takes the lock
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    Path(DatasetLayout(str(out)).lock).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "start": None,
                                                               "time": "then", "command": "imagegen preprocess (killed)"}))
    logs: list[str] = []
    run_preprocess(spark, [str(sources["first"])], str(out), CFG, log=logs.append)
    assert any("removed the stale lock" in line and f"pid {dead.pid}" in line for line in logs), logs
    assert not Path(DatasetLayout(str(out)).lock).exists()


def test_a_live_lock_holder_is_respected(spark, sources, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARK_NAME).write_text("{}")  # a writer marks OUT before it takes the lock
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        import socket

        from pipelines.lock import _process_start

        Path(DatasetLayout(str(out)).lock).write_text(json.dumps({"pid": alive.pid, "host": socket.gethostname(),
                                                                   "start": _process_start(alive.pid), "time": "now", "command": "x"}))
        with pytest.raises(LockedError, match=rf"held by pid {alive.pid}"):
            run_preprocess(spark, [str(sources["first"])], str(out), CFG, log=lambda s: None)
        assert not (out / "manifest.json").exists()
    finally:
        alive.kill()
        alive.wait()


def test_output_into_a_folder_that_is_not_a_dataset_is_refused(spark, sources, tmp_path):
    out = tmp_path / "holiday-photos"
    out.mkdir()
    (out / "IMG_0001.jpg").write_bytes(b"precious")
    from pipelines.preprocess import NotADatasetError

    with pytest.raises(NotADatasetError, match="is not empty and is not an imagegen dataset .*IMG_0001.jpg.*nothing there was changed"):
        run_preprocess(spark, [str(sources["first"])], str(out), CFG, log=lambda s: None)
    assert sorted(p.name for p in out.iterdir()) == ["IMG_0001.jpg"]
