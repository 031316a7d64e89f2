#!/usr/bin/env bash
# A real Spark standalone cluster on 127.0.0.1 from the installed pyspark: one master, N workers.
#
#   scripts/spark-cluster.sh start  [--workers N] [--dir DIR] [--cores C] [--memory M]
#   scripts/spark-cluster.sh status [--dir DIR]
#   scripts/spark-cluster.sh stop   [--dir DIR]
#
# start: picks free ports (or SPARK_MASTER_PORT / SPARK_MASTER_WEBUI_PORT from the environment), starts
# the master and N workers (C cores, M memory each; default 1 and 1g) with logs and pid files under DIR
# (default .spark-cluster/), waits until all N workers are ALIVE in the master's JSON, and writes
# DIR/cluster.env (MASTER_URL=spark://127.0.0.1:PORT, WEBUI_URL=http://127.0.0.1:PORT).
# stop: SIGTERM to each recorded pid (workers first, then the master), waits, SIGKILL after 20 s.
# Only the processes this script recorded are ever signalled.
# Executors run the venv's python (PYSPARK_PYTHON); submit with that python too (docs/operations.md).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${IMAGEGEN_PYTHON:-$REPO/.venv/bin/python}"
CMD="${1:-}"
[ $# -gt 0 ] && shift
WORKERS=2
DIR="$REPO/.spark-cluster"
CORES=1
MEMORY=1g
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --cores) CORES="$2"; shift 2 ;;
    --memory) MEMORY="$2"; shift 2 ;;
    *) echo "spark-cluster: unknown option $1 (expected --workers N, --dir DIR, --cores C, --memory M)" >&2; exit 2 ;;
  esac
done
case "$WORKERS" in ''|*[!0-9]*) echo "spark-cluster: --workers expects a whole number, got '$WORKERS'" >&2; exit 2 ;; esac

die() { echo "spark-cluster: $*" >&2; exit 1; }

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# Number of ALIVE workers in the master's JSON, or -1 when the master does not answer.
alive_workers() {
  "$PY" - "$1" <<'EOF'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/json/", timeout=3) as r:
        state = json.load(r)
    print(sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE"))
except Exception:
    print(-1)
EOF
}

stop_pid() {  # stop_pid NAME PIDFILE: TERM, wait up to 20 s, then KILL; only the recorded pid
  local name="$1" file="$2" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.2; done
    if alive "$pid"; then
      echo "spark-cluster: $name (pid $pid) ignored SIGTERM for 20 s; SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.2; done
    fi
  fi
  rm -f "$file"
}

do_stop() {
  local f
  for f in "$DIR"/worker-*.pid; do [ -e "$f" ] && stop_pid "$(basename "$f" .pid)" "$f"; done
  stop_pid master "$DIR/master.pid"
  rm -f "$DIR/cluster.env"
  echo "spark-cluster: stopped ($DIR)"
}

do_status() {
  [ -f "$DIR/cluster.env" ] || { echo "spark-cluster: not running ($DIR has no cluster.env)"; return 3; }
  # shellcheck disable=SC1091
  . "$DIR/cluster.env"
  local n
  n="$(alive_workers "$WEBUI_URL")"
  if [ "$n" -lt 0 ]; then echo "spark-cluster: master $MASTER_URL does not answer at $WEBUI_URL"; return 1; fi
  echo "spark-cluster: master $MASTER_URL (web UI $WEBUI_URL), $n alive worker(s)"
}

do_start() {
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  if [ -f "$DIR/master.pid" ] && alive "$(cat "$DIR/master.pid")"; then
    die "a master recorded in $DIR is running (pid $(cat "$DIR/master.pid")); run: $0 stop --dir $DIR"
  fi
  [ -x "$PY" ] || die "python not found at $PY (run scripts/setup.sh, or set IMAGEGEN_PYTHON)"
  SPARK_HOME="$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
  export SPARK_HOME
  export SPARK_LOCAL_IP=127.0.0.1          # every daemon, executor and block manager on loopback
  export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PY}"
  export SPARK_NO_DAEMONIZE=1
  local port webui
  port="${SPARK_MASTER_PORT:-$(free_port)}"
  webui="${SPARK_MASTER_WEBUI_PORT:-$(free_port)}"
  local master_url="spark://127.0.0.1:$port" webui_url="http://127.0.0.1:$webui"

  nohup "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
    --host 127.0.0.1 --port "$port" --webui-port "$webui" >"$DIR/master.log" 2>&1 </dev/null &
  echo $! >"$DIR/master.pid"
  for i in $(seq 1 "$WORKERS"); do
    mkdir -p "$DIR/work-$i"
    # --webui-port 0: any free port; the worker's own RPC port is free-picked by default.
    nohup "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker "$master_url" \
      --cores "$CORES" --memory "$MEMORY" --host 127.0.0.1 --webui-port 0 --work-dir "$DIR/work-$i" \
      >"$DIR/worker-$i.log" 2>&1 </dev/null &
    echo $! >"$DIR/worker-$i.pid"
  done

  local n=-1
  for _ in $(seq 1 300); do  # up to ~90 s: two JVMs start slowly on a loaded 2-core machine
    alive "$(cat "$DIR/master.pid")" || { tail -20 "$DIR/master.log" >&2; do_stop >/dev/null; die "the master exited during start (log: $DIR/master.log)"; }
    n="$(alive_workers "$webui_url")"
    [ "$n" -ge "$WORKERS" ] && break
    sleep 0.3
  done
  if [ "$n" -lt "$WORKERS" ]; then
    do_stop >/dev/null
    die "only $n of $WORKERS workers registered with $master_url (logs: $DIR/*.log)"
  fi
  printf 'MASTER_URL=%s\nWEBUI_URL=%s\nSPARK_HOME=%s\n' "$master_url" "$webui_url" "$SPARK_HOME" >"$DIR/cluster.env"
  echo "spark-cluster: master $master_url (web UI $webui_url), $n worker(s) x $CORES core(s), $MEMORY; logs and pids in $DIR"
}

case "$CMD" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  *) echo "usage: $0 start|stop|status [--workers N] [--dir DIR] [--cores C] [--memory M]" >&2; exit 2 ;;
esac
