"""`imagegen doctor`: check this machine (a laptop or a cluster node) before submitting work.

Every check runs the real thing: a local Spark session runs a job, petastorm reads a Parquet
file it just wrote, horovod reports what it was built with. Prints a table, or JSON with
`--json`; exits 1 when a required check fails (warnings do not fail).
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable

# The pins this code was measured with. tests/jobs/test_doctor.py checks they agree with
# constraints.txt, which setup installs from. Values are PEP 440 prefixes or "<" bounds.
PINS: dict[str, str] = {
    "pyspark": "4.0.",
    "pyarrow": "14.0.2",
    "petastorm": "0.12.1",
    "numpy": "<2",
    "pandas": "2.2.",
    "torch": "2.13.",
    "horovod": "0.28.1",
}
PYTHON_PIN = "3.11"
JAVA_MIN = 17


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"  # informational: does not fail the doctor
    FAIL = "FAIL"


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: Status
    found: str
    expected: str
    detail: str = ""
    seconds: float = 0.0


def _version_matches(found: str, pin: str) -> bool:
    if pin.startswith("<"):
        major = int(pin[1:])
        return int(found.split(".")[0]) < major
    if pin.endswith("."):
        return found.startswith(pin)
    return found == pin or found.startswith(pin + "+")


def check_python() -> Check:
    found = platform.python_version()
    ok = found.startswith(PYTHON_PIN + ".")
    return Check("python", Status.OK if ok else Status.FAIL, found, PYTHON_PIN + ".x", sys.executable)


def check_package(name: str) -> Check:
    pin = PINS[name]
    try:
        found = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return Check(f"package {name}", Status.FAIL, "missing", pin, "not installed; run scripts/setup.sh")
    ok = _version_matches(found, pin)
    return Check(f"package {name}", Status.OK if ok else Status.FAIL, found, pin + "x" if pin.endswith(".") else pin)


def check_java() -> Check:
    java = shutil.which("java", path=os.path.join(os.environ["JAVA_HOME"], "bin")) if os.environ.get("JAVA_HOME") else None
    java = java or shutil.which("java")
    if not java:
        return Check("java", Status.FAIL, "missing", f">= {JAVA_MIN}", "no java on PATH or JAVA_HOME; scripts/setup.sh installs openjdk-17-jre-headless")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return Check("java", Status.FAIL, "unknown", f">= {JAVA_MIN}", f"could not parse `java -version`: {out.strip()[:200]}")
    major = int(m.group(2)) if m.group(1) == "1" else int(m.group(1))
    status = Status.OK if major >= JAVA_MIN else Status.FAIL
    return Check("java", status, str(major), f">= {JAVA_MIN}", java)


def check_spark() -> Check:
    """Start a real local session and run a job that shuffles."""
    from pipelines.spark import get_spark

    spark = get_spark("local[2]", app_name="imagegen-doctor", conf={"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false"})
    try:
        rows = spark.range(0, 1000, numPartitions=4).selectExpr("id % 10 AS k", "id").groupBy("k").sum("id").collect()
        got = sum(r["sum(id)"] for r in rows)
        version = spark.version
    finally:
        spark.stop()
    expected = sum(range(1000))
    status = Status.OK if got == expected else Status.FAIL
    return Check("spark local job", status, f"spark {version}, sum={got}", f"sum={expected}", "local[2] session, 4 partitions, one shuffle")


def check_petastorm() -> Check:
    """Write a tiny Parquet file with pyarrow and read it back with petastorm's make_batch_reader."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from petastorm import make_batch_reader

    import warnings

    # petastorm 0.12 drives pyarrow's deprecated legacy dataset API, which warns (FutureWarning) on every call, also
    # from its reader threads: the same filters as training/data/petastorm_reader.py, so the report is readable.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyarrow\.")
    with tempfile.TemporaryDirectory(prefix="imagegen-doctor-") as tmp:
        pq.write_table(pa.table({"id": list(range(10)), "pixels": [bytes([i]) * 12 for i in range(10)]}), os.path.join(tmp, "part-0.parquet"))
        ids: list[int] = []
        with make_batch_reader("file://" + tmp, num_epochs=1, workers_count=1) as reader:
            for batch in reader:
                ids.extend(int(i) for i in batch.id)
    status = Status.OK if sorted(ids) == list(range(10)) else Status.FAIL
    return Check("petastorm read", status, f"{len(ids)} rows", "10 rows", "make_batch_reader on a pyarrow-written file")


def check_horovod() -> Check:
    try:
        import horovod.torch as hvd
    except Exception as exc:  # ImportError, or the extension failing to load against this torch
        return Check("horovod build", Status.FAIL, "not importable", "torch + gloo", f"{type(exc).__name__}: {exc}")
    built = {"torch": True, "gloo": hvd.gloo_built(), "nccl": bool(hvd.nccl_built()), "mpi": hvd.mpi_built(), "cuda": hvd.cuda_built()}
    found = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in built.items())
    status = Status.OK if built["gloo"] else Status.FAIL
    return Check("horovod build", status, found, "torch=yes, gloo=yes (nccl when CUDA)")


def check_torch() -> Check:
    import torch

    cuda = torch.cuda.is_available()
    parts = [f"torch {torch.__version__}", f"cuda={'yes' if cuda else 'no'}"]
    if cuda:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        parts += [f"gpus={len(names)} ({'; '.join(names)})", f"bf16={'yes' if torch.cuda.is_bf16_supported() else 'no'}"]
    else:
        parts += ["gpus=0", "bf16=cpu-autocast"]
    # A real matmul on the device the trainer would use.
    device = "cuda" if cuda else "cpu"
    x = torch.ones(64, 64, device=device)
    ok = float((x @ x).sum()) == 64.0**3
    return Check("torch device", Status.OK if ok else Status.FAIL, ", ".join(parts), "a working device")


def check_cores() -> Check:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Check("cpu cores", Status.OK, f"{usable} usable of {os.cpu_count()}", ">= 1", "Spark local[*] and data loaders size themselves from this")


def run_checks() -> list[Check]:
    checks: list[Callable[[], Check]] = [check_python, *(lambda n=n: check_package(n) for n in PINS), check_java, check_cores, check_torch, check_horovod, check_petastorm, check_spark]
    results = []
    for fn in checks:
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # a check that crashes is a failed check, reported with its reason
            name = getattr(fn, "__name__", "check").replace("check_", "")
            result = Check(name, Status.FAIL, "error", "no error", f"{type(exc).__name__}: {exc}")
        results.append(dataclasses.replace(result, seconds=round(time.perf_counter() - t0, 3)))
    return results


def format_table(results: list[Check]) -> str:
    rows = [("check", "status", "found", "expected")] + [(c.name, c.status.value, c.found, c.expected) for c in results]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for c in results:
        if c.status is Status.FAIL and c.detail:
            lines.append(f"{c.name}: {c.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imagegen doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON for machines instead of a table")
    args = parser.parse_args(argv)
    results = run_checks()
    ok = all(c.status is not Status.FAIL for c in results)
    if args.json:
        payload = {"ok": ok, "checks": [dict(dataclasses.asdict(c), status=c.status.value) for c in results]}
        print(json.dumps(payload, indent=2))
    else:
        print(format_table(results))
        print(f"\n{'all required checks passed' if ok else 'some required checks FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
