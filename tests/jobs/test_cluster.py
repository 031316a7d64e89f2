"""A real Spark standalone cluster on 127.0.0.1 (scripts/spark-cluster.sh: one master, two 1-core workers):
spark-submit of the preprocess job gives the local[2] dataset, survives an executor SIGKILLed mid-job, and
`imagegen train --launcher spark --master spark://...` runs horovod ranks inside the cluster's executors."""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas.layout import Manifest, listed_files
from tests.conftest import REPO, VENV_BIN

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # several Spark runs on a loaded 2-core machine

SCRIPT = REPO / "scripts" / "spark-cluster.sh"
PER_CLASS = 20  # write_demo_corpus: 10 x 20 digits + 5 byte copies + 5 re-encodes + 4 broken files
# Under load (shared 2-core machine) one cluster run of ~214 files took about 3 minutes.
RUN_TIMEOUT = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep)
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["SPARK_LOCAL_IP"] = "127.0.0.1"  # driver, block managers and UIs on loopback
    env["IMAGEGEN_DRIVER_MEMORY"] = "1g"
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster")
    proc = subprocess.run(["bash", str(SCRIPT), "start", "--workers", "2", "--dir", str(d)], check=False, env=_env(),
                          capture_output=True, text=True, timeout=300)
    try:
        assert proc.returncode == 0, f"start failed:\n{proc.stdout}\n{proc.stderr}"
        values = dict(line.split("=", 1) for line in (d / "cluster.env").read_text().splitlines())
        workers = {int((d / f"worker-{i}.pid").read_text()) for i in (1, 2)}
        yield {"dir": d, "master": values["MASTER_URL"], "webui": values["WEBUI_URL"], "workers": workers,
               "master_pid": int((d / "master.pid").read_text())}
    finally:
        pids = [int(p.read_text()) for p in d.glob("*.pid")]
        subprocess.run(["bash", str(SCRIPT), "stop", "--dir", str(d)], check=False, env=_env(), capture_output=True, text=True, timeout=120)
        still = [p for p in pids if Path(f"/proc/{p}").exists()]
        assert not still, f"spark-cluster.sh stop left recorded pids running: {still}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from jobs.corpus import write_demo_corpus

    c = write_demo_corpus(tmp_path_factory.mktemp("src") / "digits", per_class=PER_CLASS)
    assert (c.files, c.images, c.duplicates, c.bad) == (10 * PER_CLASS + 14, 10 * PER_CLASS, 10, 4)
    return c


JOB_ARGS = ["--labels", "dirs", "--resolution", "32", "--partitions", "4"]


def _submit(cluster, src: Path, out: Path, ui_port: int, tmp: Path | None = None) -> tuple[subprocess.Popen, Path]:
    """spark-submit in the background, its output into a file (a pipe nobody reads would block the driver).
    tmp: the driver's TMPDIR."""
    cmd = [str(VENV_BIN / "spark-submit"), "--master", cluster["master"],
           "--conf", "spark.driver.host=127.0.0.1", "--conf", f"spark.ui.port={ui_port}",
           "--conf", "spark.executor.memory=512m", "--conf", "spark.executor.cores=1",
           "--conf", f"spark.pyspark.python={sys.executable}",
           str(REPO / "jobs" / "preprocess.py"), str(src), "--output", str(out), *JOB_ARGS]
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as f:
        env = {**_env(), **({"TMPDIR": str(tmp)} if tmp is not None else {})}
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT), log


def _finish(submitted: tuple[subprocess.Popen, Path]) -> str:
    proc, log = submitted
    proc.wait(timeout=RUN_TIMEOUT)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{text[-6000:]}"
    return text


def _dataset(out: Path) -> dict:
    """What a dataset holds, independent of run id, file names and row order: the manifest's counts and every
    row of the files the manifest lists."""
    m = Manifest.read(str(out))

    def rows(table: str, cols: list[str]) -> list[tuple]:
        found = []
        for path in listed_files(str(out), m, table):
            t = pq.read_table(path, columns=cols)
            found += list(zip(*(t.column(c).to_pylist() for c in cols)))
        return sorted(found, key=repr)

    return {
        "counts": m.counts, "label_counts": m.label_counts, "classes": m.classes, "channels": m.channels,
        "images": rows("images", ["image_id", "source_uri", "pixels_sha256", "label"]),
        "rejects": rows("rejects", ["source_uri", "reason"]),
        "duplicates": rows("duplicates", ["source_uri", "kept_source_uri", "kind"]),
    }


