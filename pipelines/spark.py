"""The one place a SparkSession is built, so jobs, tests and `imagegen doctor` agree on settings."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pyspark import SparkContext
from pyspark.sql import SparkSession

# Rows per Arrow batch handed to mapInArrow/mapInPandas. Rows carry image bytes (raw files of
# up to a few MB), so this bounds a batch near 64 rows x few MB, far below Arrow's 2 GB limit.
DEFAULT_ARROW_BATCH_ROWS = 64


def get_spark(master: str | None = "local[*]", app_name: str = "imagegen", conf: dict[str, str] | None = None) -> SparkSession:
    """Get or create the session. `master=None` leaves it to spark-submit."""
    # Executors must run the same interpreter as the driver (the project's venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    local = master is not None and master.startswith("local")
    if local:
        # Local mode stays on loopback: without this Spark resolves the hostname, warns that it is a loopback
        # address, then binds its driver and block manager to the machine's network interface. The JVM reads
        # SPARK_LOCAL_IP when it starts; a user's own setting wins. Cluster masters keep Spark's defaults
        # (the user gives spark.driver.host there when the cluster needs a particular interface).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    settings = {
        "spark.app.name": app_name,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(DEFAULT_ARROW_BATCH_ROWS),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": os.environ.get("IMAGEGEN_DRIVER_MEMORY", "2g"),
        "spark.sql.shuffle.partitions": os.environ.get("IMAGEGEN_SHUFFLE_PARTITIONS", "8"),
        "spark.python.worker.reuse": "true",
    }
    if master:
        settings["spark.master"] = master
    if local:
        settings["spark.driver.host"] = os.environ["SPARK_LOCAL_IP"]
        settings["spark.driver.bindAddress"] = os.environ["SPARK_LOCAL_IP"]
        # Workers forked with the job's libraries already imported (pipelines/worker_daemon.py); a cluster's
        # executors keep Spark's own daemon (their Python environment is theirs).
        settings["spark.python.daemon.module"] = "pipelines.worker_daemon"
    settings.update(conf or {})
    # The local driver JVM is also the executor, and it runs the JVM side of every stage (Arrow transfers,
    # Parquet writes, small shuffles); the pixels are Python's. C2, the optimising JIT, spends its compile
    # threads' CPU on the same 2 cores the Python workers need, for code that runs seconds: the client
    # compiler alone made a 1,000-image job 3-4 s shorter and a 10,000-image one 6-21 s shorter (docs/benchmarks.md).
    # IMAGEGEN_SPARK_JIT=full keeps the JVM's default tiered compilation.
    if local and os.environ.get("IMAGEGEN_SPARK_JIT", "client") != "full":
        own = settings.get("spark.driver.extraJavaOptions", "")
        settings["spark.driver.extraJavaOptions"] = f"-XX:TieredStopAtLevel=1 {own}".strip()
    level = spark_log_level()
    if master is None or SparkContext._gateway is not None:
        # Under spark-submit the driver JVM is already running (and its console is spark-submit's); a JVM this
        # process started before (a test's, a notebook's, an earlier job's) is reused: PySpark keeps one gateway
        # per process and would ignore a second.
        spark = _builder(settings).getOrCreate()
    else:
        spark = _start(settings)
    spark.sparkContext.setLogLevel(level)
    return spark


def _builder(settings: dict[str, str]) -> SparkSession.Builder:
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder


def _start(settings: dict[str, str]) -> SparkSession:
    """Launch the driver JVM ourselves, in a session of its own with its console in a log file, then build the
    SparkSession on it. Its own session: a terminal's Ctrl-C or a scheduler's SIGTERM to our process group reaches
    us only, and we stop Spark in order (the JVM and its Python workers die with their stdin when we exit, so
    nothing outlives us). Its console in a file: the JVM's start-up chatter (incubator modules, the log4j profile,
    NativeCodeLoader) and Spark's warnings are not the user's console (IMAGEGEN_SPARK_LOG=INFO or --verbose
    shows them too)."""
    archive = cds_archive()
    if archive is not None:
        # Class data sharing: the driver JVM maps the classes a preprocess job loads from one archive instead of
        # loading and verifying ~10k classes from Spark's jars (session start 6.0 -> 4.1 s, first job 3.0 -> 1.8 s).
        own = settings.get("spark.driver.extraJavaOptions", "")
        with_cds = {**settings, "spark.driver.extraJavaOptions": f"{cds_java_options(archive)} {own}".strip()}
        try:
            return _launch(with_cds)
        except Exception:  # noqa: BLE001
            # A JVM that cannot map the archive (another JDK build, a damaged file) dies at start: forget the
            # archive and start without it; `scripts/setup.sh` makes a new one.
            forget_cds_archive(archive)
    return _launch(settings)


def _launch(settings: dict[str, str]) -> SparkSession:
    global _log_path
    from pyspark import SparkConf
    from pyspark.java_gateway import launch_gateway

    path = _new_log_path()
    log = open(path, "ab")  # the JVM holds its own descriptor; ours closes with this function
    try:
        echo = os.environ.get("IMAGEGEN_SPARK_LOG") is not None
        popen = {"start_new_session": True, "stdout": subprocess.PIPE if echo else log,
                 "stderr": subprocess.PIPE if echo else log}
        spark_conf = SparkConf(loadDefaults=True)
        for key, value in settings.items():
            spark_conf.set(key, value)
        gateway = launch_gateway(spark_conf, popen_kwargs=popen)
        if echo:  # --verbose: the JVM's console on ours and in the file
            for src, dst in ((gateway.proc.stdout, sys.stdout), (gateway.proc.stderr, sys.stderr)):
                threading.Thread(target=_tee, args=(src, dst, path), daemon=True, name="imagegen-spark-log").start()
        SparkContext(conf=spark_conf, gateway=gateway)
    finally:
        log.close()
    _log_path = path
    return _builder(settings).getOrCreate()


def _tee(src, dst, path: Path) -> None:
    with open(path, "ab", buffering=0) as f:
        for line in iter(src.readline, b""):
            f.write(line)
            dst.write(line.decode(errors="replace"))
            dst.flush()


_log_path: Path | None = None


def spark_log_level() -> str:
    return (os.environ.get("IMAGEGEN_SPARK_LOG") or os.environ.get("IMAGEGEN_SPARK_LOG_LEVEL") or "WARN").upper()


def spark_log_file() -> Path | None:
    """The file the driver JVM's console goes to (None when the JVM was not started here, e.g. spark-submit)."""
    return _log_path


