"""`imagegen nightly` SIGKILLed at each step in turn (and between registering and promoting), rerun on the same date
until it completes: the night finishes, nothing is registered twice, and the promoted pointer is never half-switched.
A second invocation while a night runs is refused by the lock (8/9)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.nightly import NightlyConfig, run_nightly
from jobs.registry import Registry
from pipelines.lock import LockedError, _process_start
from tests.jobs.test_nightly import PREPROCESS, TRAIN, _add_digits

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(2400)


def _pointer_is_whole(root: Path) -> None:
    """current.json is absent or names a version that exists whole (version.json and a verified model)."""
    reg = Registry.at(root)
    current = reg.current()
    if current is not None:
        from training import checkpoint

        assert reg.get(current)["status"] == "promoted"
        checkpoint.load(reg.checkpoint(current))


def test_nightly_killed_at_each_step_in_turn_then_rerun_completes(tmp_path):
    inbox, root = tmp_path / "inbox", tmp_path / "root"
    _add_digits(inbox, 0, 20, 0)
    _add_digits(inbox, 1, 20, 0)
    config = tmp_path / "nightly.yaml"
    config.write_text(yaml.safe_dump({"input": str(inbox), "root": str(root), "steps": 8, "batch_size": 16,
                                      "eval_samples": 40, "min_recall": 0.0, "master": "local[2]",
                                      "preprocess": PREPROCESS, "train": TRAIN}))
    cmd = [sys.executable, "-m", "jobs.cli", "nightly", "--config", str(config), "--date", "2026-02-01"]
    env = {k: v for k, v in os.environ.items() if k != "IMAGEGEN_NIGHTLY_FAULT"}
    outputs = []
    for point in ("preprocess", "train", "evaluate", "promote", "promote:registered"):
        run = subprocess.run(cmd, cwd=REPO, env={**env, "IMAGEGEN_NIGHTLY_FAULT": f"kill:{point}"},
                             capture_output=True, text=True, timeout=1200)
        assert run.returncode == -signal.SIGKILL, (point, run.stderr[-2000:])
        outputs.append(run.stdout + run.stderr)
        _pointer_is_whole(root)
        assert Registry.at(root).current() is None  # nothing was promoted by a night that never finished
    # each rerun took over the dead run's lock and resumed after the steps it had finished
    assert "removed the stale lock" in outputs[1] and "resuming 2026-02-01 after preprocess" in outputs[2]
    assert [v["version"] for v in Registry.at(root).versions()] == ["v0001"]  # registered once, before the last kill
    final = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert final.returncode == 0, final.stderr[-2000:]
    made, where, nxt = final.stdout.strip().splitlines()[-3:]  # the night ends like preprocess and train do
    assert made == "made: night 2026-02-01 done: v0001 promoted; current model v0001"
    assert where.startswith(f"where: {root / 'runs/nightly/2026-02-01'} (summary.txt, record.json)")
    assert nxt.startswith(f"next: imagegen models list --root {root}")
    state = json.loads((root / "runs/nightly/2026-02-01/state.json").read_text())
    assert state["status"] == "done" and state["steps"]["promote"]["version"] == "v0001"
    assert [v["version"] for v in Registry.at(root).versions()] == ["v0001"] and Registry.at(root).current() == "v0001"
    _pointer_is_whole(root)


def test_a_second_night_while_one_runs_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (root / "_lock").write_text(json.dumps({"pid": alive.pid, "host": socket.gethostname(),
                                                "start": _process_start(alive.pid), "time": "now", "command": "imagegen nightly"}))
        with pytest.raises(LockedError, match=rf"held by pid {alive.pid} .*imagegen nightly"):
            run_nightly(NightlyConfig(input=str(tmp_path), root=str(root), date="2026-02-02"), log=lambda s: None)
        assert not (root / "runs").exists()
    finally:
        alive.kill()
        alive.wait()
