"""The preprocess job with dedup wired in, run twice (and a third time with nothing new) on one dataset."""
from __future__ import annotations

import shutil

import pyarrow.dataset as pads
import pytest

from pipelines.config import LabelMode, PreprocessConfig
from pipelines.preprocess import run_preprocess
from schemas.layout import Manifest
from tests.pipelines.imagefactory import encode, photo_like

RES = 32


def _table(out, name):
    path = out / name
    if not path.exists():
        return []
    return pads.dataset(str(path), format="parquet", partitioning="hive").to_table().to_pylist()


def _uri(path) -> str:
    return f"file:{path}"


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("incremental")
    src, out = root / "src", root / "out"
    for label in ("a", "b"):
        (src / label).mkdir(parents=True)
    originals = {}
    for i in range(6):
        path = src / ("a" if i < 3 else "b") / f"photo-{i}.png"
        path.write_bytes(encode(photo_like(96, 96, seed=100 + i), "PNG"))
        originals[i] = path
    shutil.copy(originals[0], src / "a" / "photo-0-copy.png")                                      # exact (bytes)
    (src / "a" / "photo-1-small.jpg").write_bytes(encode(photo_like(96, 96, seed=101).resize((80, 80)), "JPEG", quality=90))  # near
    cfg = PreprocessConfig(resolution=RES, labels=LabelMode.DIRS, progress_interval_s=60)
    first = run_preprocess(spark, [str(src)], str(out), cfg, log=lambda s: None).manifest
    first_images = {r["source_uri"]: r for r in _table(out, "images")}

    # Run 2: two new photos (one in a new class), a byte copy of an old photo under a new name, and a
    # larger re-encode of another old photo: it outranks the old one by resolution, but earlier runs stay kept.
    (src / "c").mkdir()
    (src / "c" / "new-0.png").write_bytes(encode(photo_like(96, 96, seed=200), "PNG"))
    (src / "b" / "new-1.png").write_bytes(encode(photo_like(96, 96, seed=201), "PNG"))
    shutil.copy(originals[4], src / "b" / "again-4.png")
    (src / "b" / "bigger-5.jpg").write_bytes(encode(photo_like(96, 96, seed=105).resize((128, 128)), "JPEG", quality=95))
    second = run_preprocess(spark, [str(src)], str(out), cfg.replace(incremental=True), log=lambda s: None).manifest
    manifest_bytes = (out / "manifest.json").read_bytes()
    third = run_preprocess(spark, [str(src)], str(out), cfg.replace(incremental=True), log=lambda s: None)
    return {"src": src, "out": out, "originals": originals, "first": first, "second": second, "third": third,
            "first_images": first_images, "manifest_bytes": manifest_bytes}


def test_first_run_drops_exact_and_near_duplicates(runs):
    first = runs["first"]
    assert first.counts["inputs"] == 8
    assert first.counts["written"] == 6
    assert first.counts["duplicates"] == {"exact": 1, "near": 1}
    kept = set(runs["first_images"])
    zero = {_uri(runs["originals"][0]), _uri(runs["src"] / "a" / "photo-0-copy.png")}  # same bytes: one is kept
    assert kept - zero == {_uri(runs["originals"][i]) for i in range(1, 6)} and len(kept & zero) == 1
    dups = {r["source_uri"]: r for r in _table(runs["out"], "duplicates") if r["run_id"] == first.run_id}
    (exact,) = [r for r in dups.values() if r["kind"] == "exact"]
    assert {exact["source_uri"], exact["kept_source_uri"]} == zero and exact["distance"] == 0
    small = _uri(runs["src"] / "a" / "photo-1-small.jpg")
    assert dups[small]["kept_source_uri"] == _uri(runs["originals"][1]) and dups[small]["kind"] == "near"
    assert dups[small]["distance"] <= 8  # pHash distance; a resize often keeps all 64 bits


def test_second_run_processes_only_new_files_and_keeps_old_images(runs):
    src, second, first = runs["src"], runs["second"], runs["first"]
    run2 = second.runs[-1]
    assert [r["run_id"] for r in second.runs] == [first.run_id, second.run_id]
    assert run2["counts"]["inputs"] == 4  # only the files added since run 1
    assert run2["counts"]["written"] == 2
    assert run2["counts"]["duplicates"] == {"exact": 1, "near": 1}
    dups = {r["source_uri"]: r for r in _table(runs["out"], "duplicates") if r["run_id"] == second.run_id}
    assert dups[_uri(src / "b" / "again-4.png")]["kept_source_uri"] == _uri(runs["originals"][4])
    assert dups[_uri(src / "b" / "again-4.png")]["kind"] == "exact"
    # The larger re-encode would win within one run; against an earlier run the old image stays kept.
    assert dups[_uri(src / "b" / "bigger-5.jpg")]["kept_source_uri"] == _uri(runs["originals"][5])
    images = {r["source_uri"]: r for r in _table(runs["out"], "images")}
    for uri, row in runs["first_images"].items():
        assert images[uri]["run_id"] == first.run_id and images[uri]["label_index"] == row["label_index"]
    assert _uri(src / "b" / "bigger-5.jpg") not in images


def test_counts_add_up_across_runs_and_every_file_is_in_one_place(runs):
    second = runs["second"]
    files = {_uri(p) for p in runs["src"].rglob("*") if p.is_file()}
    places = [r["source_uri"] for name in ("images", "rejects", "duplicates") for r in _table(runs["out"], name)]
    assert sorted(places) == sorted(files)  # each input exactly once, over both runs
    c = second.counts
    assert c["inputs"] == len(files) == 12
    assert c["written"] == 8 and c["duplicates"] == {"exact": 2, "near": 2}
    assert c["inputs"] == c["written"] + sum(c["rejected"].values()) + sum(c["duplicates"].values())
    assert second.classes == ["a", "b", "c"]  # a new class is appended; earlier indices are unchanged
    assert second.label_counts == {"a": 3, "b": 4, "c": 1}
    assert Manifest.read(str(runs["out"])) == second


def test_a_run_with_nothing_new_writes_nothing(runs):
    third = runs["third"]
    assert third.manifest == runs["second"]
    assert "nothing new" in third.summary
    assert (runs["out"] / "manifest.json").read_bytes() == runs["manifest_bytes"]
    assert sorted(p.name for p in (runs["out"] / "images").iterdir()) == sorted(f"run_id={r['run_id']}" for r in runs["second"].runs)
    assert not (runs["out"] / "_staging").exists()


def test_incremental_refuses_different_settings(runs, spark):
    cfg = PreprocessConfig(resolution=RES * 2, labels=LabelMode.DIRS, incremental=True)
    with pytest.raises(ValueError, match="differ from the dataset"):
        run_preprocess(spark, [str(runs["src"])], str(runs["out"]), cfg, log=lambda s: None)
