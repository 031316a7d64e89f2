"""End to end: the preprocess job on a generated corpus of every input kind (real Spark, real files)."""
from __future__ import annotations

import functools
import json
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.preprocess import main
from pipelines import preprocess as preprocess_module
from pipelines.config import LabelMode, PreprocessConfig
from pipelines.dedup import DedupConfig
from pipelines.preprocess import DatasetExistsError, InjectedFault, run_preprocess
from schemas.images import IMAGES_ARROW, REJECTS_ARROW, SCHEMA_VERSION, RejectReason
from schemas.layout import Manifest
from tests.conftest import REPO
from tests.pipelines.imagefactory import encode, photo_like, write_corpus, write_tar

RES = 64


@pytest.fixture(scope="module")
def job(spark, tmp_path_factory):
    """One run over a directory corpus + a tar shard + a Parquet file, labels from directories."""
    root = tmp_path_factory.mktemp("job")
    corpus = write_corpus(root / "corpus")
    shard = write_tar(root / "shards" / "shard-000.tar", [
        ("cat/t1.jpg", encode(photo_like(80, 64, seed=31), "JPEG")),
        ("t2.png", encode(photo_like(64, 64, seed=32), "PNG")),
        ("t2.json", b"{}"),                       # webdataset sidecar: not an input
        ("bad.jpg", b"\xff\xd8\xff garbage"),      # JPEG signature, broken header
    ])
    pq.write_table(pa.table({"image": [encode(photo_like(70, 70, seed=33), "PNG"), b""]}), root / "rows.parquet")
    out = root / "out"
    rc = main([str(root / "corpus"), str(shard), str(root / "rows.parquet"), "--output", str(out),
               "--resolution", str(RES), "--labels", "dirs", "--master", "local[2]",
               "--no-dedup"])  # conversion cases share content on purpose; dedup is tested in test_preprocess_incremental
    assert rc == 0
    expected = {f"file:{root}/corpus/{name}": exp for name, exp in corpus.items()}
    return {"root": root, "out": out, "expected": expected, "shard": f"file:{shard}", "manifest": Manifest.read(str(out))}


def _images(out) -> pa.Table:
    return pads.dataset(str(out / "images"), format="parquet", partitioning="hive").to_table()


def _rejects(out) -> pa.Table:
    return pads.dataset(str(out / "rejects"), format="parquet", partitioning="hive").to_table()


def test_every_input_is_accounted_for(job):
    images, rejects = _images(job["out"]), _rejects(job["out"])
    img_uris = images.column("source_uri").to_pylist()
    rej = dict(zip(rejects.column("source_uri").to_pylist(), rejects.column("reason").to_pylist()))
    assert len(img_uris) == len(set(img_uris)) and not set(img_uris) & set(rej)
    for uri, exp in job["expected"].items():
        if exp.kind == "image":
            assert uri in img_uris, f"{uri}: expected an image"
        else:
            assert rej.get(uri) == exp.reason, f"{uri}: expected reject {exp.reason}, got {rej.get(uri)}"
    s = job["shard"]
    assert {f"{s}#cat/t1.jpg", f"{s}#t2.png"} <= set(img_uris) and f"{s}#t2.json" not in rej
    assert rej[f"{s}#bad.jpg"] == "not_an_image"
    pq_rows = sorted(u for u in set(img_uris) | set(rej) if "rows.parquet#row=" in u)
    assert len(pq_rows) == 2 and rej[pq_rows[1]] == "empty_file"
    total = len(job["expected"]) + 3 + 2
    m = job["manifest"]
    assert len(img_uris) + len(rej) == total
    assert m.counts["inputs"] == total and m.counts["written"] == len(img_uris)
    assert sum(m.counts["rejected"].values()) == len(rej) and set(m.counts["rejected"]) == {r.value for r in RejectReason}
    assert m.counts["duplicates"] == {"exact": 0, "near": 0}
    assert m.counts["tar_sidecars_skipped"] == 1
    assert all(reason in {r.value for r in RejectReason} for reason in rej.values())
    assert all(d for d in rejects.column("detail").to_pylist())


