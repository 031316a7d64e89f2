"""Preprocess throughput, three ways side by side in one run (a benchmark, not a test).

    .venv/bin/python bench/preprocess.py --n 2000 --master 'local[2]'

Generates N photo-like JPEGs (512x512 and 1024x768 by default), then measures:
  (a) decode ceiling: a single-process loop doing only the reduced-scale JPEG decode (read bytes, open, draft, load);
  (b) bare loop: a single-process loop doing the full per-image work (pipelines.decode.process_image + batched pHash);
  (c) the preprocess job (pipelines.preprocess.run_preprocess) on a local[K] Spark session, already started.
Prints images/s per core for each, and the ratios c/a and c/b. (c) is given twice: the decode stage alone
(read + decode + stage to Parquet) and the whole job (listing, decode, stats, writes, verification, commit).
Goal (issue 2/8): c >= 0.6 * a per core.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.config import PreprocessConfig  # noqa: E402
from pipelines.decode import Decoded, process_image  # noqa: E402
from pipelines.phash import phash_batch  # noqa: E402
from tests.pipelines.imagefactory import photo_like  # noqa: E402


def generate(root: Path, n: int, sizes: list[tuple[int, int]], quality: int, seed: int = 0) -> list[Path]:
    """n distinct JPEGs: a few photo-like bases per size, each file a different shifted/flipped crop of one."""
    rng = np.random.default_rng(seed)
    bases = {s: [np.asarray(photo_like(s[0] + 64, s[1] + 64, seed=seed + 100 * k + i)) for i in range(8)]
             for k, s in enumerate(sizes)}
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        base = bases[(w, h)][int(rng.integers(0, 8))]
        dx, dy = (int(v) for v in rng.integers(0, 64, 2))
        arr = base[dy:dy + h, dx:dx + w]
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        path = root / f"img_{i:06d}.jpg"
        Image.fromarray(np.ascontiguousarray(arr)).save(path, format="JPEG", quality=quality)
        paths.append(path)
    return paths


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and all its descendants (Spark's JVM, Python workers).
    On a shared machine wall time depends on what else runs; CPU time measures the work itself."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            stats[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    me = os.getpid()

    def descends(pid: int) -> bool:
        while pid in stats and pid not in (me, 0, 1):
            pid = stats[pid][0]
        return pid == me

    return sum(cpu for pid, (_, cpu) in stats.items() if descends(pid))


def decode_ceiling(paths: list[Path], need: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        im = Image.open(io.BytesIO(p.read_bytes()))
        im.draft("RGB", (need, need))
        im.load()
    return len(paths) / (time.perf_counter() - t0), len(paths) / (time.process_time() - c0)


def bare_loop(paths: list[Path], cfg: PreprocessConfig, batch: int = 32) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    ok = 0
    for i in range(0, len(paths), batch):
        grays = []
        for p in paths[i:i + batch]:
            r = process_image(p.read_bytes(), str(p), cfg)
            if isinstance(r, Decoded):
                grays.append(r.gray)
                ok += 1
        if grays:
            phash_batch(np.stack(grays))
    rate = len(paths) / (time.perf_counter() - t0), len(paths) / (time.process_time() - c0)
    if ok != len(paths):
        raise SystemExit(f"bare loop: expected {len(paths)} images, {ok} decoded")
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--sizes", default="512x512,1024x768")
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--workdir", default=None, help="where to generate (default: a temp dir, removed at the end)")
    args = ap.parse_args()
    cores = int(args.master[len("local["):-1]) if args.master.startswith("local[") and args.master[6:-1].isdigit() else os.cpu_count()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="imagegen-bench-"))
    cfg = PreprocessConfig(resolution=args.resolution, progress_interval_s=30.0)
    try:
        t0 = time.perf_counter()
        paths = generate(work / "jpegs", args.n, sizes, args.quality)
        mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        print(f"generated {len(paths)} JPEGs {args.sizes} q{args.quality}, mean {mean_kb:.0f} KB, in {time.perf_counter() - t0:.1f}s")

        for p in paths:  # warm the page cache so every contender reads from memory
            p.read_bytes()
        a = decode_ceiling(paths, max(args.resolution, 32))
        b = bare_loop(paths, cfg)

        from pipelines.preprocess import run_preprocess
        from pipelines.spark import get_spark

        spark = get_spark(args.master, app_name="imagegen-bench")
        # Warm-up run on a few images: JVM JIT, Python workers and imports are up before timing (a long
        # job amortises them; a 1000-image benchmark would otherwise measure start-up).
        warm = work / "warm"
        warm.mkdir()
        for p in paths[:64]:
            shutil.copy(p, warm / p.name)
        run_preprocess(spark, [str(warm)], str(work / "warm_out"), cfg, log=lambda s: None)
        t0, c0 = time.perf_counter(), tree_cpu_seconds()
        result = run_preprocess(spark, [str(work / "jpegs")], str(work / "out"), cfg, log=lambda s: None)
        wall, cpu = time.perf_counter() - t0, tree_cpu_seconds() - c0
        m = result.manifest
        if m.counts["written"] != len(paths):
            raise SystemExit(f"job wrote {m.counts['written']} of {len(paths)} images")
        n = len(paths)
        c_decode = n / m.timings["decode"] / cores
        c_job = n / wall / cores
        c_cpu = n / cpu
        spark.stop()

        print(f"\n{n} JPEGs, resolution {args.resolution}, Spark {args.master}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"{'':46}{'img/s per core':>16}{'img per CPU-s':>15}")
        print(f"  (a) reduced-scale decode only, 1 process  {a[0]:16.0f}{a[1]:15.0f}")
        print(f"  (b) full per-image work, bare loop        {b[0]:16.0f}{b[1]:15.0f}")
        print(f"  (c) job: decode stage ({m.timings['decode']:5.1f}s wall)      {c_decode:16.0f}")
        print(f"  (c) job: end to end ({wall:5.1f}s wall)        {c_job:16.0f}{c_cpu:15.0f}")
        print(f"  wall ratios: c/a = {c_decode / a[0]:.2f} (decode stage), {c_job / a[0]:.2f} (end to end); "
              f"c/b = {c_decode / b[0]:.2f}, {c_job / b[0]:.2f}; b/a = {b[0] / a[0]:.2f}")
        print(f"  CPU ratios:  c/a = {c_cpu / a[1]:.2f} (end to end, all JVM + Python CPU); c/b = {c_cpu / b[1]:.2f}; b/a = {b[1] / a[1]:.2f}")
        print(f"  job timings: {m.timings}")
        print(f"  goal c/a >= 0.6 per core: {'met' if c_decode / a[0] >= 0.6 else 'NOT met'} by wall (decode stage), "
              f"{'met' if c_cpu / a[1] >= 0.6 else 'NOT met'} by CPU (end to end)")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
