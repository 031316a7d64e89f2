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
_PROBE = ("from pipelines.spark import get_spark, cds_archive\n"
          "s = get_spark('local[1]')\n"
          "args = s.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()\n"
          "print('rows', s.range(3).count(), 'cds', any('SharedArchiveFile' in str(a) for a in args), 'kept', cds_archive() is not None)\n"
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
    assert line == "rows 3 cds True kept True", err[-2000:]
    assert "[cds]" not in err and "[warning]" not in err


def test_a_damaged_class_data_archive_is_never_fatal(tmp_path, real_archive):
    """A truncated archive makes the JVM die of SIGBUS at start: one whose size disagrees with its stamp is not used,
    and one the JVM cannot map anyway is forgotten and the session starts without it."""
    import json

    placed = _install(real_archive, tmp_path, size=4 << 20)
    placed.with_suffix(".json").write_text(json.dumps({"size": real_archive.stat().st_size}))  # the stamp says more
    assert _probe(tmp_path)[0] == "rows 3 cds False kept False"
    placed = _install(real_archive, tmp_path, size=4 << 20)  # the stamp agrees, the regions it maps are cut off
    line, err = _probe(tmp_path)
    assert line == "rows 3 cds False kept False", err[-2000:]
    assert not placed.exists()  # forgotten: the next start does not try it again
