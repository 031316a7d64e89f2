"""The first five minutes: user mistakes are one clear line plus a hint, found before Spark or torch start (9/9)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _imagegen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command, typo, meant", [
    ("preprocess", "--ouput", "--output"), ("train", "--dta", "--data"), ("nightly", "--rot", "--root"),
    ("evaluate", "--checkpont", "--checkpoint"),
])
def test_a_typo_in_an_option_is_named_with_a_suggestion(tmp_path, command, typo, meant):
    run = _imagegen(command, str(tmp_path), typo, str(tmp_path / "x"))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == f"imagegen {command}: error: unknown option {typo}; did you mean {meant}?"
    assert "required" not in run.stderr


def test_a_missing_input_fails_before_spark_starts(tmp_path):
    run = _imagegen("preprocess", str(tmp_path / "nope"), "--output", str(tmp_path / "out"))
    assert run.returncode == 2
    assert run.stderr.strip() == f"imagegen preprocess: input not found: {tmp_path / 'nope'} (check the path; globs must match at least one file)"
    assert "Spark" not in run.stderr + run.stdout and not (tmp_path / "out").exists()


def test_train_and_dedup_eval_on_a_folder_that_is_not_a_dataset_suggest_preprocess(tmp_path):
    for args in (("train", "--data", str(tmp_path), "--steps", "1"), ("dedup-eval", "--dataset", str(tmp_path), "--truth", "t.csv")):
        run = _imagegen(*args)
        assert run.returncode != 0 and "Traceback" not in run.stderr
        assert f"is not a complete imagegen dataset (no manifest); make one with `imagegen preprocess INPUT --output {tmp_path}`" in run.stderr


def test_help_shows_examples_and_defaults():
    run = _imagegen("preprocess", "--help")
    assert run.returncode == 0 and "examples:" in run.stdout and "--incremental" in run.stdout
    run = _imagegen("evaluate", "--help")
    assert run.returncode == 0 and "(default: 10000)" in run.stdout
