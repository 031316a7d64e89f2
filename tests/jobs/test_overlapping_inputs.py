"""Every input file ends in exactly one place, whatever the user types (13/14, item 2): overlapping INPUTs give one
row per file, the manifest counts what was dropped, and a dataset inside an INPUT (OUT included) is not an input."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.config import PreprocessConfig
from pipelines.preprocess import run_preprocess
from schemas import Manifest, listed_files
from tests.pipelines.imagefactory import encode, photo_like

CFG = PreprocessConfig(resolution=32, partitions=2)


@pytest.fixture()
def tree(tmp_path) -> Path:
    root = tmp_path / "A"
    (root / "plain").mkdir(parents=True)
    for i in range(4):
        (root / f"top{i}.png").write_bytes(encode(photo_like(40, 40, seed=500 + i), "PNG"))
    for i in range(3):
        (root / "plain" / f"sub{i}.png").write_bytes(encode(photo_like(40, 40, seed=600 + i), "PNG"))
    return root


def _uris(out: Path) -> list[str]:
    m = Manifest.read(str(out))
    return sorted(u for t in ("images", "rejects", "duplicates") for f in listed_files(str(out), m, t)
                  for u in pq.read_table(f, columns=["source_uri"]).column(0).to_pylist())


@pytest.mark.parametrize("extra", [["{A}/plain"], ["{A}/top0.png", "{A}/top0.png"], ["{A}/plain/*.png"]],
                         ids=["folder-and-subfolder", "file-twice", "glob-over-folder"])
def test_overlapping_inputs_give_one_row_per_file(spark, tree, tmp_path, extra):
    inputs = [str(tree)] + [e.format(A=tree) for e in extra]
    out = tmp_path / "out"
    m = run_preprocess(spark, inputs, str(out), CFG, log=lambda s: None).manifest
    uris = _uris(out)
    assert len(uris) == len(set(uris)) == 7 == m.counts["inputs"]
    assert m.counts["repeated_inputs"] == {"folder-and-subfolder": 3, "file-twice": 2, "glob-over-folder": 3}[
        {"{A}/plain": "folder-and-subfolder", "{A}/top0.png": "file-twice", "{A}/plain/*.png": "glob-over-folder"}[extra[0]]]


def test_a_symlinked_folder_beside_its_target_is_listed_once(spark, tree, tmp_path):
    (tmp_path / "link").symlink_to(tree / "plain", target_is_directory=True)
    out = tmp_path / "out"
    m = run_preprocess(spark, [str(tree), str(tmp_path / "link")], str(out), CFG, log=lambda s: None).manifest
    assert m.counts["inputs"] == 7 and len(set(_uris(out))) == 7


def test_out_inside_the_input_is_never_an_input(spark, tree):
    out = tree / "out"
    first = run_preprocess(spark, [str(tree)], str(out), CFG, log=lambda s: None).manifest
    assert first.counts["inputs"] == 7
    logs: list[str] = []
    again = run_preprocess(spark, [str(tree)], str(out), PreprocessConfig(resolution=32, partitions=2, incremental=True), log=logs.append)
    assert "nothing new" in again.summary  # the dataset's own Parquet files and manifest were not listed
    assert sum(again.manifest.counts["rejected"].values()) == 0
