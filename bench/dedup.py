"""Near-duplicate search at 100k and 1M pHash-like hashes in Spark local[2], against numpy all-pairs.

    .venv/bin/python bench/dedup.py [--sizes 100000 1000000] [--distance D] [--brute-rows 4000] [--no-verify]

Hashes: 64-bit with exactly 32 ones (like pHash: each bit says "above the median DCT coefficient"),
1% in planted clusters of 5 (members 2..D bits from the centre), 0.5% in chains of 5 (consecutive
links D apart, ends further), and a hot bucket: 0.5% of the hashes share their top 32 bits (the
first band for any m >= 2) with random low bits. Timed: candidate_pairs + greedy_mis (the whole
near-dup search from a cached (id, phash) table), not the data generation. The all-pairs baseline
is numpy XOR + 16-bit-table popcount over blocks of rows (what imagededup's brute force does); it is
timed on --brute-rows query rows against all N and scaled by N / brute-rows (its cost is exactly
linear in query rows). Prints one table (markdown) for docs/benchmarks.md.

Pixel verification: every row also carries a small stored image, 32 x 32 x 1 raw bytes (1 KB: a 1-channel
32 px dataset row) drawn from its hash (the 8 x 8 bit pattern upsampled, plus noise), and the candidate
edges go through `verify` (signatures of the edges' ends + the pixel test) before the MIS, as in the job.
Timed separately, so the table shows the verification's share side by side with the search.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines import dedup  # noqa: E402
from pipelines.spark import get_spark  # noqa: E402

_POP16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)


def swap_bits(u: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Move k one-bits to k zero-bits in each hash: distance 2k, popcount stays 32."""
    out = u.copy()
    for i in range(len(u)):
        bits = np.array([(int(u[i]) >> b) & 1 for b in range(64)])
        ones, zeros = np.flatnonzero(bits), np.flatnonzero(bits == 0)
        flip = np.concatenate([rng.choice(ones, k, replace=False), rng.choice(zeros, k, replace=False)])
        out[i] = u[i] ^ np.uint64(sum(1 << int(b) for b in flip))
    return out


