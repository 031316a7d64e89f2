"""A training rank killed for real (SIGKILL by pid) under horovodrun and torchrun (gloo, CPU): the whole job ends, non-zero,
within a generous hang bound, and `--resume auto` to the same total steps gives exactly the uninterrupted run's weights,
optimizer states and metric rows, each step row once and in order (7/9)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.training.conftest import write_digits_dataset
from training import checkpoint

REPO = Path(__file__).resolve().parents[2]
TOTAL, EVERY = 40, 5  # 6 steps per epoch at 2 ranks x batch 8 over 96 rows: the run crosses several epochs
ARGS = ["--model", "dcgan", "--batch-size", "8", "--base-channels", "8", "--z-dim", "16", "--num-samples", "8",
        "--sample-every", "0", "--log-every", str(EVERY), "--ckpt-every", str(EVERY), "--keep-ckpts", "0",
        "--steps", str(TOTAL), "--deterministic", "true", "--progress", "false"]
TIMING_KEYS = {"step_time_s", "images_per_s"}  # wall-clock measurements, the only values allowed to differ
HANG_BOUND_S = 60.0  # a hang detector, not a speed target


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits_dataset(tmp_path_factory.mktemp("faults") / "ds")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(launcher: str, venv_bin: Path, data: Path, run: Path, *extra: str) -> list[str]:
    train = ["--data", str(data), "--run-dir", str(run), *ARGS, *extra]
    if launcher == "horovod":
        return [str(venv_bin / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", str(venv_bin / "imagegen"), "train", *train]
    return [str(venv_bin / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
            str(_free_port()), "-m", "jobs.train", *train]


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd[0]} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _read(path: str, name: str) -> bytes:
    try:
        with open(f"{path}/{name}", "rb") as f:
            return f.read()
    except OSError:  # the process ended, or is not ours to read
        return b""


def _job_pids(marker: str) -> set[int]:
    """Every live process whose command line names `marker` (this test's own run directory)."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            cmdline = _read(entry.path, "cmdline")
            if marker.encode() in cmdline and _read(entry.path, "stat").split(b") ")[-1][:1] != b"Z":
                found.add(int(entry.name))
    return found


def _rank_pid(marker: str, var: str, rank: int) -> int:
    """The python process of `rank`: its environment has var=rank and its command line names this test's run dir."""
    pids = []
    for pid in _job_pids(marker):
        env = _read(f"/proc/{pid}", "environ").split(b"\0")
        if f"{var}={rank}".encode() in env and "python" in os.path.basename(os.readlink(f"/proc/{pid}/exe")):
            pids.append(pid)
    assert len(pids) == 1, f"expected one process with {var}={rank} naming {marker}, found {pids}"
    return pids[0]


def _kill_rank_mid_run(cmd: list[str], env: dict[str, str], run: Path, var: str) -> tuple[subprocess.CompletedProcess, float, int]:
    """Start the job, wait for its first checkpoint, SIGKILL rank 1 by pid; returns (result, seconds until every process
    of the job is gone, the newest checkpoint step at the kill)."""
    marker = str(run)
    first = checkpoint.path_for(run, EVERY)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not first.exists():
            assert proc.poll() is None, f"the job ended before its first checkpoint:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "no first checkpoint within 240 s"
            time.sleep(0.02)
        victim = _rank_pid(marker, var, 1)
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()
        at_kill = checkpoint.list_checkpoints(run)[-1].name
        out, _ = proc.communicate(timeout=HANG_BOUND_S)
        while _job_pids(marker) and time.monotonic() - t_kill < HANG_BOUND_S:
            time.sleep(0.05)
        ended = time.monotonic() - t_kill
        left = _job_pids(marker)
        assert not left, f"processes of the job still alive {ended:.1f} s after rank 1 was killed: {sorted(left)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _job_pids(marker):  # only processes naming this test's own run directory
            os.kill(pid, signal.SIGKILL)
    assert int(at_kill[5:13]) < TOTAL, f"the job had finished ({at_kill}) before rank 1 was killed: nothing was interrupted"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, ""), ended, int(at_kill[5:13])


def _assert_equal_state(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _assert_equal_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("launcher,rank_var", [("horovod", "HOROVOD_RANK"), ("torchrun", "RANK")])
def test_a_killed_rank_ends_the_job_and_resume_is_exact(launcher: str, rank_var: str, digits: Path, tmp_path: Path,
                                                        venv_bin: Path, subprocess_env: dict) -> None:
    ref, run = tmp_path / "uninterrupted", tmp_path / "killed"
    _run(_command(launcher, venv_bin, digits, ref), subprocess_env)

    killed, ended_s, at_kill = _kill_rank_mid_run(_command(launcher, venv_bin, digits, run), subprocess_env, run, rank_var)
    print(f"[{launcher}] rank 1 SIGKILLed after checkpoint {at_kill}: every process of the job gone after {ended_s:.2f} s, "
          f"launcher exit {killed.returncode}")
    assert killed.returncode != 0, f"{launcher} exited 0 after a rank was killed:\n{killed.stdout[-3000:]}"
    assert ended_s < HANG_BOUND_S

    resumed = _run(_command(launcher, venv_bin, digits, run, "--resume", "auto"), subprocess_env)
    from_step = [line for line in resumed.stdout.splitlines() if "[train] resumed from" in line]
    assert len(from_step) == 1, resumed.stdout[-3000:]
    start = int(from_step[0].split(" at step ")[1].split()[0])
    assert EVERY <= start < TOTAL, from_step[0]  # it really continued mid-way

    final = checkpoint.path_for(run, TOTAL)
    got, want = checkpoint.load(final), checkpoint.load(checkpoint.path_for(ref, TOTAL))
    assert (got["step"], got["epoch"], got["step_in_epoch"]) == (want["step"], want["epoch"], want["step_in_epoch"])
    _assert_equal_state(got["models"], want["models"], "models")
    _assert_equal_state(got["optimizers"], want["optimizers"], "optimizers")

    rows, ref_rows = _rows(run), _rows(ref)
    assert [r["step"] for r in rows] == list(range(EVERY, TOTAL + 1, EVERY))  # each step row once, in order
    for r, w in zip(rows, ref_rows):
        assert {k: v for k, v in r.items() if k not in TIMING_KEYS} == {k: v for k, v in w.items() if k not in TIMING_KEYS}
