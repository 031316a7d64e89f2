"""End to end: any legal file name is one input with one spelling (file:<path>), in fresh and incremental runs."""
from __future__ import annotations

import shutil
import unicodedata

import pyarrow.dataset as pads
import pytest

from pipelines.config import LabelMode, PreprocessConfig
from pipelines.preprocess import run_preprocess
from tests.pipelines.imagefactory import encode, photo_like
from tests.pipelines.test_sources import EMPTY_NAMES, ODD_NAMES

CFG = PreprocessConfig(resolution=32, min_size=16, labels=LabelMode.DIRS, progress_interval_s=60)
MORE_NAMES = ["second run %.png", "x%2Fy.png", unicodedata.normalize("NFD", "ñandú #2.jpg"), "[new]?.png",
              "line\nbreak 2.jpg", "-r -f.png", "é" * 124 + ".jpg"]
MORE_EMPTY = ["zero %00.png", "nul\n.png"]


def _image(i: int, name: str) -> bytes:
    return encode(photo_like(48, 40, seed=300 + i), "JPEG" if name.endswith(".jpg") else "PNG")


def _places(out) -> dict[str, list[str]]:
    """source_uri -> the tables it appears in (one entry per row)."""
    found: dict[str, list[str]] = {}
    for table in ("images", "rejects", "duplicates"):
        if not (out / table).exists():
            continue
        for uri in pads.dataset(str(out / table), format="parquet", partitioning="hive").to_table(columns=["source_uri"]).column("source_uri").to_pylist():
            found.setdefault(uri, []).append(table)
    return found


def _on_disk(src) -> list[str]:
    return sorted(f"file:{p}" for p in src.rglob("*") if p.is_file())


def _check(manifest, out, src):
    files = _on_disk(src)
    c = manifest.counts
    assert c["inputs"] == len(files) == c["written"] + sum(c["rejected"].values()) + sum(c["duplicates"].values())
    places = _places(out)
    assert sorted(places) == files  # every file, under its real path, and nothing else
    assert all(len(p) == 1 for p in places.values()), {u: p for u, p in places.items() if len(p) > 1}
    return places


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    src, out = root / "in #1 %20", root / "out"
    folder = src / "odd class é"
    folder.mkdir(parents=True)
    for i, name in enumerate(ODD_NAMES):
        # every third name holds the bytes of the one before it: exact duplicates across odd names
        (folder / name).write_bytes(_image(i - 1 if i % 3 == 2 else i, name))
    for name in EMPTY_NAMES:
        (folder / name).write_bytes(b"")
    first = run_preprocess(spark, [str(src)], str(out), CFG, log=lambda s: None).manifest
    places_1 = _check(first, out, src)

    for i, name in enumerate(MORE_NAMES):
        (folder / name).write_bytes(_image(100 + i, name))
    shutil.copy(folder / ODD_NAMES[0], folder / "copy of a b.png")  # an exact duplicate of a run-1 image
    for name in MORE_EMPTY:
        (folder / name).write_bytes(b"")
    second = run_preprocess(spark, [str(src)], str(out), CFG.replace(incremental=True), log=lambda s: None).manifest
    return {"src": src, "out": out, "folder": folder, "first": first, "second": second, "places_1": places_1}


def test_first_run_every_name_is_one_input(runs):
    first, folder, places = runs["first"], runs["folder"], runs["places_1"]
    c = first.counts
    assert c["inputs"] == len(ODD_NAMES) + len(EMPTY_NAMES)
    assert c["rejected"]["empty_file"] == len(EMPTY_NAMES) and sum(c["rejected"].values()) == len(EMPTY_NAMES)
    assert c["duplicates"]["exact"] == len(ODD_NAMES) // 3
    for name in EMPTY_NAMES:
        assert places[f"file:{folder}/{name}"] == ["rejects"]
    assert first.classes == ["odd class é"]


def test_incremental_run_adds_only_the_new_names_once(runs):
    second, folder = runs["second"], runs["folder"]
    places = _check(second, runs["out"], runs["src"])
    run2 = second.runs[-1]["counts"]
    assert run2["inputs"] == len(MORE_NAMES) + 1 + len(MORE_EMPTY)
    assert run2["rejected"]["empty_file"] == len(MORE_EMPTY)
    assert run2["duplicates"]["exact"] == 1 and places[f"file:{folder}/copy of a b.png"] == ["duplicates"]
    for uri, where in runs["places_1"].items():  # run 1's rows are where they were
        assert places[uri] == where
