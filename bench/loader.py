"""Loader benchmark: read-and-collate throughput of the arrow and petastorm readers, side by side, one rank.

    .venv/bin/python bench/loader.py [--rows 20000] [--row-group 1000] [--batch 256] [--repeats 3]

Writes a dataset of N raw 64x64 RGB rows (random bytes, schema IMAGES_ARROW, snappy, pixels PLAIN-encoded as Spark
writes them, row groups of --row-group rows) plus a manifest to a temp dir, then for each reader iterates whole
epochs (batch --batch, rank 0 of 1, shuffle on) and only touches each batch (no model, no normalisation). Opening
the loader (metadata) is timed separately and not included in the per-epoch numbers. Every one of the --repeats epochs is printed, then
the median and the best (by images/s per core). The arrow reader's batches are (B, C, H, W) channels_last views of a
(B, H, W, C) buffer (no transpose); petastorm's go through the same decode_pixel_column.

How cores are counted: "per core" = images / CPU seconds of this process over the epoch (time.process_time, which
sums every thread: the consumer, the arrow reader's prefetch thread, pyarrow's I/O and decode pool, petastorm's
worker/ventilator threads, torch). On a shared machine this is steadier than wall time and does not credit a reader
for using more cores. torch intra-op threads are set to 1. "faults/img" = minor page faults of the process per
image (getrusage ru_minflt): fresh pages the allocators had to get from the kernel (~1-2 us each here).

"(pq read only)" is the floor under any Parquet reader: ParquetFile(pre_buffer=True).read_row_group of every row
group (pixels + label_index) and nothing else, with pyarrow's use_threads=True (as the arrow reader reads) and
use_threads=False.

Goal (docs/benchmarks.md "## Loader"): the arrow reader >= 100k images/s per core on raw 64x64 rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import IMAGES_ARROW, SCHEMA_VERSION, DatasetLayout, Manifest  # noqa: E402
from training.data import LoaderConfig, ReaderKind, open_loader  # noqa: E402


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    rows: int
    row_group: int
    batch: int
    resolution: int
    repeats: int
    petastorm_workers: int
    seed: int = 0


def write_dataset(root: Path, cfg: BenchConfig) -> None:
    """cfg.rows random raw RGB images at cfg.resolution, in files of 5 row groups, all IMAGES_ARROW columns."""
    rng = np.random.default_rng(cfg.seed)
    res, c = cfg.resolution, 3
    row_bytes = res * res * c
    part = Path(DatasetLayout(str(root)).images) / "run_id=bench"
    part.mkdir(parents=True)
    per_file = cfg.row_group * 5
    for f, start in enumerate(range(0, cfg.rows, per_file)):
        n = min(per_file, cfg.rows - start)
        data = rng.integers(0, 256, size=n * row_bytes, dtype=np.uint8)
        offsets = np.arange(n + 1, dtype=np.int32) * row_bytes
        pixels = pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
        ids = [f"{start + i:032x}" for i in range(n)]
        cols = {
            "image_id": pa.array(ids),
            "source_uri": pa.array([f"bench://{i}" for i in ids]),
            "sha256": pa.array(ids),
            "pixels_sha256": pa.array(ids),
            "phash": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "label": pa.array(["x"] * n),
            "label_index": pa.array(np.zeros(n, np.int32)),
            "orig_width": pa.array(np.full(n, res, np.int32)),
            "orig_height": pa.array(np.full(n, res, np.int32)),
            "orig_format": pa.array(["PNG"] * n),
            "orig_mode": pa.array(["RGB"] * n),
            "file_size": pa.array(np.full(n, row_bytes, np.int64)),
            "width": pa.array(np.full(n, res, np.int32)),
            "height": pa.array(np.full(n, res, np.int32)),
            "channels": pa.array(np.full(n, c, np.int32)),
            "pixel_encoding": pa.array(["raw"] * n),
            "pixels": pixels,
            "brightness": pa.array(np.full(n, 127.5, np.float32)),
            "contrast": pa.array(np.full(n, 73.6, np.float32)),
            "entropy": pa.array(np.full(n, 8.0, np.float32)),
        }
        schema = pa.schema([fld for fld in IMAGES_ARROW if fld.name != "run_id"], metadata=IMAGES_ARROW.metadata)
        table = pa.Table.from_pydict(cols, schema=schema)
        # As the Spark job (parquet-mr defaults) writes them: snappy, and the pixels column PLAIN-encoded with no
        # dictionary page (parquet-mr abandons the dictionary for 12 KB random rows; pyarrow's default would keep a
        # dictionary page plus PLAIN fallback pages, which measured ~1.5x more CPU per row to read).
        pq.write_table(
            table,
            part / f"part-{f:05d}.parquet",
            row_group_size=cfg.row_group,
            compression="snappy",
            use_dictionary=[name for name in table.column_names if name != "pixels"],
        )
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        run_id="bench",
        resolution=res,
        channels=c,
        pixel_encoding="raw",
        classes=["x"],
        counts={"inputs": cfg.rows, "written": cfg.rows, "rejected": {}, "duplicates": {"exact": 0, "near": 0}},
        label_counts={"x": cfg.rows},
        pixel_mean=[0.5] * c,
        pixel_std=[0.2887] * c,
        config={"bench": True},
        input_fingerprint="bench",
        timings={},
        versions={},
    )
    Path(DatasetLayout(str(root)).manifest).write_text(manifest.to_json())


Run = dict[str, float]


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _run(images: int, wall: float, cpu: float, faults: int, open_s: float) -> Run:
    return {"images": images, "wall_s": wall, "cpu_s": cpu, "img_per_s": images / wall, "img_per_cpu_s": images / cpu,
            "faults_per_img": faults / images, "open_s": open_s}


def measure(root: Path, reader: ReaderKind, cfg: BenchConfig) -> list[Run]:
    """One run per epoch, cfg.repeats epochs of one loader."""
    t0 = time.perf_counter()
    loader = open_loader(
        LoaderConfig(data=str(root), reader=reader, batch_size=cfg.batch, seed=cfg.seed, petastorm_workers=cfg.petastorm_workers)
    )
    open_s = time.perf_counter() - t0
    runs: list[Run] = []
    with loader:
        for epoch in range(cfg.repeats):
            images = 0
            checksum = 0
            w0, c0, f0 = time.perf_counter(), time.process_time(), _minor_faults()
            for batch in loader.epoch(epoch):
                images += batch.images.shape[0]
                checksum += int(batch.images[0, 0, 0, 0])  # touch the batch
            wall, cpu, faults = time.perf_counter() - w0, time.process_time() - c0, _minor_faults() - f0
            assert images == loader.steps_per_epoch * cfg.batch, (images, loader.steps_per_epoch)
            runs.append(_run(images, wall, cpu, faults, open_s))
    return runs


def measure_parquet_read(root: Path, cfg: BenchConfig, *, use_threads: bool) -> list[Run]:
    """The floor under any Parquet reader: pyarrow read_row_group of every row group (pixels + label_index), nothing
    else; cfg.repeats passes."""
    files = sorted(Path(DatasetLayout(str(root)).images).rglob("*.parquet"))
    runs: list[Run] = []
    for _ in range(cfg.repeats):
        rows = 0
        w0, c0, f0 = time.perf_counter(), time.process_time(), _minor_faults()
        for f in files:
            pf = pq.ParquetFile(f, pre_buffer=True)  # as the arrow reader opens them
            for i in range(pf.num_row_groups):
                rows += pf.read_row_group(i, columns=["pixels", "label_index"], use_threads=use_threads).num_rows
        wall, cpu, faults = time.perf_counter() - w0, time.process_time() - c0, _minor_faults() - f0
        runs.append(_run(rows, wall, cpu, faults, 0.0))
    return runs


def _summary(runs: list[Run]) -> tuple[Run, Run]:
    """(median run, best run) by images per CPU second."""
    ranked = sorted(runs, key=lambda r: r["img_per_cpu_s"])
    return ranked[(len(ranked) - 1) // 2], ranked[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--row-group", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--petastorm-workers", type=int, default=1)
    a = p.parse_args(argv)
    cfg = BenchConfig(a.rows, a.row_group, a.batch, a.resolution, a.repeats, a.petastorm_workers)
    torch.set_num_threads(1)
    print(cfg)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, os.cpu_count()={os.cpu_count()}, "
          f"python {platform.python_version()}, pyarrow {pa.__version__}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-loader-") as tmp:
        root = Path(tmp) / "ds"
        t0 = time.perf_counter()
        write_dataset(root, cfg)
        print(f"wrote {cfg.rows} rows ({cfg.rows * cfg.resolution**2 * 3 / 2**20:.0f} MiB of pixels) in {time.perf_counter() - t0:.1f}s")
        runs = {
            "arrow": measure(root, ReaderKind.ARROW, cfg),
            "petastorm": measure(root, ReaderKind.PETASTORM, cfg),
            "(pq read, threads)": measure_parquet_read(root, cfg, use_threads=True),
            "(pq read, 1 thread)": measure_parquet_read(root, cfg, use_threads=False),
        }
    header = f"{'reader':<20} {'run':>6} {'images':>7} {'wall s':>7} {'cpu s':>7} {'images/s':>10} {'images/s/core':>14} {'faults/img':>10} {'open s':>7}"
    print(header)
    summaries = {name: _summary(rs) for name, rs in runs.items()}
    for name, rs in runs.items():
        median, best = summaries[name]
        rows = [(str(i), r) for i, r in enumerate(rs)] + [("median", median), ("best", best)]
        for label, r in rows:
            print(f"{name:<20} {label:>6} {r['images']:>7.0f} {r['wall_s']:>7.3f} {r['cpu_s']:>7.3f} {r['img_per_s']:>10,.0f} "
                  f"{r['img_per_cpu_s']:>14,.0f} {r['faults_per_img']:>10.2f} {r['open_s']:>7.3f}")
    (arrow, arrow_best), (peta, peta_best) = summaries["arrow"], summaries["petastorm"]
    print(f"arrow/petastorm (medians): {arrow['img_per_s'] / peta['img_per_s']:.2f}x images/s, "
          f"{arrow['img_per_cpu_s'] / peta['img_per_cpu_s']:.2f}x images/s per core; "
          f"(bests): {arrow_best['img_per_cpu_s'] / peta_best['img_per_cpu_s']:.2f}x images/s per core")
    print(f"load average (1, 5, 15 min) after the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    goal = 100_000
    print(f"goal arrow >= {goal:,} images/s per core (median epoch): {'met' if arrow['img_per_cpu_s'] >= goal else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
