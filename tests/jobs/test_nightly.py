"""`imagegen nightly` over several nights on one ROOT: incremental data, warm starts across a new class, promotion
decided by the evaluation numbers, idempotent dates, resume at the failed step, one night at a time; and the
registry CLI (8/9). Real Spark, real training, real evaluation, tiny sizes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from jobs import models as models_cli
from jobs.nightly import NightlyConfig, NightlyStepError, config_from_args, run_nightly, sanity_problems
from jobs.registry import Registry
from schemas import Manifest

REPO = Path(__file__).resolve().parents[2]
# five nights of real Spark, training and evaluation in one module fixture: about 3 minutes on an idle 2-core machine
pytestmark = pytest.mark.timeout(2400)
PREPROCESS = {"resolution": 32, "labels": "dirs", "partitions": 2}
TRAIN = {"base_channels": 8, "z_dim": 16, "log_every": 2, "seed": 0}


def _add_digits(inbox: Path, digit: int, count: int, start: int) -> None:
    """`count` sklearn digits of class `digit` (the start-th onwards), as 28x28 PNGs in inbox/<digit>/."""
    x, y = load_digits(return_X_y=True)
    rows = np.flatnonzero(y == digit)[start : start + count]
    (inbox / str(digit)).mkdir(parents=True, exist_ok=True)
    for i in rows:
        img = Image.fromarray((x[i].reshape(8, 8) * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR)
        img.save(inbox / str(digit) / f"d{i:04d}.png")


def _cfg(inbox: Path, root: Path, date: str, **kw) -> NightlyConfig:
    return NightlyConfig(**{"input": str(inbox), "root": str(root), "date": date, "steps": 8, "batch_size": 16,
                            "eval_samples": 40, "min_recall": 0.0, "master": "local[2]", **kw})


def _night(inbox, root, date, **kw) -> dict:
    return run_nightly(_cfg(inbox, root, date, **kw), PREPROCESS, TRAIN, log=lambda s: None)


@pytest.fixture(scope="module")
def nights(spark, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("nightly")
    inbox, root = base / "inbox", base / "root"
    _add_digits(inbox, 0, 20, 0)
    _add_digits(inbox, 1, 20, 0)
    out: dict = {"inbox": inbox, "root": root}
    out["n1"] = _night(inbox, root, "2026-01-01")
    out["n1_versions"] = [v["version"] for v in Registry.at(root).versions()]
    out["n1_again"] = _night(inbox, root, "2026-01-01")
    # night 2: a new class and more of an old one; the evaluate step fails once, then the night is rerun
    _add_digits(inbox, 2, 20, 0)
    _add_digits(inbox, 0, 5, 20)
    import os

    os.environ["IMAGEGEN_NIGHTLY_FAULT"] = "evaluate"
    try:
        with pytest.raises(NightlyStepError, match="step 'evaluate' failed: RuntimeError: IMAGEGEN_NIGHTLY_FAULT"):
            _night(inbox, root, "2026-01-02")
    finally:
        del os.environ["IMAGEGEN_NIGHTLY_FAULT"]
    out["n2_failed_state"] = json.loads((root / "runs/nightly/2026-01-02/state.json").read_text())
    out["n2_failed_current"] = Registry.at(root).current()
    out["n2_manifest_runs"] = len(Manifest.read(str(root / "dataset")).runs)
    out["n2"] = _night(inbox, root, "2026-01-02")
    out["n2_manifest_runs_after"] = len(Manifest.read(str(root / "dataset")).runs)
    out["n3"] = _night(inbox, root, "2026-01-03")  # nothing new arrived
    _add_digits(inbox, 1, 10, 20)
    out["n4"] = _night(inbox, root, "2026-01-04", margin=0.05)
    return out


def test_first_night_preprocesses_trains_evaluates_and_promotes(nights):
    n1 = nights["n1"]
    assert n1["status"] == "done" and [n1["steps"][s]["status"] for s in ("preprocess", "train", "evaluate", "promote")] == ["done"] * 4
    assert n1["steps"]["preprocess"]["new_images"] == 40 and n1["steps"]["train"]["warm_start"] is None
    assert n1["steps"]["promote"]["promoted"] is True and "first night" in n1["steps"]["promote"]["reason"]
    assert nights["n1_versions"] == ["v0001"] and n1["current"] == "v0001"
    summary = (nights["root"] / "runs/nightly/2026-01-01/summary.txt").read_text()
    assert "v0001 PROMOTED" in summary and "40 new image(s)" in summary
    v1 = Registry.at(nights["root"]).get("v0001")
    assert v1["manifest_id"] == n1["steps"]["preprocess"]["manifest_id"] and v1["config"]["model"] == "cdcgan"
    assert v1["code_version"] and "fid" in v1["metrics"]["metrics"]


def test_a_finished_night_is_not_run_again(nights):
    assert nights["n1_again"] == json.loads((nights["root"] / "runs/nightly/2026-01-01/state.json").read_text())
    assert nights["n1_again"]["steps"]["promote"]["version"] == "v0001"


def test_a_failed_step_leaves_the_promoted_model_and_the_rerun_resumes_there(nights):
    failed = nights["n2_failed_state"]
    assert failed["status"] == "failed" and failed["steps"]["evaluate"]["status"] == "failed"
    assert failed["steps"]["preprocess"]["status"] == failed["steps"]["train"]["status"] == "done"
    assert nights["n2_failed_current"] == "v0001"
    # the rerun did not preprocess again (no new run in the manifest) nor retrain (same checkpoint)
    assert nights["n2_manifest_runs_after"] == nights["n2_manifest_runs"]
    n2 = nights["n2"]
    assert n2["steps"]["train"]["checkpoint"] == failed["steps"]["train"]["checkpoint"]
    assert n2["status"] == "done"


def test_warm_start_grows_to_the_new_class(nights):
    n2 = nights["n2"]
    assert n2["steps"]["preprocess"]["new_images"] == 25 and n2["steps"]["preprocess"]["classes"] == 3
    assert n2["steps"]["train"]["warm_start"].endswith("registry/versions/v0001/model.pt")
    # v0001 knows 2 classes: it cannot be asked for class 2, which is said, and the candidate is judged alone
    assert "v0001 cannot be evaluated" in n2["steps"]["evaluate"]["promoted_error"]
    assert n2["steps"]["promote"]["promoted"] is True and n2["current"] == "v0002"


def test_a_night_without_new_images_trains_nothing(nights):
    n3 = nights["n3"]
    assert n3["steps"]["preprocess"]["new_images"] == 0
    assert n3["steps"]["train"]["status"] == "skipped" and "0 new image(s) < min_new_images 1" in n3["steps"]["train"]["reason"]
    assert n3["steps"]["promote"]["status"] == "skipped" and n3["current"] == "v0002"


def test_promotion_follows_the_numbers(nights):
    n4 = nights["n4"]
    ev, pr = n4["steps"]["evaluate"], n4["steps"]["promote"]
    assert ev["promoted"]["version"] == "v0002"
    # same extractor and the same reference statistics for both
    assert ev["candidate"]["extractor"]["key"] == ev["promoted"]["extractor"]["key"]
    assert ev["candidate"]["reference"]["cache"] == ev["promoted"]["reference"]["cache"]
    new, old = ev["candidate"]["metrics"]["fid"]["value"], ev["promoted"]["metrics"]["fid"]["value"]
    assert pr["promoted"] is (new <= old * 0.95)
    assert n4["current"] == ("v0003" if pr["promoted"] else "v0002")
    assert Registry.at(nights["root"]).get("v0003")["status"] == ("promoted" if pr["promoted"] else "rejected")


def test_models_cli_lists_shows_promotes_and_rolls_back(nights, capsys):
    root = str(nights["root"])
    assert models_cli.main(["list", "--root", root, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in listed["versions"]] == ["v0001", "v0002", "v0003"]
    before = listed["current"]
    assert models_cli.main(["promote", "v0001", "--root", root]) == 0
    assert Registry.at(root).current() == "v0001"
    assert models_cli.main(["rollback", "--root", root]) == 0
    assert Registry.at(root).current() == before
    assert models_cli.main(["show", "v0009", "--root", root]) == 2
    assert "no version 'v0009'" in capsys.readouterr().err


def test_sanity_checks_refuse_a_collapsed_or_broken_candidate():
    good = {"metrics": {"fid": {"value": 1.0}, "recall": {"value": 0.4}}}
    assert sanity_problems(good, 0.01) == []
    assert sanity_problems({"metrics": {"fid": {"value": float("nan")}, "recall": {"value": 0.0}}}, 0.01) == [
        "fid is nan", "recall 0 < min_recall 0.01 (collapsed, or nowhere near the data)"]


def test_config_is_strict_and_flags_override_the_file(tmp_path):
    f = tmp_path / "nightly.yaml"
    f.write_text("input: /in\nroot: /r\nsteps: 20\nmargin: 0.1\ntrain:\n  base_channels: 8\npreprocess:\n  resolution: 64\n")
    cfg, pre, train = config_from_args(["--config", str(f), "--steps", "30"])
    assert (cfg.steps, cfg.margin, pre, train) == (30, 0.1, {"resolution": 64}, {"base_channels": 8})
    f.write_text("input: /in\nroot: /r\nstep: 20\n")
    run = subprocess.run([sys.executable, "-m", "jobs.cli", "nightly", "--config", str(f)], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and "unknown nightly config keys: 'step' (did you mean 'steps'?)" in run.stderr and "steps" in run.stderr
    f.write_text("input: /in\nroot: /r\ntrain:\n  steps: 5\n")
    run = subprocess.run([sys.executable, "-m", "jobs.cli", "nightly", "--config", str(f)], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and "are set by the nightly loop" in run.stderr
