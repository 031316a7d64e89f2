"""Ctrl-C and preemption in `imagegen preprocess` (13/14 item 4) and its console (item 6): real processes, real
signals sent to the process group as a terminal or a scheduler sends them, mid-stage."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from schemas import Manifest
from tests.pipelines.imagefactory import encode, photo_like

REPO = Path(__file__).resolve().parents[2]
N = 1500  # enough that decode lasts seconds on 2 cores, so the signal lands inside it
SPARK_CHATTER = ("incubator", "log4j", "NativeCodeLoader", "setLogLevel", "SparkUI", "WARN ")


def _corpus(root: Path, n: int, first: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + n):
        (root / f"p{i:05d}.jpg").write_bytes(encode(photo_like(160, 160, seed=i), "JPEG", quality=90))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("signals") / "src", N)


def _command(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "preprocess", str(src), "--output", str(out), "--resolution", "32",
            "--partitions", "4", "--master", "local[2]", *extra]


class Job:
    """A preprocess in a process group of its own (as a shell job is), its output read line by line."""

    def __init__(self, cmd: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"never saw {pattern!r}:\n" + "\n".join(self.lines[-30:]))

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def finish(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return rc


def _tree(out: Path) -> dict[str, str]:
    """Every file under OUT with its bytes' digest: 'as it was' means this, exactly."""
    if not out.exists():
        return {}
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def _gone(procs: list[psutil.Process], timeout: float = 20) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


def _interrupt(cmd: list[str], env: dict[str, str], sig: int, stage: str) -> tuple[int, list[str], list[psutil.Process]]:
    job = Job(cmd, env)
    job.wait_for(rf"\] {stage}\b")
    time.sleep(0.3)  # inside the stage: its Spark job is running
    spawned = job.descendants()
    assert any("java" in p.name() for p in spawned), "the driver JVM should be running mid-stage"
    os.killpg(job.proc.pid, sig)  # the whole group, as Ctrl-C at a terminal or a scheduler's SIGTERM does
    rc = job.finish()
    return rc, job.lines, _gone(spawned)


def _one_line(lines: list[str], sig: int) -> str:
    text = "\n".join(lines)
    assert "Traceback" not in text and "Py4J" not in text and "py4j" not in text, text[-3000:]
    found = [line for line in lines if "interrupted" in line]
    assert len(found) == 1, text[-3000:]
    assert ("Ctrl-C" if sig == signal.SIGINT else "SIGTERM") in found[0]
    return found[0]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_mid_decode_stops_spark_prints_one_line_and_leaves_no_out(corpus, subprocess_env, tmp_path, sig):
    out = tmp_path / "out"
    rc, lines, alive = _interrupt(_command(corpus, out), subprocess_env, sig, "decode")
    assert rc == 128 + sig, "\n".join(lines[-20:])
    line = _one_line(lines, sig)
    assert "during decode" in line and "nothing was committed" in line and "run the same command again" in line
    assert alive == [], f"left running: {[(p.pid, p.name()) for p in alive]}"
    assert not out.exists(), _tree(out)  # OUT did not exist before the run, and does not now

    again = subprocess.run(_command(corpus, out), cwd=REPO, env=subprocess_env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert Manifest.read(str(out)).counts["written"] == N


def test_a_signal_mid_dedup_of_an_incremental_run_leaves_the_dataset_byte_for_byte(corpus, subprocess_env, tmp_path):
    out, more = tmp_path / "out", _corpus(tmp_path / "more", 300, first=N)
    first = subprocess.run(_command(more, out), cwd=REPO, env=subprocess_env, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _tree(out)

    cmd = _command(corpus, out, "--incremental")
    rc, lines, alive = _interrupt(cmd, subprocess_env, signal.SIGTERM, "dedup")
    assert rc == 128 + signal.SIGTERM, "\n".join(lines[-20:])
    assert "nothing was committed" in _one_line(lines, signal.SIGTERM)
    assert alive == [], f"left running: {[(p.pid, p.name()) for p in alive]}"
    assert _tree(out) == before

    again = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert Manifest.read(str(out)).counts["written"] == 300 + N  # the first run's 300 and this run's, each once


def test_the_console_is_ours_progress_counts_images_and_sparks_log_goes_to_a_named_file(subprocess_env, tmp_path):
    src = _corpus(tmp_path / "src", 200)
    env = {**subprocess_env, "IMAGEGEN_LOG_DIR": str(tmp_path / "logs")}
    env.pop("IMAGEGEN_SPARK_LOG", None)
    cmd = _command(src, tmp_path / "out") + ["--config", str(_interval(tmp_path))]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    for chatter in SPARK_CHATTER:
        assert chatter not in console, f"{chatter!r} on the console:\n{console}"
    assert re.search(r"\d[\d,]* of 200 images decoded \(\d+%\), \d+ images/s", console), console
    assert "list_inputs: 200 inputs listed" in console and "verify: 200 images written, 0 rejected, 0 duplicates, of 200 inputs" in console, console
    assert re.search(r"^\[preprocess \d\d:\d\d:\d\d ", done.stderr, re.M), done.stderr  # timestamped lines in a log

    made, where, nxt = [line for line in done.stdout.splitlines() if line.split(":")[0] in ("made", "where", "next")]
    assert made.startswith("made: dataset run") and "200 images" in made
    assert str(tmp_path / "out") in where
    assert nxt.startswith("next: imagegen train --data")
    log = Path(re.search(r"Spark's log: (\S+)", where).group(1))
    assert log.parent == tmp_path / "logs" and log.is_file()
    assert "incubator" in log.read_text() or "log4j" in log.read_text()  # what used to reach the console is kept

    verbose = subprocess.run(cmd[:-2] + ["--verbose", "--output", str(tmp_path / "out2")], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "incubator" in verbose.stdout + verbose.stderr  # --verbose shows the JVM's console again


def _interval(tmp_path: Path) -> Path:
    cfg = tmp_path / "progress.yaml"
    cfg.write_text("progress_interval_s: 0.5\n")
    return cfg
