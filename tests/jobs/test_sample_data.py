"""`imagegen sample-data`: the files, their counts and ground truth; then a real preprocess run on a shapes set
rejects exactly the planted corrupt files and finds the planted near duplicates (dedup-eval on the truth)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, UnidentifiedImageError

from jobs import dedup_eval
from jobs.sample_data import CORRUPT_KINDS, DUPLICATE_VARIANTS, SHAPES, main
from schemas import listed_files
from schemas.uri import path_to_uri, uri_to_path


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("_"))


def test_shapes_files_counts_and_truth(tmp_path: Path, capsys) -> None:
    out = tmp_path / "shapes"
    assert main(["--kind", "shapes", "--out", str(out), "--n", "25", "--plant-duplicates", "7", "--plant-corrupt", "5", "--seed", "3"]) == 0
    assert "37 files" in capsys.readouterr().out
    planted = json.loads((out / "_planted.json").read_text())
    files = _files(out)
    assert len(files) == 25 + 7 + 5
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(SHAPES)
    assert planted["classes"] == {s: 5 for s in SHAPES}

    # originals: 64x64 RGB images in their class folder, PNG or JPEG
    for uri in planted["originals"]:
        path = Path(uri_to_path(uri))
        assert path.parent.parent == out and path.name.startswith(path.parent.name)
        with Image.open(path) as img:
            assert img.size == (64, 64) and img.format in ("PNG", "JPEG")
            img.load()
    # duplicates: 7 distinct originals, variants cycling, each decodable and close in size to its original
    dups = planted["duplicates"]
    assert len(dups) == 7 and len({d["of"] for d in dups}) == 7 and {d["of"] for d in dups} <= set(planted["originals"])
    assert Counter(d["variant"] for d in dups) == {"jpeg": 3, "resized": 2, "cropped": 2}
    sizes = {"jpeg": (64, 64), "resized": (80, 80), "cropped": (62, 62)}
    for d in dups:
        with Image.open(uri_to_path(d["uri"])) as img:
            assert img.size == sizes[d["variant"]]
            img.load()
        assert Path(uri_to_path(d["uri"])).parent == Path(uri_to_path(d["of"])).parent
    # corrupt: cycling through the kinds, none of them decodes
    corrupt = planted["corrupt"]
    assert [c["kind"] for c in corrupt] == [CORRUPT_KINDS[i % 3] for i in range(5)]
    for c in corrupt:
        path = Path(uri_to_path(c["uri"]))
        if c["kind"] == "zero_byte":
            assert path.stat().st_size == 0
        with pytest.raises((OSError, UnidentifiedImageError)), Image.open(path) as img:
            img.load()
    # the truth, as dedup-eval reads it: every valid file, the planted copies grouped with their original
    truth = dedup_eval.read_truth(str(out / "_truth.json"))
    valid = set(planted["originals"]) | {d["uri"] for d in dups}
    assert set(truth) == valid and set(truth) == {path_to_uri(p) for p in files} - {c["uri"] for c in corrupt}
    sizes_of_groups = Counter(Counter(truth.values()).values())
    assert sizes_of_groups == {1: 25 - 7, 2: 7}
    for d in dups:
        assert truth[d["uri"]] == truth[d["of"]]


def test_same_seed_same_bytes_and_refuses_an_occupied_dir(tmp_path: Path, capsys) -> None:
    args = ["--kind", "shapes", "--n", "6", "--plant-duplicates", "2", "--plant-corrupt", "3"]
    assert main(args + ["--out", str(tmp_path / "a"), "--seed", "1"]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--seed", "1"]) == 0
    assert main(args + ["--out", str(tmp_path / "c"), "--seed", "2"]) == 0
    rel = lambda root: {p.relative_to(root).as_posix(): p.read_bytes() for p in _files(root)}
    assert rel(tmp_path / "a") == rel(tmp_path / "b")
    assert rel(tmp_path / "a") != rel(tmp_path / "c")
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert main(["--kind", "shapes", "--out", str(tmp_path / "d"), "--n", "2", "--plant-duplicates", "3"]) == 2
    assert "--plant-duplicates must be between 0 and --n (2)" in capsys.readouterr().err


def test_mnist_digits_from_the_offline_package(tmp_path: Path) -> None:
    out = tmp_path / "mnist"
    assert main(["--kind", "mnist", "--out", str(out), "--n", "20", "--plant-duplicates", "3", "--plant-corrupt", "3"]) == 0
    planted = json.loads((out / "_planted.json").read_text())
    assert planted["classes"] == {str(d): 2 for d in range(10)}
    arrays = set()
    for uri in planted["originals"]:
        with Image.open(uri_to_path(uri)) as img:
            assert (img.size, img.mode, img.format) == ((28, 28), "L", "PNG")
            arrays.add(img.tobytes())
    assert len(arrays) == 20  # distinct digits
    assert [d["variant"] for d in planted["duplicates"]] == list(DUPLICATE_VARIANTS)
    assert len(_files(out)) == 26


def test_preprocess_rejects_exactly_the_planted_corrupt_files_and_finds_the_planted_duplicates(spark, tmp_path: Path, capsys) -> None:
    from pipelines.config import LabelMode, PreprocessConfig
    from pipelines.preprocess import run_preprocess

    src, ds = tmp_path / "shapes", tmp_path / "ds"
    assert main(["--kind", "shapes", "--out", str(src), "--n", "40", "--plant-duplicates", "9", "--plant-corrupt", "6", "--seed", "0"]) == 0
    planted = json.loads((src / "_planted.json").read_text())
    cfg = PreprocessConfig(resolution=64, labels=LabelMode.DIRS, progress_interval_s=600)
    manifest = run_preprocess(spark, [str(src)], str(ds), cfg, log=lambda s: None).manifest

    # every file went somewhere; _truth.json and _planted.json are hidden from the job
    assert manifest.counts["inputs"] == 40 + 9 + 6
    rejects = [r for p in listed_files(str(ds), manifest, "rejects") for r in _rows(p, ["source_uri", "reason"])]
    assert {r["source_uri"] for r in rejects} == {c["uri"] for c in planted["corrupt"]}
    assert Counter(r["reason"] for r in rejects) == {"empty_file": 2, "not_an_image": 2, "truncated": 2}
    assert sorted(manifest.classes) == sorted(SHAPES)

    # dedup against the planted truth: the numbers are printed; the bounds are sensible, not tuned
    result = dedup_eval.evaluate(dedup_eval.parse(["--dataset", str(ds), "--truth", str(src / "_truth.json")]))
    with capsys.disabled():
        print(f"\n[sample-data] planted pairs {result.true_pairs}, found {result.true_positive_pairs}, predicted {result.predicted_pairs}: "
              f"recall {result.recall:.3f}, precision {result.precision:.3f}; written {manifest.counts['written']}, "
              f"duplicates {manifest.counts['duplicates']}")
    assert result.scored_images == 49 and result.true_pairs == 9 and result.truth_not_found == 0
    assert result.recall >= 0.6, result.misses
    assert result.precision >= 0.8, result.false_merges
    assert manifest.counts["written"] + sum(manifest.counts["duplicates"].values()) == 49


def _rows(path: str, columns: list[str]) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns).to_pylist()