def test_labels_classes_and_label_index(job):
    images = _images(job["out"]).to_pylist()
    m = job["manifest"]
    assert m.classes == ["birds", "cat", "cats", "dogs"]
    by_uri = {r["source_uri"]: r for r in images}
    for uri, exp in job["expected"].items():
        if exp.kind == "image":
            assert by_uri[uri]["label"] == exp.label, uri
    assert by_uri[job["shard"] + "#cat/t1.jpg"]["label"] == "cat"
    for r in images:
        assert r["label_index"] == (m.classes.index(r["label"]) if r["label"] is not None else None)
    counts = {c: sum(1 for r in images if r["label"] == c) for c in m.classes}
    assert m.label_counts == counts
    unlabeled = sorted(r["source_uri"] for r in images if r["label"] is None)
    assert m.counts["unlabeled"] == len(unlabeled) == 3  # top_level.png, the tar's t2.png, the Parquet row
    assert m.extra["labels"]["unlabeled_examples"] == unlabeled


def test_parquet_reads_back_with_pyarrow_spark_and_petastorm(job, spark):
    out = job["out"]
    table = _images(out)
    for field in IMAGES_ARROW:  # run_id comes back from the hive partition directory name
        assert table.schema.field(field.name).type == field.type, field.name
    # Spark writes the non-null columns as required fields
    files = sorted((out / "images").glob("run_id=*/*.parquet"))
    assert files
    file_schema = pq.read_schema(files[0])
    assert not file_schema.field("pixels").nullable and file_schema.field("label").nullable
    assert _rejects(out).schema.field("reason").type == REJECTS_ARROW.field("reason").type
    sdf = spark.read.parquet(str(out / "images"))
    assert sdf.count() == table.num_rows and set(sdf.columns) == set(IMAGES_ARROW.names)
    assert {r["run_id"] for r in sdf.select("run_id").distinct().collect()} == {job["manifest"].run_id}

    from petastorm import make_batch_reader

    seen = {}
    with make_batch_reader("file://" + str(out / "images"), workers_count=1, shuffle_row_groups=False, num_epochs=1) as reader:
        for batch in reader:
            for uri, px in zip(batch.source_uri, batch.pixels):
                seen[uri] = px
    assert set(seen) == set(table.column("source_uri").to_pylist())
    top = f"file:{job['root']}/corpus/top_level.png"
    assert np.frombuffer(seen[top], np.uint8).reshape(RES, RES, 3).shape == (RES, RES, 3)


def test_pixels_round_trip_and_orientation(job):
    rows = {r["source_uri"]: r for r in _images(job["out"]).to_pylist()}
    root = job["root"]
    top = rows[f"file:{root}/corpus/top_level.png"]  # a 64x64 RGB PNG at resolution 64: stored exactly
    expected = np.asarray(Image.open(root / "corpus" / "top_level.png").convert("RGB"))
    assert (top["width"], top["height"], top["channels"], top["pixel_encoding"]) == (RES, RES, 3, "raw")
    assert (np.frombuffer(top["pixels"], np.uint8).reshape(RES, RES, 3) == expected).all()
    rot = np.frombuffer(rows[f"file:{root}/corpus/birds/rotated.jpg"]["pixels"], np.uint8).reshape(RES, RES, 3).astype(int)
    assert np.abs(rot[3, 32] - [255, 0, 0]).max() < 30 and np.abs(rot[-4, 32] - [0, 0, 255]).max() < 30
    rgba = np.frombuffer(rows[f"file:{root}/corpus/dogs/rgba.png"]["pixels"], np.uint8).reshape(RES, RES, 3)
    assert rgba[3, 32].tolist() == [255, 255, 255] and rgba[-4, 32].tolist() == [200, 0, 0]


