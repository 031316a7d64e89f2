"""The shared session: real local Spark, Arrow batches bounded in rows."""
from __future__ import annotations

import pyarrow as pa

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