def pop32_hashes(n: int, distance: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.uint64)
    weights = (np.uint64(1) << np.arange(64, dtype=np.uint64))
    for start in range(0, n, 100_000):  # 32 random positions of 64 per hash
        m = min(100_000, n - start)
        pos = np.argsort(rng.random((m, 64), dtype=np.float32), axis=1)[:, :32]
        out[start:start + m] = np.bitwise_or.reduce(weights[pos], axis=1)
    half = max(distance // 2, 1)
    p = 0
    n_clusters = n // 500  # 1% of hashes in clusters of 5
    for _ in range(n_clusters):
        for j in range(1, 5):
            out[p + j] = swap_bits(out[p:p + 1], int(rng.integers(1, half + 1)), rng)[0]
        p += 5
    for _ in range(n // 1000):  # 0.5% in chains of 5
        for j in range(1, 5):
            out[p + j] = swap_bits(out[p + j - 1:p + j], half, rng)[0]
        p += 5
    hot = n // 200  # 0.5%: one shared top half
    top = out[p] & np.uint64(0xFFFFFFFF00000000)
    out[p:p + hot] = top | (out[p + hot:p + 2 * hot] & np.uint64(0xFFFFFFFF))
    return rng.permutation(out).view(np.int64)


def brute_force_seconds(h: np.ndarray, distance: int, rows: int) -> tuple[float, int]:
    u = h.view(np.uint64)
    t = time.perf_counter()
    found = 0
    for start in range(0, rows, 500):
        x = u[start:start + 500, None] ^ u[None, :]
        d = _POP16[x.view(np.uint16)].reshape(*x.shape, 4).sum(-1, dtype=np.int16)  # numpy 1.26: no bitwise_count
        found += int((d <= distance).sum())
    return (time.perf_counter() - t) * len(h) / rows, found


def pixel_payload(h: np.ndarray, seed: int) -> list[bytes]:
    """32 x 32 grey images from the hashes: bit (i, j) of the 8 x 8 pattern -> a 4 x 4 block, plus noise."""
    rng = np.random.default_rng(seed)
    bits = np.unpackbits(h.view(np.uint64).astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).reshape(-1, 8, 8)
    img = np.kron(bits, np.ones((4, 4), np.uint8)) * 160 + 40
    img = np.clip(img + rng.integers(-20, 21, size=img.shape), 0, 255).astype(np.uint8)
    return [x.tobytes() for x in img]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--distance", type=int, default=dedup.DedupConfig().near_distance)
    ap.add_argument("--brute-rows", type=int, default=2000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--no-verify", action="store_true", help="skip the pixel verification (search + MIS only)")
    args = ap.parse_args(argv)
    spark = get_spark("local[2]", app_name="bench-dedup", conf={"spark.sql.shuffle.partitions": str(args.partitions),
                                                               "spark.driver.memory": "6g"})
    cfg = dedup.DedupConfig(near_distance=args.distance)
    results = []
    for n in args.sizes:
        h = pop32_hashes(n, args.distance, seed=n)
        import pandas as pd

        frame = pd.DataFrame({"id": np.arange(n, dtype=np.int64), "phash": h})
        if not args.no_verify:
            frame = frame.assign(width=32, height=32, channels=1, pixel_encoding="raw", pixels=pixel_payload(h, seed=n))
        df = spark.createDataFrame(frame)
        df = df.repartition(args.partitions).localCheckpoint(eager=True)
        m, r = dedup.choose_bands(n, n, args.distance)
        t0 = time.perf_counter()
        edges = dedup.candidate_pairs(df, args.distance, m, r, cfg.hot_bucket_cap, cfg.broadcast_max_rows).localCheckpoint(eager=True)
        t1 = time.perf_counter()
        n_edges = edges.count()
        if not args.no_verify:
            edges = dedup.verify(edges, df, cfg.min_similarity).localCheckpoint(eager=True)
        tv = time.perf_counter()
        decisions = dedup.greedy_mis(df.select("id"), edges, cfg.max_rounds, cfg.fallback_max_edges, cfg.driver_max_edges)
        kept = decisions.filter("kept").count()
        t2 = time.perf_counter()
        raw = dedup.band_join(df, args.distance, m, r, cfg.hot_bucket_cap, cfg.broadcast_max_rows).count()  # untimed
        enumerated = n * sum(dedup.ball_size(w, r) for w in dedup.band_widths(m))
        row = dict(n=n, m=m, r=r, t_pairs=t1 - t0, t_verify=tv - t1, t_mis=t2 - tv, t=t2 - t0, edges=n_edges, kept=kept,
                   cand_per_image=raw / n, enum_per_image=enumerated / n)
        if n == min(args.sizes):
            row["brute_s"], found = brute_force_seconds(h, args.distance, min(args.brute_rows, n))
        results.append(row)
        print(row, flush=True)
    print(f"\n## near-dup search, D={args.distance}, Spark local[2], {args.partitions} shuffle partitions\n")
    print("| N | bands m | radius r | candidate pairs / image | enumerated keys / image | edges (pairs within D) | kept | pairs s | verify s | MIS s | total s | (search+MIS+verify) / (search+MIS) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in results:
        print(f"| {x['n']:,} | {x['m']} | {x['r']} | {x['cand_per_image']:.1f} | {x['enum_per_image']:.0f} | {x['edges']:,} | {x['kept']:,} | "
              f"{x['t_pairs']:.1f} | {x['t_verify']:.1f} | {x['t_mis']:.1f} | {x['t']:.1f} | {x['t'] / (x['t'] - x['t_verify']):.2f} |")
    small = results[0]
    if len(results) > 1:
        print(f"\ntime ratio {results[-1]['n']:,} / {small['n']:,}: {results[-1]['t'] / small['t']:.2f} (goal <= 12; N ratio {results[-1]['n'] / small['n']:.0f})")
    print(f"all-pairs numpy at {small['n']:,}: {small['brute_s']:.1f} s (timed on {min(args.brute_rows, small['n'])} rows x N, scaled); "
          f"Spark banded / all-pairs time: {small['t'] / small['brute_s']:.3f}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
