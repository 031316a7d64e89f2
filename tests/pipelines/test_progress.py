"""Progress in images for the stages without a per-image counter (dedup, write): estimated from the running Spark
stage's finished tasks, marked `~`, moving between 0 and the stage's images while the stage runs (13/14)."""
from __future__ import annotations

import io
import re
import threading
import time

from pipelines.preprocess import Progress


def _slow(i: int) -> int:
    time.sleep(1.5 * i)  # partition i ends 1.5 s after partition i-1: the finished share moves in steps
    return i


def test_a_stage_without_a_counter_is_estimated_from_its_finished_tasks(spark):
    progress = Progress(spark, interval=60.0, stream=io.StringIO())
    progress.set_phase("dedup")
    progress.count("deduplicated", None, 1000)
    job = threading.Thread(target=lambda: spark.sparkContext.parallelize(range(4), 4).map(_slow).collect())
    job.start()
    seen = set()
    while job.is_alive():
        m = re.match(r"~(\d+) of 1,000 images deduplicated \(\d+%\), \d+ images/s", progress._status(progress.counted))
        assert m, progress._status(progress.counted)
        seen.add(int(m[1]))
        time.sleep(0.1)
    job.join()
    assert seen <= {0, 250, 500, 750, 1000} and seen & {250, 500, 750}, seen  # it moved, task by task