def test_manifest_stats_match_the_written_pixels(job):
    table = _images(job["out"])
    pixels = np.stack([np.frombuffer(p, np.uint8).reshape(RES, RES, 3) for p in table.column("pixels").to_pylist()]) / 255.0
    m = job["manifest"]
    assert m.pixel_mean == pytest.approx(pixels.mean(axis=(0, 1, 2)).tolist(), abs=1e-5)
    assert m.pixel_std == pytest.approx(pixels.std(axis=(0, 1, 2)).tolist(), abs=1e-5)
    assert m.schema_version == SCHEMA_VERSION and m.resolution == RES and m.channels == 3
    assert m.config["resolution"] == RES and m.config["labels"] == "dirs"
    assert len(m.input_fingerprint) == 32 and m.versions["pyspark"].startswith("4.")
    assert {"list_inputs", "decode", "write", "total"} <= set(m.timings)
    assert m.extra["class_to_index"] == {c: i for i, c in enumerate(m.classes)}
    assert not (job["out"] / "_staging").exists()


def test_existing_dataset_is_not_overwritten_without_flag(job, spark):
    before = (job["out"] / "manifest.json").read_text()
    with pytest.raises(DatasetExistsError, match="--overwrite"):
        run_preprocess(spark, [str(job["root"] / "corpus")], str(job["out"]), PreprocessConfig())
    assert (job["out"] / "manifest.json").read_text() == before


