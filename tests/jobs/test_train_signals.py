"""Ctrl-C and SIGTERM sent to `imagegen train`'s process group mid-run, as a terminal or a scheduler does (13/14), with
one process, under `torchrun --nproc_per_node 2` and under `horovodrun -np 2`:
the step finishes, a checkpoint is written at that step, one line says where and how to resume, the exit code is
128 + signal, no process of the run survives, and `--resume auto` continues from the step it stopped at."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.jobs.test_train_faults import _free_port, _job_pids
from tests.training.conftest import write_digits_dataset
from training import checkpoint

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--model", "dcgan", "--batch-size", "8", "--base-channels", "8", "--z-dim", "16", "--num-samples", "8",
        "--sample-every", "0", "--log-every", "1", "--ckpt-every", "0", "--keep-ckpts", "0", "--progress", "false"]
NEVER = "100000"  # more steps than the test waits for: the run only ends by the signal


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits_dataset(tmp_path_factory.mktemp("signals") / "ds")


def _command(launcher: str, data: Path, run: Path, *extra: str) -> list[str]:
    train = ["--data", str(data), "--run-dir", str(run), *ARGS, *extra]
    bin_ = Path(sys.executable).parent
    if launcher == "horovodrun":
        return [str(bin_ / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", str(bin_ / "imagegen"), "train", *train]
    if launcher == "torchrun":
        return [str(bin_ / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port()), "-m", "jobs.train", *train]
    return [sys.executable, "-m", "jobs.train", *train]


def _unprefixed(line: str) -> str:
    """A rank's line without horovodrun's `[rank]<stderr>:` prefix."""
    return line.split("<stderr>:", 1)[1] if line.startswith("[") and "<stderr>:" in line else line


def _steps(run: Path) -> list[int]:
    f = run / "metrics.jsonl"
    return [json.loads(line)["step"] for line in f.read_text().splitlines() if line.strip()] if f.exists() else []


@pytest.mark.parametrize("launcher", ["single", "torchrun", "horovodrun"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_run_checkpoints_that_step_and_resume_continues_from_it(launcher, sig, digits, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_command(launcher, digits, run, "--steps", NEVER), cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    while len(_steps(run)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    lines = [_unprefixed(line) for line in err.splitlines() if "imagegen train: interrupted" in line]
    assert len(lines) == 1 and lines[0].startswith("imagegen train: interrupted"), err[-3000:]  # rank 0's line
    if launcher == "single":
        assert proc.returncode == 128 + sig, (proc.returncode, out[-2000:], err[-3000:])
        assert "Traceback" not in err, err[-3000:]
        assert f"by {sig.name} at step" in lines[0]
    else:  # the launcher reports the stop itself, non-zero, and passes it to the ranks as SIGTERM (horovodrun) or as is
        assert proc.returncode != 0
        assert f"by {sig.name} at step" in lines[0] or "by SIGTERM at step" in lines[0], lines
    assert "--resume auto" in lines[0]
    stopped = int(lines[0].split(" at step ")[1].split(":")[0])
    latest = checkpoint.find_latest_valid(run)
    assert latest is not None and latest[1]["step"] == stopped, (latest and latest[0], lines)
    assert str(latest[0]) in lines[0]
    assert stopped >= 3 and _steps(run)[-1] <= stopped
    time.sleep(1.0)
    assert not _job_pids(str(run)), "a process of the interrupted run survived"

    done = subprocess.run(_command(launcher, digits, run, "--steps", str(stopped + 2), "--resume", "auto"), cwd=REPO,
                          env=env, text=True, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _steps(run)[-2:] == [stopped + 1, stopped + 2]
    assert "[train] made:" in done.stdout and "next: imagegen evaluate" in done.stdout
