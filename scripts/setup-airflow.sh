#!/usr/bin/env bash
# Airflow for jobs/schedules/imagegen_nightly_dag.py, in a venv of its own: Airflow's pins (SQLAlchemy, Flask, ...)
# conflict with ours, and the DAG imports only Airflow. Idempotent; prints the venv's path on its last line.
#
#   bash scripts/setup-airflow.sh                       # -> ~/.cache/imagegen/airflow-venv (outside the checkout)
#   IMAGEGEN_AIRFLOW_VENV=/opt/airflow-venv bash scripts/setup-airflow.sh
#
# Pins: apache-airflow and apache-airflow-providers-apache-spark, and every package under them, come from
# scripts/airflow-constraints.txt. That is Airflow's own constraints approach (`pip install -c constraints-X.txt`),
# but with a file frozen from an install verified here: Airflow's published constraint files are not reachable
# offline. A first run takes a few minutes; a second run checks a stamp and an import (about 3 s).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${IMAGEGEN_AIRFLOW_VENV:-$HOME/.cache/imagegen/airflow-venv}"
CONSTRAINTS="$ROOT/scripts/airflow-constraints.txt"
AIRFLOW_VERSION=2.10.5
SPARK_PROVIDER_VERSION=5.3.4
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
LOG="$(dirname "$VENV")/airflow-venv-setup.log"
CHECK='import airflow, airflow.providers.apache.spark.operators.spark_submit; from airflow.models import DagBag'

say() { echo "setup-airflow: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9  # two setups at once (parallel tests) build the venv once

stamp="$(cat "$CONSTRAINTS" "$0" | sha256sum | cut -d' ' -f1)"
check() { AIRFLOW_HOME="$(mktemp -d)" "$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1; }
if [ "$(cat "$VENV/.imagegen-stamp" 2>/dev/null)" = "$stamp" ] && check; then
  say "ready (stamp matches)"
  echo "$VENV"
  exit 0
fi

say "creating $VENV with $PY (log: $LOG)"
rm -rf "$VENV"
"$PY" -m venv "$VENV" >"$LOG" 2>&1 || fail "python -m venv (see $LOG)"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" \
  "apache-airflow==$AIRFLOW_VERSION" "apache-airflow-providers-apache-spark==$SPARK_PROVIDER_VERSION" >>"$LOG" 2>&1 \
  || fail "pip install apache-airflow==$AIRFLOW_VERSION apache-airflow-providers-apache-spark==$SPARK_PROVIDER_VERSION (see $LOG)"
check || fail "the new venv cannot import Airflow and the Spark provider: $VENV/bin/python -c '$CHECK'"
echo "$stamp" >"$VENV/.imagegen-stamp"
say "ready"
echo "$VENV"