def test_overwrite_replaces_the_previous_run(spark, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(encode(photo_like(48, 48, seed=1), "PNG"))
    out = tmp_path / "out"
    first = run_preprocess(spark, [str(src)], str(out), PreprocessConfig(resolution=32)).manifest
    (src / "b.png").write_bytes(encode(photo_like(48, 48, seed=2), "PNG"))
    second = run_preprocess(spark, [str(src)], str(out), PreprocessConfig(resolution=32, overwrite=True)).manifest
    assert Manifest.read(str(out)).run_id == second.run_id != first.run_id
    assert [p.name for p in (out / "images").iterdir()] == [f"run_id={second.run_id}"]
    assert _images(out).num_rows == 2 and second.counts["inputs"] == 2


def test_failed_run_leaves_no_manifest_and_nothing_complete(spark, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(encode(photo_like(48, 48, seed=1), "PNG"))
    out = tmp_path / "out"
    monkeypatch.setenv("IMAGEGEN_FAULT", "error:commit:first-move")  # fails after the commit moved images/ into place
    with pytest.raises(InjectedFault, match="injected failure at commit:first-move"):
        run_preprocess(spark, [str(src)], str(out), PreprocessConfig(resolution=32))
    assert not out.exists()  # the run made OUT, committed nothing, and removed it: OUT is as it was


def test_dry_run_counts_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(encode(photo_like(48, 48, seed=i), "PNG"))
    out = tmp_path / "out"
    assert main([str(src), "--output", str(out), "--dry-run", "--master", "local[2]"]) == 0
    text = capsys.readouterr().out
    assert "files to decode: 3" in text and '"resolution": 64' in text
    assert not out.exists()


def test_sidecar_labels_report_unmatched_and_unlabeled_with_uri_output(spark, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name, seed in (("a.png", 1), ("sub/b.png", 2), ("c.png", 3)):
        (src / name).write_bytes(encode(photo_like(48, 48, seed=seed), "PNG"))
    sidecar = src / "labels.csv"  # inside the input: excluded from the inputs
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # rejected, but its sidecar entry matched a file
    sidecar.write_text("path,label\na.png,ant\nsub/b.png,bee\nghost.png,ghost\nbroken.png,ant\n")
    out = f"file:{tmp_path}/out"  # a URI: the commit goes through Hadoop's FileSystem API
    cfg = PreprocessConfig(resolution=32, labels=LabelMode.SIDECAR, labels_path=str(sidecar), progress_interval_s=1.0)
    m = run_preprocess(spark, [str(src)], out, cfg).manifest
    assert m.counts["inputs"] == 4 and m.counts["written"] == 3 and sum(m.counts["rejected"].values()) == 1
    assert m.classes == ["ant", "bee"] and m.label_counts == {"ant": 1, "bee": 1}
    labels = m.extra["labels"]
    assert labels["unlabeled"] == 1 and labels["unlabeled_examples"] == [f"file:{src}/c.png"]
    assert labels["sidecar_unmatched"] == 1 and labels["sidecar_unmatched_examples"] == ["ghost.png"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["run_id"] == m.run_id
    assert list((tmp_path / "out" / "images").glob(f"run_id={m.run_id}/*.parquet"))


def test_spark_submit_runs_the_job_file(tmp_path, venv_bin, subprocess_env):
    src = tmp_path / "src" / "k"
    src.mkdir(parents=True)
    for i in range(2):
        (src / f"{i}.jpg").write_bytes(encode(photo_like(64, 48, seed=i), "JPEG"))
    (src / "junk.bin").write_bytes(b"\x00" * 10)
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(venv_bin / "spark-submit"), "--master", "local[1]", "--driver-memory", "1g", str(REPO / "jobs" / "preprocess.py"),
         str(tmp_path / "src"), "--output", str(out), "--resolution", "32", "--labels", "dirs"],
        env=subprocess_env, capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = Manifest.read(str(out))
    assert (m.counts["inputs"], m.counts["written"], m.counts["rejected"]["not_an_image"]) == (3, 2, 1)
    assert m.classes == ["k"] and "written" in proc.stdout
    # progress lines while it runs (spark-submit merges the Python driver's stderr into its stdout)
    assert "] decode" in proc.stdout + proc.stderr


@pytest.mark.parametrize("decided_by", ["driver", "spark"])
def test_stats_count_only_the_kept_images(spark, tmp_path, monkeypatch, decided_by):
    """The manifest's classes, label counts, channels and mean/std describe the written images, not every valid
    input: the dropped duplicates' share (a class made only of a duplicate, a colour copy of a grey picture) is
    taken out of the decode stage's sums, whether the driver decided the dedup (it carries the dropped rows' sums)
    or the distributed path did (one aggregation over the dropped rows)."""
    if decided_by == "spark":
        monkeypatch.setattr(preprocess_module, "DedupConfig", functools.partial(DedupConfig, driver_max_rows=0))
    root = tmp_path / "in"
    for cls, seeds in {"a": (1, 2, 3), "b": (4, 5)}.items():
        (root / cls).mkdir(parents=True)
        for s in seeds:
            photo_like(96, 96, seed=s).convert("L").save(root / cls / f"p{s}.png")
    (root / "c").mkdir()
    (root / "c" / "copy.png").write_bytes((root / "a" / "p1.png").read_bytes())            # exact: class c is empty
    grey = np.asarray(Image.open(root / "b" / "p4.png").convert("RGB").resize((80, 80), Image.Resampling.LANCZOS)).astype(np.int16)
    tinted = np.clip(grey + np.array([3, 0, -3]), 0, 255).astype(np.uint8)                  # a colour near duplicate, ranked
    Image.fromarray(tinted, "RGB").save(root / "b" / "tinted.png")                          # below its grey 96 px original
    out = tmp_path / "out"
    assert main([str(root), "--output", str(out), "--resolution", "32", "--labels", "dirs", "--master", "local[2]"]) == 0
    m = Manifest.read(str(out))
    dups = pads.dataset(str(out / "duplicates"), format="parquet", partitioning="hive").to_table().to_pylist()
    assert sorted((d["source_uri"].rsplit("/", 2)[-2], d["kind"]) for d in dups) == [("b", "near"), ("c", "exact")]
    table = _images(out)
    assert m.classes == ["a", "b"] and m.label_counts == {"a": 3, "b": 2} and m.counts["written"] == table.num_rows == 5
    assert m.channels == 1  # every kept image is grey; the dropped tinted copy is not
    pixels = np.stack([np.frombuffer(p, np.uint8) for p in table.column("pixels").to_pylist()]) / 255.0
    assert m.pixel_mean == pytest.approx([pixels.mean()], abs=1e-5)
    assert m.pixel_std == pytest.approx([pixels.std()], abs=1e-5)
