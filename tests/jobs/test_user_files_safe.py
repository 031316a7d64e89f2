"""Only what imagegen wrote is ever removed (13/14, item 1): a user's files under images/, rejects/, duplicates/,
_staging/ or at the top of OUT are byte-for-byte intact after every command, whether OUT is a plain folder (refused,
with or without --overwrite) or a real dataset the user has put files into."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import PreprocessConfig
from pipelines.preprocess import NotADatasetError, run_preprocess
from schemas import Manifest
from schemas.layout import MARK_NAME
from tests.pipelines.imagefactory import encode, photo_like

REPO = Path(__file__).resolve().parents[2]
RES = 32

# where a user might keep things, with names that look like ours but are not of our making
USER_FILES = {
    "README": b"my notes\n",
    "images/vacation/beach.jpg.txt": b"the beach, 2019\n",
    "images/notes.parquet": b"not a parquet file at all",
    "rejects/notes.txt": b"to do: sort these\n",
    "duplicates/keep.me": b"\x00\x01binary\xff",
    "_staging/mine.txt": b"staging is my word too\n",
    "_staging/draft/part-00000.parquet": b"a draft",
}


def _plant(root: Path, files: dict[str, bytes]) -> dict[str, str]:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return _digests(root, files)


def _digests(root: Path, files) -> dict[str, str]:
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() if (root / rel).is_file() else "MISSING" for rel in files}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("userfiles-src")
    for i in range(6):
        (root / f"p{i}.png").write_bytes(encode(photo_like(40, 40, seed=300 + i), "PNG"))
    (root / "copy.png").write_bytes((root / "p0.png").read_bytes())
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nno")
    return root


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "IMAGEGEN_FAULT"}
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_user_folder_with_dataset_like_names_is_refused_and_untouched(spark, src, tmp_path, overwrite):
    out = tmp_path / "userdir"
    before = _plant(out, USER_FILES)
    with pytest.raises(NotADatasetError, match=rf"is not empty and is not an imagegen dataset .*no {MARK_NAME}"):
        run_preprocess(spark, [str(src)], str(out), PreprocessConfig(resolution=RES, partitions=2, overwrite=overwrite),
                       log=lambda s: None)
    assert _digests(out, USER_FILES) == before
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(USER_FILES)


def test_the_cli_refuses_a_user_folder_in_one_line(src, tmp_path):
    out = tmp_path / "userdir"
    before = _plant(out, USER_FILES)
    r = _cli("preprocess", str(src), "--output", str(out), "--resolution", str(RES), "--master", "local[1]", "--overwrite")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "is not an imagegen dataset" in r.stderr and "Traceback" not in r.stderr
    assert _digests(out, USER_FILES) == before


def test_user_files_inside_a_dataset_survive_incremental_overwrite_and_report(spark, src, tmp_path):
    out = tmp_path / "dataset"
    run_preprocess(spark, [str(src)], str(out), PreprocessConfig(resolution=RES, partitions=2), log=lambda s: None)
    first = Manifest.read(str(out))
    partition = f"images/run_id={first.run_id}"
    files = {**USER_FILES, f"{partition}/my-notes.txt": b"inside a partition\n",
             f"{partition}/part-0.parquet": b"a user's, not Spark's, name"}
    before = _plant(out, files)

    more = tmp_path / "more"
    more.mkdir()
    for i in range(3):
        (more / f"q{i}.png").write_bytes(encode(photo_like(40, 40, seed=400 + i), "PNG"))
    logs: list[str] = []
    run_preprocess(spark, [str(more)], str(out), PreprocessConfig(resolution=RES, partitions=2, incremental=True), log=logs.append)
    assert _digests(out, files) == before, logs
    assert Manifest.read(str(out)).counts["inputs"] == 8 + 3

    run_preprocess(spark, [str(src)], str(out), PreprocessConfig(resolution=RES, partitions=2, overwrite=True), log=logs.append)
    assert _digests(out, files) == before, logs
    m = Manifest.read(str(out))
    assert m.counts["inputs"] == 8 and m.run_id != first.run_id
    # the replaced runs' Parquet files are gone; the user's files in the same partition are not
    assert not any(p.name.endswith(".parquet") and p.name.startswith("part-") and "-c0" in p.name
                   for p in (out / partition).iterdir())

    r = _cli("report", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert _digests(out, files) == before
    # the unlabelled images' grid tiles are named by their file names, not "None"
    page = (out / "report.html").read_text()
    grid = re.search(r'<section id="grid">.*?</section>', page, re.S).group(0)
    alts = re.findall(r'<div class="tile"><img[^>]*\balt="([^"]*)"', grid)
    assert alts and 'alt="None"' not in page
    assert set(alts) <= {p.name for p in src.rglob("*") if p.is_file()}


def test_a_killed_runs_leftovers_are_still_removed_beside_user_files(spark, src, tmp_path):
    """The mark narrows what is removed, not whether leftovers are: a crashed run's staging and orphan partition go."""
    out = tmp_path / "dataset"
    run_preprocess(spark, [str(src)], str(out), PreprocessConfig(resolution=RES, partitions=2), log=lambda s: None)
    before = _plant(out, USER_FILES)
    orphan = out / "images" / "run_id=20260101T000000Z-abcdef"
    orphan.mkdir()
    (orphan / "part-00000-3b2c1f6e-1111-2222-3333-444455556666-c000.snappy.parquet").write_bytes(b"orphan")
    (out / "_staging" / "20260101T000000Z-abcdef" / "decoded").mkdir(parents=True)
    logs: list[str] = []
    run_preprocess(spark, [str(src)], str(out), PreprocessConfig(resolution=RES, partitions=2, overwrite=True), log=logs.append)
    assert not orphan.exists() and not (out / "_staging" / "20260101T000000Z-abcdef").exists()
    assert any("removed 2 leftover(s)" in line for line in logs), logs
    assert _digests(out, USER_FILES) == before


def test_the_demo_never_clears_a_folder_it_did_not_make(tmp_path):
    from jobs.demo import DEMO_MARK, _clear_demo_dir

    mine = tmp_path / "photos"
    before = _plant(mine, USER_FILES)
    with pytest.raises(SystemExit, match=rf"not made by imagegen demo \(no {DEMO_MARK}\); nothing there was changed"):
        _clear_demo_dir(mine)
    assert _digests(mine, USER_FILES) == before
    demo = tmp_path / "demo"
    _clear_demo_dir(demo)  # new: made and marked
    (demo / "dataset").mkdir()
    _clear_demo_dir(demo)  # a previous demo's folder: cleared, marked again
    assert sorted(p.name for p in demo.iterdir()) == [DEMO_MARK]