def _new_log_path() -> Path:
    """IMAGEGEN_LOG_DIR (nightly sets its run's logs/), else ~/.cache/imagegen/logs: never OUT, which must stay
    exactly as it was when a run fails."""
    base = os.environ.get("IMAGEGEN_LOG_DIR") or os.path.join(
        os.environ.get("IMAGEGEN_CACHE", Path.home() / ".cache" / "imagegen"), "logs")
    Path(base).mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path(base) / f"spark-{stamp}-{os.getpid()}.log"


# ----------------------------------------------------------------------------- class data sharing (10/14)
def _cache_dir() -> Path:
    return Path(os.environ.get("IMAGEGEN_CACHE", Path.home() / ".cache" / "imagegen")) / "spark-cds"


def _java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    return os.path.realpath(java) if java and os.path.exists(java) else None


def cds_key(jars: Path | None = None) -> str | None:
    """What an archive is only valid for: this JVM binary and Spark's exact jars, at their paths. The JVM refuses
    an archive whose class path differs in any jar's path, size or modification time ("A jar file is not the one
    used while building the shared archive file"), and with -Xshare:auto it then starts without it, silently: so
    two virtual environments with the same pyspark get two archives instead of taking turns invalidating one."""
    import pyspark

    java = _java()
    if java is None:
        return None
    jars = jars if jars is not None else Path(pyspark.__file__).parent / "jars"
    listing = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in jars.glob("*.jar")) if jars.is_dir() else []
    text = json.dumps([java, os.stat(java).st_size, pyspark.__version__, str(jars.resolve()), listing])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cds_archive() -> Path | None:
    """The archive for this JVM and Spark, if one was built and is whole (its stamp records its size: a truncated
    archive crashes the JVM with SIGBUS instead of being ignored). IMAGEGEN_SPARK_CDS=off disables it."""
    if os.environ.get("IMAGEGEN_SPARK_CDS", "on") == "off":
        return None
    key = cds_key()
    if key is None:
        return None
    archive = _cache_dir() / f"{key}.jsa"
    try:
        stamp = json.loads((_cache_dir() / f"{key}.json").read_text())
        return archive if archive.stat().st_size == stamp["size"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget_cds_archive(archive: Path) -> None:
    for p in (archive, archive.with_suffix(".json")):
        p.unlink(missing_ok=True)


def cds_java_options(archive: Path) -> str:
    # -Xshare:auto: run without sharing when the archive does not fit; -Xlog: no CDS lines on the console
    # -XX:ErrorFile: a JVM that dies mapping a damaged archive leaves its crash log in the temp dir, not the user's cwd
    crash = os.path.join(tempfile.gettempdir(), "imagegen-jvm-crash-%p.log")
    return f"-XX:SharedArchiveFile={archive} -Xshare:auto -Xlog:cds=off -Xlog:cds+dynamic=off -XX:ErrorFile={crash}"


def build_cds_archive(log=print) -> Path | None:
    """Run a small preprocess job in a child process whose JVM dumps the classes it loaded at exit
    (-XX:ArchiveClassesAtExit, JDK 13+), then move the archive into place with its stamp. Idempotent."""
    key = cds_key()
    if key is None:
        log("spark CDS: no java found; skipped")
        return None
    if cds_archive() is not None:
        return cds_archive()
    _cache_dir().mkdir(parents=True, exist_ok=True)
    _remove_dead_builds()
    tmp = _cache_dir() / f"{key}.jsa.tmp-{os.getpid()}"
    env = {**os.environ, "IMAGEGEN_SPARK_CDS": "off"}
    run = subprocess.run([sys.executable, "-m", "pipelines.spark", "--cds-workload", str(tmp)], env=env,
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"building the Spark class-data archive failed (exit {run.returncode}): {run.stderr[-1500:]}")
    archive = _cache_dir() / f"{key}.jsa"
    os.replace(tmp, archive)
    stamp = _cache_dir() / f"{key}.json"
    stamp.with_suffix(".json.tmp").write_text(json.dumps({"size": archive.stat().st_size, "java": _java()}))
    os.replace(stamp.with_suffix(".json.tmp"), stamp)
    log(f"spark CDS: {archive} ({archive.stat().st_size / 2**20:.0f} MiB)")
    return archive


def _remove_dead_builds() -> None:
    """Half-written archives (`<key>.jsa.tmp-<pid>`, ~165 MiB each) of builds whose process is gone."""
    for tmp in _cache_dir().glob("*.jsa.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, someone else's
            pass


def _cds_workload(archive: str) -> None:
    """What a preprocess job loads: listing, mapInArrow decode, Parquet writes and reads, joins, aggregates."""
    import numpy as np
    from PIL import Image

    from pipelines.config import PreprocessConfig
    from pipelines.preprocess import run_preprocess

    spark = get_spark("local[2]", app_name="imagegen-cds", conf={"spark.driver.extraJavaOptions": f"-XX:ArchiveClassesAtExit={archive}"})
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        rng = np.random.default_rng(0)
        for i in range(24):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(src / f"{i}.png")
        Image.open(src / "0.png").save(src / "copy.jpg", quality=95)
        run_preprocess(spark, [str(src)], str(Path(tmp) / "out"), PreprocessConfig(resolution=32), log=lambda s: None)
    jvm = spark.sparkContext._gateway.proc  # in a session of its own: it would outlive us, still dumping the archive
    spark.stop()
    if jvm.stdin is not None:
        jvm.stdin.close()  # PySpark's JVM exits when its stdin closes; the archive is written on that exit
    jvm.wait(timeout=600)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cds-workload"]:
        _cds_workload(sys.argv[2])
    elif sys.argv[1:] == ["--build-cds"]:
        build_cds_archive()
    else:
        raise SystemExit("usage: python -m pipelines.spark --build-cds")
