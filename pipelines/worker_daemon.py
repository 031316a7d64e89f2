"""Spark's Python worker daemon with the preprocess job's libraries imported once, before it forks (local masters).

Spark starts one daemon per executor (`python -m pyspark.daemon`) and forks every Python worker from it; a
forked worker then imports what its task's functions need. For the preprocess job that is pandas, pyarrow,
PIL, scipy.fftpack and pipelines.decode: about 0.5 s of CPU per worker (`python -X importtime`), paid again by
every worker the job starts. `pipelines.spark` names this module as `spark.python.daemon.module` for local
masters (the executors share the driver's interpreter there), so the imports happen once and every worker is
forked with them. Spark passes the worker module as argv[1], which `pyspark.daemon` reads itself.
"""
from __future__ import annotations

import pyarrow  # noqa: F401  (imported for the forked workers)
import pyspark.sql.pandas.serializers  # noqa: F401
from pyspark import daemon

import pipelines.decode  # noqa: F401
import pipelines.labels  # noqa: F401

if __name__ == "__main__":
    daemon.manager()
