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
