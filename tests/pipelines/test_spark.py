"""The shared session: real local Spark, Arrow batches bounded in rows."""
from __future__ import annotations

import pyarrow as pa
import pytest

from pipelines.spark import DEFAULT_ARROW_BATCH_ROWS


def test_session_runs_map_in_arrow_with_bounded_batches(spark):
    df = spark.range(0, 1000, numPartitions=2)

    def batch_sizes(batches):
        for batch in batches:
            yield pa.RecordBatch.from_pydict({"n": [batch.num_rows]})

    sizes = [r.n for r in df.mapInArrow(batch_sizes, "n long").collect()]
    assert sum(sizes) == 1000
    assert max(sizes) <= DEFAULT_ARROW_BATCH_ROWS  # a batch of image bytes can never grow past this many rows
    assert spark.sparkContext.master == "local[2]"


def test_local_session_binds_to_loopback(spark):
    """Local mode never binds the driver or the block manager to the machine's network interface."""
    assert spark.conf.get("spark.driver.host") == "127.0.0.1"
    assert spark.conf.get("spark.driver.bindAddress") == "127.0.0.1"
    block_manager = spark.sparkContext._jsc.sc().env().blockManager().blockManagerId()
    assert block_manager.host() == "127.0.0.1"


# ----------------------------------------------------------------------------- class data sharing (10/14)
# `mapped`: the JVM loaded Spark's classes from the archive's dynamic layer ("shared objects file (top)" in its
# class-load log), not only that the flag was passed: -Xshare:auto starts without an archive it cannot use, silently.
_PROBE = ("import os, sys, tempfile\n"
          "from pipelines.spark import get_spark, cds_archive\n"
          "log = os.path.join(tempfile.mkdtemp(), 'classes.log')\n"
          "s = get_spark('local[1]', conf={'spark.driver.extraJavaOptions': f'-Xlog:class+load=info:file={log}'})\n"
          "args = s.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()\n"
          "rows = s.range(3).count()\n"
          "mapped = any('org.apache.spark.SparkContext ' in l and 'shared objects file (top)' in l for l in open(log))\n"
          "print('rows', rows, 'cds', any('SharedArchiveFile' in str(a) for a in args), 'kept', cds_archive() is not None, 'mapped', mapped)\n"
          "s.stop()\n")


def _probe(cache) -> tuple[str, str]:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "IMAGEGEN_CACHE": str(cache)}
    r = subprocess.run([sys.executable, "-c", _PROBE], cwd=Path(__file__).resolve().parents[2], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1], r.stderr


@pytest.fixture(scope="module")
def real_archive(tmp_path_factory):
    """A class-data archive for this JVM and Spark: the machine's (scripts/setup.sh built it), else one built here."""
    import os

    from pipelines import spark as S

    if S.cds_archive() is not None:
        return S.cds_archive()
    cache = tmp_path_factory.mktemp("cds-cache")
    os.environ["IMAGEGEN_CACHE"] = str(cache)
    try:
        return S.build_cds_archive(log=lambda s: None)
    finally:
        os.environ.pop("IMAGEGEN_CACHE")


def _install(archive, cache, size: int | None = None):
    """Put (the first `size` bytes of) `archive` into the cache dir `cache`, with a stamp that agrees with it."""
    import json

    d = cache / "spark-cds"
    d.mkdir(parents=True, exist_ok=True)
    data = archive.read_bytes()[:size]
    (d / archive.name).write_bytes(data)
    (d / f"{archive.stem}.json").write_text(json.dumps({"size": len(data)}))
    return d / archive.name


def test_the_driver_jvm_maps_a_built_class_data_archive(tmp_path, real_archive):
    _install(real_archive, tmp_path)
    line, err = _probe(tmp_path)
    assert line == "rows 3 cds True kept True mapped True", err[-2000:]
    assert "[cds]" not in err and "[warning]" not in err


def test_a_damaged_class_data_archive_is_never_fatal(tmp_path, real_archive):
    """A truncated archive makes the JVM die of SIGBUS at start: one whose size disagrees with its stamp is not used,
    and one the JVM cannot map anyway is forgotten and the session starts without it."""
    import json

    placed = _install(real_archive, tmp_path, size=4 << 20)
    placed.with_suffix(".json").write_text(json.dumps({"size": real_archive.stat().st_size}))  # the stamp says more
    assert _probe(tmp_path)[0] == "rows 3 cds False kept False mapped False"
    placed = _install(real_archive, tmp_path, size=4 << 20)  # the stamp agrees, the regions it maps are cut off
    line, err = _probe(tmp_path)
    assert line == "rows 3 cds False kept False mapped False", err[-2000:]
    assert not placed.exists()  # forgotten: the next start does not try it again


def test_each_spark_install_gets_its_own_class_data_archive(tmp_path):
    """Two virtual environments with the same pyspark jars (names and sizes) at different paths: the JVM refuses an
    archive built for the other's class path, so their keys differ, and a jar touched since the build changes it too."""
    import os
    import shutil

    from pipelines import spark as S

    a, b = tmp_path / "a" / "jars", tmp_path / "b" / "jars"
    a.mkdir(parents=True)
    (a / "spark-core.jar").write_bytes(b"PK" + bytes(100))
    shutil.copytree(a, b)
    os.utime(b / "spark-core.jar", ns=((a / "spark-core.jar").stat().st_atime_ns, (a / "spark-core.jar").stat().st_mtime_ns))
    assert S.cds_key(a) != S.cds_key(b)
    before = S.cds_key(a)
    os.utime(a / "spark-core.jar", ns=(1, 1))
    assert S.cds_key(a) != before and S.cds_key(a) == S.cds_key(a)
