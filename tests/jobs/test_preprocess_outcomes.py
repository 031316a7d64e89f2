"""No silent outcome: empty runs fail with the reason, labels that match nothing fail, untrainable resolutions are
refused before Spark starts, MNIST-sized images pass the defaults, grey collections are stored with one channel."""
from __future__ import annotations

import subprocess

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from jobs.corpus import load_mnist
from jobs.preprocess import main
from pipelines.config import ChannelMode, LabelMode, PreprocessConfig
from pipelines.preprocess import NothingWrittenError, run_preprocess
from schemas.pixels import decode_pixels
from tests.conftest import REPO
from tests.pipelines.imagefactory import encode, photo_like

QUIET = dict(progress_interval_s=60)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """60 MNIST test digits (28 px, grey) in class folders."""
    root = tmp_path_factory.mktemp("digits") / "src"
    images, labels = load_mnist("test")
    for i in range(60):
        (root / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / str(labels[i]) / f"{i:03d}.png")
    return root


def _run(spark, inputs, out, **cfg):
    return run_preprocess(spark, [str(i) for i in inputs], str(out), PreprocessConfig(**{**QUIET, **cfg}), log=lambda s: None).manifest


@pytest.mark.parametrize("resolution", [32, 64])
def test_mnist_sized_images_pass_the_defaults_and_are_stored_grey(spark, digits, tmp_path, resolution):
    m = _run(spark, [digits], tmp_path / "ds", resolution=resolution, labels=LabelMode.DIRS)
    assert m.counts["written"] + sum(m.counts["duplicates"].values()) == 60 and sum(m.counts["rejected"].values()) == 0
    assert m.channels == 1 and len(m.pixel_mean) == len(m.pixel_std) == 1
    table = pads.dataset(str(tmp_path / "ds" / "images"), format="parquet", partitioning="hive").to_table()
    assert set(table.column("channels").to_pylist()) == {1}
    px = decode_pixels(table.column("pixels")[0].as_py(), resolution, resolution, 1, "raw")
    all_px = np.stack([decode_pixels(p.as_py(), resolution, resolution, 1, "raw") for p in table.column("pixels")])
    assert px.shape == (resolution, resolution, 1)
    assert m.pixel_mean[0] == pytest.approx(all_px.mean() / 255, abs=1e-5)
    assert m.pixel_std[0] == pytest.approx(all_px.std() / 255, abs=1e-5)


def test_channels_auto_keeps_colour_and_flags_override(spark, digits, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, p in enumerate(sorted(digits.rglob("*.png"))[:6]):
        (mixed / f"d{i}.png").write_bytes(p.read_bytes())
    (mixed / "colour.png").write_bytes(encode(photo_like(48, 48, seed=4), "PNG"))
    m = _run(spark, [mixed], tmp_path / "auto", resolution=32)
    assert m.channels == 3 and len(m.pixel_mean) == 3
    m1 = _run(spark, [mixed], tmp_path / "one", resolution=32, channels=ChannelMode.GREY)
    assert m1.channels == 1
    table = pads.dataset(str(tmp_path / "one" / "images"), format="parquet", partitioning="hive").to_table()
    assert set(table.column("channels").to_pylist()) == {1} and {len(p) for p in table.column("pixels").to_pylist()} == {32 * 32}
    m3 = _run(spark, [digits], tmp_path / "three", resolution=32, channels=ChannelMode.RGB)
    assert m3.channels == 3 and m3.pixel_mean[0] == m3.pixel_mean[1] == m3.pixel_mean[2]


def test_all_rejected_fails_naming_the_reason_and_flag(spark, digits, tmp_path):
    with pytest.raises(NothingWrittenError, match=r"no image was written: 60 of 60 inputs rejected, most as too_small \(60\); .*lower --min-size"):
        _run(spark, [digits], tmp_path / "ds", resolution=32, min_size=30)
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_more_than_half_rejected_warns(spark, digits, tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    for i, p in enumerate(sorted(digits.rglob("*.png"))[:3]):
        (folder / f"d{i}.png").write_bytes(p.read_bytes())
    for i in range(4):
        (folder / f"junk{i}.jpg").write_text("not an image")
    lines: list[str] = []
    run_preprocess(spark, [str(folder)], str(tmp_path / "ds"), PreprocessConfig(resolution=32, **QUIET), log=lines.append)
    assert any("warning: 4 of 7 inputs rejected, most as not_an_image (4)" in line for line in lines), lines


def test_labels_asked_for_but_none_found_fails(spark, digits, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, p in enumerate(sorted(digits.rglob("*.png"))[:5]):
        (flat / f"d{i}.png").write_bytes(p.read_bytes())
    with pytest.raises(NothingWrittenError, match=r"labels=dirs was asked for, but none of the 5 images got a label.*--labels none"):
        _run(spark, [flat], tmp_path / "ds", resolution=32, labels=LabelMode.DIRS)


def test_untrainable_resolution_refused_before_spark_starts(tmp_path, capsys):
    assert main([str(tmp_path), "--output", str(tmp_path / "out"), "--resolution", "48"]) == 2
    err = capsys.readouterr().err
    assert "resolution 48: the models train on 32, 64, 128 pixels; pass --resolution 64" in err
    assert "Spark" not in err and not (tmp_path / "out").exists()


def test_cli_exits_nonzero_with_one_line(digits, tmp_path, venv_bin, subprocess_env):
    run = subprocess.run([str(venv_bin / "imagegen"), "preprocess", str(digits), "--output", str(tmp_path / "ds"),
                          "--resolution", "32", "--min-size", "30", "--master", "local[1]"],
                         capture_output=True, text=True, env=subprocess_env, timeout=300, cwd=REPO)
    assert run.returncode == 1, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("imagegen preprocess: failed:")]
    assert len(errors) == 1 and "most as too_small (60)" in errors[0] and "Traceback" not in run.stderr


def test_job_leaves_the_callers_session_settings_alone(spark, digits, tmp_path):
    key, unset_key = "spark.sql.execution.arrow.maxRecordsPerBatch", "spark.sql.files.minPartitionNum"
    before, before_unset = spark.conf.get(key), spark.conf.get(unset_key, None)
    _run(spark, [digits], tmp_path / "ds", resolution=32, arrow_batch_rows=7, partitions=3, dedup=False)
    assert spark.conf.get(key) == before and spark.conf.get(unset_key, None) == before_unset