@pytest.fixture(scope="module")
def local_dataset(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    proc = subprocess.run([str(VENV_BIN / "imagegen"), "preprocess", str(corpus.root), "--output", str(out),
                           "--master", "local[2]", *JOB_ARGS], cwd=REPO, check=False, env=_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    ds = _dataset(out)
    # What the corpus holds, known from how it was written (not from this output).
    assert ds["counts"]["inputs"] == corpus.files and ds["counts"]["written"] == corpus.images
    assert ds["counts"]["duplicates"] == {"exact": 5, "near": 5} and sum(ds["counts"]["rejected"].values()) == corpus.bad
    assert len(ds["images"]) == corpus.images and len(ds["rejects"]) == corpus.bad and len(ds["duplicates"]) == corpus.duplicates
    return ds


def test_start_registers_the_workers_on_loopback(cluster):
    with urllib.request.urlopen(cluster["webui"] + "/json/", timeout=10) as r:
        state = json.load(r)
    alive = [w for w in state["workers"] if w["state"] == "ALIVE"]
    assert len(alive) == 2 and all(w["host"] == "127.0.0.1" and w["cores"] == 1 and w["memory"] == 1024 for w in alive)
    assert cluster["master"].startswith("spark://127.0.0.1:")
    status = subprocess.run(["bash", str(SCRIPT), "status", "--dir", str(cluster["dir"])], check=False, env=_env(),
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "2 alive worker(s)" in status.stdout, status.stdout + status.stderr


def test_spark_submit_gives_the_local_dataset(cluster, corpus, local_dataset, tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    log = _finish(_submit(cluster, corpus.root, out, _free_port(), tmp))
    assert "Connected to Spark cluster with app ID" in log  # it ran on the standalone master, not local
    assert not list(tmp.glob("imagegen-pyfiles-*"))  # the packages' zip shipped to the executors is removed after
    assert _dataset(out) == local_dataset
    # progress counts images on a cluster too: the listing, and each stage's exact counts once it ends
    assert f"list_inputs: {corpus.files:,} inputs listed" in log, log[-3000:]
    assert f"verify: {corpus.images:,} images written, {corpus.bad:,} rejected, {corpus.duplicates:,} duplicates" in log


def _app_id(ui_port: int, deadline: float) -> str:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/api/v1/applications", timeout=5) as r:
                apps = json.load(r)
            if apps:
                return apps[0]["id"]
        except (OSError, ValueError):  # not listening yet, or "Spark is starting up" (not JSON)
            pass
        time.sleep(0.5)
    raise AssertionError(f"no application on the driver UI port {ui_port}")


def _executor_pid(app_id: str, executor_id: str, worker_pids: set[int]) -> int | None:
    """The executor JVM of this app and id, only among the children of this cluster's workers."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        flags = dict(itertools.pairwise(args))  # "--app-id" -> its value, "--executor-id" -> its value
        if (ppid in worker_pids and any("org.apache.spark.executor." in a for a in args)
                and flags.get("--app-id") == app_id and flags.get("--executor-id") == executor_id):
            return int(proc.name)
    return None


def test_executor_killed_mid_job_is_replaced_and_the_dataset_is_unchanged(cluster, corpus, local_dataset, tmp_path):
    out, ui_port = tmp_path / "out", _free_port()
    submitted = _submit(cluster, corpus.root, out, ui_port)
    proc = submitted[0]
    killed = None
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        app_id = _app_id(ui_port, deadline)
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/api/v1/applications/{app_id}/executors", timeout=5) as r:
                    executors = json.load(r)
            except (OSError, ValueError):
                executors = []
            for e in executors:
                if e["id"] != "driver" and e["activeTasks"] > 0:
                    pid = _executor_pid(app_id, e["id"], cluster["workers"])
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)
                        killed = (e["id"], pid, e["activeTasks"])
                        break
            time.sleep(0.2)
    finally:
        log = _finish(submitted)
    assert killed is not None, f"never saw an executor of {app_id} running tasks before the job ended\n{log[-3000:]}"
    assert not Path(f"/proc/{killed[1]}").exists()
    assert f"Lost executor {killed[0]}" in log or "ExecutorLostFailure" in log, log[-4000:]
    # The workers launched a replacement: more executor directories than the two first ones.
    executor_dirs = [p for p in cluster["dir"].glob(f"work-*/{app_id}/*") if p.is_dir()]
    assert len(executor_dirs) >= 3, executor_dirs
    assert _dataset(out) == local_dataset


def test_train_spark_launcher_runs_horovod_in_the_cluster_executors(cluster, tmp_path):
    from tests.training.conftest import write_digits_dataset

    data = write_digits_dataset(tmp_path / "digits")
    run = tmp_path / "run"
    proc = subprocess.run(
        [str(VENV_BIN / "imagegen"), "train", "--launcher", "spark", "--num-proc", "2", "--master", cluster["master"],
         "--data", str(data), "--run-dir", str(run), "--model", "dcgan", "--steps", "4", "--batch-size", "8",
         "--base-channels", "8", "--z-dim", "16", "--num-samples", "8", "--log-every", "2", "--sample-every", "0",
         "--start-timeout", "300", "--nics", "lo"],
        cwd=REPO, check=False, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "rank 0/2: step 4" in proc.stdout and "rank 1/2: step 4" in proc.stdout, proc.stdout[-3000:]
    assert (run / "checkpoints" / "ckpt-00000004.pt").is_file(), sorted(p.name for p in run.rglob("*"))
    # The ranks ran in this cluster's executors: the master lists the app, and its executors' directories are
    # in the workers' work dirs.
    with urllib.request.urlopen(cluster["webui"] + "/json/", timeout=10) as r:
        state = json.load(r)
    apps = [a["id"] for a in state["activeapps"] + state["completedapps"] if a["name"] == "imagegen-train"]
    assert len(apps) == 1, state["completedapps"]
    assert [p for p in cluster["dir"].glob(f"work-*/{apps[0]}/*") if p.is_dir()], f"no executor of {apps[0]} under the workers"
