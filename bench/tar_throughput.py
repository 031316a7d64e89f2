"""Small images in tar shards: the whole preprocess job against the decode ceiling (a benchmark, not a test; 10/14).

    .venv/bin/python bench/tar_throughput.py --n 100000 --shards 20 --workdir /tmp/imagegen-tars

Writes N distinct photo-like 256x256 JPEGs (about 14 KB, quality 85) into SHARDS uncompressed webdataset-style tar
shards: 256x256 crops at 64-pixel steps of generated 2048x2048 photo-like canvases, each crop flipped or not
(crops 64 px apart share no pixel grid, so dedup has little to merge). Then, on an idle machine:
  (a) the decode ceiling on a 2,000-image sample: one process reading each member's bytes, PIL's reduced-scale
      JPEG decode (draft) to >= 2x the target and a resize to the target, nothing else;
  (c) `imagegen preprocess SHARDS --resolution 64 --master local[2]` (dedup on, the defaults), cold, as a user runs
      it, with the CPU of its whole process tree.
Prints the stage timings (list_inputs is the shard listing), the whole run's images/s per core against (a), c/a by
wall and by CPU, and the driver's peak RSS.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.pipelines.imagefactory import photo_like  # noqa: E402

SIDE, CANVAS, STEP = 256, 2048, 64
PER_CANVAS = ((CANVAS - SIDE) // STEP + 1) ** 2 * 2  # offsets x (flipped or not)


def _canvas(seed: int) -> Image.Image:
    """photo_like's smooth fields and blobs plus a texture of random periods (40-200 px), so that no 256 px crop is
    near-uniform (a blob's flat inside would be a `blank` reject, not an image)."""
    rng = np.random.default_rng(seed)
    base = np.asarray(photo_like(CANVAS, CANVAS, seed=seed), np.float32)
    y, x = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    for c in range(3):
        px, py = rng.uniform(40, 200, 2)
        base[..., c] += 45 * np.sin(6.283 * x / px + rng.uniform(0, 6.3)) * np.cos(6.283 * y / py)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def _crop(canvas: Image.Image, k: int) -> bytes:
    per_row = (CANVAS - SIDE) // STEP + 1
    flip, pos = divmod(k, per_row * per_row)
    y, x = divmod(pos, per_row)
    tile = canvas.crop((x * STEP, y * STEP, x * STEP + SIDE, y * STEP + SIDE))
    if flip:
        tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    tile.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _write_shard(args: tuple[Path, int, int]) -> int:
    path, start, stop = args
    canvases: dict[int, Image.Image] = {}
    with tarfile.open(path, "w") as tar:
        for i in range(start, stop):
            c, k = divmod(i, PER_CANVAS)
            if c not in canvases:
                canvases = {c: _canvas(10_000 + c)}
            data = _crop(canvases[c], k)
            info = tarfile.TarInfo(f"{i:08d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return stop - start


def make_shards(root: Path, n: int, shards: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    stamp = root.parent / f"{root.name}.json"  # beside the shards: a folder of shards holds shards only
    want = {"n": n, "shards": shards, "side": SIDE, "canvas": "textured"}
    paths = [root / f"shard-{s:05d}.tar" for s in range(shards)]
    if stamp.exists() and json.loads(stamp.read_text()) == want and all(p.exists() for p in paths):
        return paths
    bounds = np.linspace(0, n, shards + 1).astype(int)
    with mp.Pool(os.cpu_count()) as pool:
        pool.map(_write_shard, [(p, int(a), int(b)) for p, a, b in zip(paths, bounds[:-1], bounds[1:])])
    stamp.write_text(json.dumps(want))
    return paths


def decode_ceiling(paths: list[Path], sample: int, resolution: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second) of reduced-scale decode + resize, one process."""
    blobs = []
    with tarfile.open(paths[0]) as tar:
        for m in tar:
            blobs.append(tar.extractfile(m).read())
            if len(blobs) >= sample:
                break
    need = max(2 * resolution, 32)
    t0, c0 = time.perf_counter(), time.process_time()
    for data in blobs:
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (need, need))
        im.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)
    return len(blobs) / (time.perf_counter() - t0), len(blobs) / (time.process_time() - c0)


class _Peak(threading.Thread):
    """Peak RSS of the driver process while it runs, and the CPU of its whole tree (children included)."""

    def __init__(self, proc: psutil.Process):
        super().__init__(daemon=True)
        self.proc, self.peak, self.cpu, self.done = proc, 0, {}, False

    def run(self) -> None:
        while not self.done:
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
                for p in [self.proc, *self.proc.children(recursive=True)]:
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
            except psutil.Error:
                pass
            time.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--workdir", default="/tmp/imagegen-tars")
    args = ap.parse_args()
    work = Path(args.workdir)
    t0 = time.perf_counter()
    paths = make_shards(work / "shards", args.n, args.shards)
    size = sum(p.stat().st_size for p in paths)
    print(f"{args.n} JPEGs {SIDE}x{SIDE} in {len(paths)} shards, {size / args.n / 1024:.1f} KiB each, "
          f"ready in {time.perf_counter() - t0:.0f}s", flush=True)
    for p in paths:  # the page cache holds the shards for every contender
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass
    a = decode_ceiling(paths, 2000, args.resolution)
    out = work / "out"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    cores = int(args.master[6:-1]) if args.master[6:-1].isdigit() else os.cpu_count()
    cli = Path(sys.executable).parent / "imagegen"
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(cli), "preprocess", str(work / "shards"), "--output", str(out), "--resolution",
                             str(args.resolution), "--master", args.master], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch = _Peak(psutil.Process(proc.pid))
    watch.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    watch.done = True
    if proc.returncode != 0:
        raise SystemExit(f"preprocess failed ({proc.returncode}): {stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    placed = c["written"] + sum(c["rejected"].values()) + sum(c["duplicates"].values())
    cpu = sum(watch.cpu.values())
    rate = args.n / wall / cores
    print(f"preprocess: {wall:.1f}s wall, {args.n / wall:.0f} img/s ({rate:.0f} per core); inputs {c['inputs']}, placed "
          f"{placed} (written {c['written']}, duplicates {c['duplicates']}, rejected {sum(c['rejected'].values())})")
    print("  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in manifest["timings"].items()))
    print(f"  CPU: {cpu:.0f} s for the tree, {cpu / args.n * 1e3:.2f} ms/image; driver peak RSS {watch.peak / 2**20:.0f} MiB")
    print(f"  (a) decode ceiling: {a[0]:.0f} img/s per core, {1e3 / a[1]:.2f} CPU-ms/image")
    print(f"  c/a: wall {rate / a[0]:.3f} per core (goal >= 0.3), CPU {a[0] and (args.n / cpu) / a[1]:.3f}; "
          f"listing of {len(paths)} shards {manifest['timings'].get('list_inputs', float('nan')):.1f}s (goal <= 3 s); "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0 if placed == c["inputs"] == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
