"""Shared fixtures. One real local Spark session for the whole test session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # horovodrun, torchrun, spark-submit, imagegen live here


@pytest.fixture(scope="session")
def spark():
    from pipelines.spark import get_spark

    session = get_spark("local[2]", app_name="imagegen-tests", conf={"spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    return VENV_BIN


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for launched processes: the venv first on PATH, the repo importable."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    return env


TINY_ROWS = 96  # training tests count on this: e.g. 96 rows / (2 ranks x batch 8) = 6 steps per epoch


@pytest.fixture(scope="session")
def tiny_dataset(spark, tmp_path_factory) -> Path:
    """The first 96 MNIST test digits as PNG files in one folder per class, through the real
    preprocess job (32 px, labels from directories). Dedup is off so the row count is exact: the
    training tests divide it among ranks; dedup has its own tests."""
    from PIL import Image

    from jobs.corpus import load_mnist
    from pipelines.config import LabelMode, PreprocessConfig
    from pipelines.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("tiny")
    images, labels = load_mnist("test")
    for i in range(TINY_ROWS):
        (root / "src" / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / "src" / str(labels[i]) / f"{i:03d}.png")
    cfg = PreprocessConfig(resolution=32, labels=LabelMode.DIRS, min_size=16, dedup=False, progress_interval_s=60)
    manifest = run_preprocess(spark, [str(root / "src")], str(root / "ds"), cfg, log=lambda s: None).manifest
    assert manifest.counts["written"] == TINY_ROWS and manifest.classes == [str(d) for d in range(10)]
    return root / "ds"
