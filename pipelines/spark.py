"""The one place a SparkSession is built, so jobs, tests and `imagegen doctor` agree on settings."""
from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

# Rows per Arrow batch handed to mapInArrow/mapInPandas. Rows carry image bytes (raw files of
# up to a few MB), so this bounds a batch near 64 rows x few MB, far below Arrow's 2 GB limit.
DEFAULT_ARROW_BATCH_ROWS = 64


def get_spark(master: str | None = "local[*]", app_name: str = "imagegen", conf: dict[str, str] | None = None) -> SparkSession:
    """Get or create the session. `master=None` leaves it to spark-submit."""
    # Executors must run the same interpreter as the driver (the project's venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    local = master is not None and master.startswith("local")
    if local:
        # Local mode stays on loopback: without this Spark resolves the hostname, warns that it is a loopback
        # address, then binds its driver and block manager to the machine's network interface. The JVM reads
        # SPARK_LOCAL_IP when it starts; a user's own setting wins. Cluster masters keep Spark's defaults
        # (the user gives spark.driver.host there when the cluster needs a particular interface).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    settings = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(DEFAULT_ARROW_BATCH_ROWS),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": os.environ.get("IMAGEGEN_DRIVER_MEMORY", "2g"),
        "spark.sql.shuffle.partitions": os.environ.get("IMAGEGEN_SHUFFLE_PARTITIONS", "8"),
        "spark.python.worker.reuse": "true",
    }
    if local:
        settings["spark.driver.host"] = os.environ["SPARK_LOCAL_IP"]
        settings["spark.driver.bindAddress"] = os.environ["SPARK_LOCAL_IP"]
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("IMAGEGEN_SPARK_LOG_LEVEL", "WARN"))
    return spark
