"""Ctrl-C to `imagegen nightly`'s process group, or a scheduler's SIGTERM to its pid alone, mid-training (13/14):
the signal reaches the training (in process, or a torchrun child that runs in a session of its own and gets it once,
from the night), which checkpoints its step; the night records the step as interrupted, releases its lock, leaves the
registry as it was, prints one line and exits 128 + signal, and no process of it survives. The same command again
resumes training from the step it stopped at and completes the night."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jobs.registry import Registry
from tests.jobs.test_nightly import PREPROCESS, TRAIN, _add_digits
from tests.jobs.test_train_faults import _job_pids

REPO = Path(__file__).resolve().parents[2]
DATE = "2026-03-01"
STEPS = 150  # more than the test waits for before it signals; the rerun trains the rest
pytestmark = pytest.mark.timeout(1200)


def _train_steps(root: Path) -> list[int]:
    f = root / "runs" / "nightly" / DATE / "train" / "metrics.jsonl"
    return [json.loads(line)["step"] for line in f.read_text().splitlines() if line.strip()] if f.exists() else []


@pytest.mark.parametrize(("launcher", "sig", "to_group"), [("none", signal.SIGINT, True),
                                                            ("torchrun", signal.SIGTERM, False)],
                         ids=["in-process, Ctrl-C to the group", "torchrun, SIGTERM to the pid"])
def test_a_signal_mid_training_stops_the_night_cleanly_and_the_rerun_resumes_there(launcher, sig, to_group, tmp_path):
    inbox, root = tmp_path / "inbox", tmp_path / "root"
    _add_digits(inbox, 0, 20, 0)
    _add_digits(inbox, 1, 20, 0)
    config = tmp_path / "nightly.yaml"
    config.write_text(yaml.safe_dump({"input": str(inbox), "root": str(root), "steps": STEPS, "batch_size": 16,
                                      "eval_samples": 40, "min_recall": 0.0, "master": "local[2]", "launcher": launcher,
                                      "preprocess": PREPROCESS, "train": {**TRAIN, "log_every": 1}}))
    cmd = [sys.executable, "-m", "jobs.cli", "nightly", "--config", str(config), "--date", DATE]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("IMAGEGEN_NIGHTLY_FAULT", None)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while len(_train_steps(root)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    (os.killpg if to_group else os.kill)(proc.pid, sig)
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 128 + sig, (proc.returncode, out[-2000:], err[-3000:])
    night = [line for line in err.splitlines() if line.startswith("imagegen nightly:")]
    assert night == [f"imagegen nightly: {DATE}: interrupted by {sig.name} during train; the promoted model is none; "
                     "rerun the same command to resume at 'train'"], err[-3000:]
    trained = [line for line in err.splitlines() if "imagegen train: interrupted" in line]
    assert len(trained) == 1 and "checkpoint" in trained[0], err[-3000:]  # rank 0 saved the step it stopped at
    stopped = int(trained[0].split(" at step ")[1].split(":")[0])
    if launcher == "none":
        assert "Traceback" not in err, err[-3000:]
    state = json.loads((root / "runs" / "nightly" / DATE / "state.json").read_text())
    assert state["status"] == "interrupted" and state["steps"]["train"] == {"status": "interrupted", "signal": sig.name}
    assert not (root / "_lock").exists(), "the night kept its lock"
    assert Registry.at(root).current() is None and Registry.at(root).versions() == []
    time.sleep(1.0)
    assert not _job_pids(str(root)), "a process of the interrupted night survived"

    rerun = subprocess.run(cmd, cwd=REPO, env=env, text=True, capture_output=True, timeout=900, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming {DATE} after preprocess" in rerun.stdout + rerun.stderr
    steps = _train_steps(root)
    assert steps[-1] == STEPS and steps.count(stopped + 1) == 1 and sorted(set(steps)) == list(range(1, STEPS + 1))
    state = json.loads((root / "runs" / "nightly" / DATE / "state.json").read_text())
    assert state["status"] == "done" and state["steps"]["train"]["step"] == STEPS
    assert [v["version"] for v in Registry.at(root).versions()] == ["v0001"]
