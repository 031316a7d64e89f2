"""Airflow DAG `imagegen_nightly`: the nightly loop (jobs/nightly.py) as one task per step.

    preprocess  >>  record_dataset  >>  train  >>  evaluate  >>  promote
    (spark-submit jobs/preprocess.py --incremental into ROOT/dataset, on the Spark connection `imagegen_spark`)
                    (the others: `imagegen nightly --date {{ ds }} --external-preprocess --until STEP`)

`imagegen nightly` records each step of a date in ROOT/runs/nightly/<DATE>/state.json and resumes at the first unfinished
one, so each task calls it with the same date and `--until` its own step: a retried task redoes only its step, and a
cleared DAG run does nothing twice. `record_dataset` adopts the dataset runs the Spark task added (--external-preprocess)
as the night's new images. `promote` runs the night to the end (record, summary, MLflow when configured).

This file imports only Airflow: it is parsed in Airflow's own environment (scripts/setup-airflow.sh), never in the
imagegen venv. Settings come from the environment of the scheduler / workers (defaults in brackets):
  IMAGEGEN_HOME     the checkout, with .venv from scripts/setup.sh   [/opt/imagegen]
  IMAGEGEN_INPUT    where new images land                              [/data/incoming]
  IMAGEGEN_ROOT     the nightly root (dataset/, runs/, registry/)     [/data/nightly]
  IMAGEGEN_CONFIG   nightly.yaml (NightlyConfig keys + preprocess:/train:), optional
  IMAGEGEN_PREPROCESS_ARGS  extra `imagegen preprocess` flags for the Spark task   [--resolution 32 --labels dirs]
"""
from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta

from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

try:  # Airflow 3: the standard provider
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

HOME = os.environ.get("IMAGEGEN_HOME", "/opt/imagegen")
INPUT = os.environ.get("IMAGEGEN_INPUT", "/data/incoming")
ROOT = os.environ.get("IMAGEGEN_ROOT", "/data/nightly")
CONFIG = os.environ.get("IMAGEGEN_CONFIG", "")
PREPROCESS_ARGS = shlex.split(os.environ.get("IMAGEGEN_PREPROCESS_ARGS", "--resolution 32 --labels dirs"))
VENV_BIN = f"{HOME}/.venv/bin"
SCHEDULE = "30 2 * * *"  # 02:30 every night, as jobs/schedules/imagegen.cron and the systemd timer


def nightly_command(until: str | None) -> str:
    """The shell command of a step task: the one entry point, the DAG run's date, stop after `until` (None: finish)."""
    args = [f"{VENV_BIN}/imagegen", "nightly", "--input", INPUT, "--root", ROOT, "--external-preprocess"]
    args += ["--config", CONFIG] if CONFIG else []
    args += ["--until", until] if until else []
    return " ".join(shlex.quote(a) for a in args) + " --date {{ ds }}"


default_args = {
    "owner": "imagegen",
    "retries": 2,                          # a retry resumes the night at the failed step
    "retry_delay": timedelta(minutes=10),
    "retry_exponential_backoff": True,
}

with DAG(
    dag_id="imagegen_nightly",
    description="incremental preprocess (Spark), warm-start training, evaluation, promotion",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,          # a missed night is not replayed date by date: the next night takes all new images
    max_active_runs=1,      # one night at a time (imagegen nightly also holds ROOT/_lock)
    default_args=default_args,
    tags=["imagegen"],
) as dag:
    preprocess = SparkSubmitOperator(
        task_id="preprocess",
        application=f"{HOME}/jobs/preprocess.py",
        application_args=[INPUT, "--output", f"{ROOT}/dataset", "--incremental", *PREPROCESS_ARGS],
        conn_id="imagegen_spark",  # e.g. AIRFLOW_CONN_IMAGEGEN_SPARK='{"conn_type": "spark", "host": "local[*]"}'
        name="imagegen-preprocess",
        # spark-submit and the Python of the imagegen venv (pyspark ships spark-submit there)
        env_vars={"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "PYSPARK_PYTHON": f"{VENV_BIN}/python",
                  "PYSPARK_DRIVER_PYTHON": f"{VENV_BIN}/python", "PYTHONPATH": HOME},
        execution_timeout=timedelta(hours=4),
    )
    record_dataset = BashOperator(task_id="record_dataset", bash_command=nightly_command("preprocess"),
                                  execution_timeout=timedelta(minutes=30))
    train = BashOperator(task_id="train", bash_command=nightly_command("train"), execution_timeout=timedelta(hours=8))
    evaluate = BashOperator(task_id="evaluate", bash_command=nightly_command("evaluate"),
                            execution_timeout=timedelta(hours=2))
    promote = BashOperator(task_id="promote", bash_command=nightly_command(None), execution_timeout=timedelta(minutes=30))

    preprocess >> record_dataset >> train >> evaluate >> promote
