"""Near-duplicate candidate search at 1M and 4M clustered pHash-like hashes in Spark local[2]: time, work per
image and recall against brute force, side by side from one run.

    .venv/bin/python bench/dedup.py [--sizes 1000000 4000000] [--distance D] [--sample-rows 1000] [--verify]

Hashes (`clustered_hashes`, the same generator and parameters at every N; only the draws depend on N):
* 4,096 centres, uniform random 64-bit, drawn from one fixed seed (the same centres at every N);
* 60% of the base hashes belong to a centre, picked with Zipf weights (rank + 1)^-0.6 (the largest cluster
  holds 1.5% of them), each bit flipped with probability 0.35 from its centre: a member agrees with its
  centre on 65% of the bits and two members agree on 54.5% on average (random hashes: 50%), like real pHashes
  of similar layouts, so sampled-bit buckets fill unevenly. Some hashes fall within D of each other without
  being planted ("natural" near pairs, nearly all at distance 10-12, mostly between members of two clusters
  whose centres happen to be close): 0.116 per image at 1M, more per image as N grows because the centres
  are fixed (0.127 per image at 1M with p = 0.3);
* 40% uniform random;
* planted near duplicates: 2% of N are copies of a random base hash with d bits flipped, d uniform in 0..D
  (positions uniform): the pairs the job must find.
The old generator (uniform hashes with 32 ones plus small planted groups) had almost no natural near pairs.

Timed: the candidate search (`lsh_pairs`, or the exact multi-index join with --method exact) and the
`greedy_mis` keep rule, from a checkpointed (id, phash) table; with --verify also the pixel test on a 1 KB
32 x 32 payload per row drawn from its hash. Recall, untimed: (a) every planted pair; (b) brute force of
--sample-rows random rows against all N (numpy XOR + 16-bit popcount table), every pair within D touching
a sampled row; "recall" is over the union of (a) and (b). "Comparisons / image" are the popcounts the
search does (from the actual group sizes, `lsh_comparisons`), its candidate pairs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines import dedup
from pipelines.dedup import candidates, keep, verify

CENTRES = 4096         # cluster centres, the same at every N (seed CENTRE_SEED)
CENTRE_SEED = 12345
CLUSTERED = 0.6        # share of base hashes drawn around a centre
ZIPF = 0.6             # cluster weights (rank + 1)^-ZIPF
FLIP = 0.35            # per-bit flip probability of a cluster member (bits, of 64)
PLANTED = 0.02         # planted near-duplicate copies, as a share of N

_POP16 = np.array([i.bit_count() for i in range(1 << 16)], dtype=np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    p = _POP16[x.view(np.uint16)].reshape(-1, 4)
    return p[:, 0] + p[:, 1] + p[:, 2] + p[:, 3]


def _bits_to_u64(bits: np.ndarray) -> np.ndarray:
    """(n, 64) bool -> (n,) uint64 (bit i of column i)."""
    return (bits.astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


def clustered_hashes(n: int, distance: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (hashes int64 (n,), planted (p, 3) int64 rows (i, j, d) with i < j: the planted pairs, d = their
    Hamming distance). See the module docstring for the model; row order is random."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(CENTRE_SEED).integers(0, 2**64, size=CENTRES, dtype=np.uint64)
    weights = (np.arange(CENTRES) + 1.0) ** -ZIPF
    n_planted = int(n * PLANTED)
    n_base = n - n_planted
    n_clustered = int(n_base * CLUSTERED)
    base = np.empty(n_base, dtype=np.uint64)
    for start in range(0, n_clustered, 100_000):  # chunks: (100k, 64) floats at a time
        m = min(100_000, n_clustered - start)
        which = rng.choice(CENTRES, size=m, p=weights / weights.sum())
        base[start:start + m] = centres[which] ^ _bits_to_u64(rng.random((m, 64)) < FLIP)
    base[n_clustered:] = rng.integers(0, 2**64, size=n_base - n_clustered, dtype=np.uint64)
    src = rng.choice(n_base, size=n_planted, replace=False)
    d = rng.integers(0, distance + 1, size=n_planted)
    flips = np.zeros(n_planted, dtype=np.uint64)
    for start in range(0, n_planted, 100_000):
        m = min(100_000, n_planted - start)
        ranks = np.argsort(rng.random((m, 64)), axis=1).argsort(axis=1)  # a random permutation of the bits per row
        flips[start:start + m] = _bits_to_u64(ranks < d[start:start + m, None])  # its first d positions
    h = np.concatenate([base, base[src] ^ flips])
    order = rng.permutation(n)
    where = np.empty(n, dtype=np.int64)
    where[order] = np.arange(n)  # new position of old row k
    a, b = where[src], where[n_base + np.arange(n_planted)]
    planted = np.stack([np.minimum(a, b), np.maximum(a, b), popcount(h[src] ^ h[n_base + np.arange(n_planted)]).astype(np.int64)], 1)
    return h[order].view(np.int64), planted


def brute_sample(h: np.ndarray, distance: int, rows: np.ndarray) -> np.ndarray:
    """All pairs within `distance` touching the sampled rows, by brute force: (k, 3) rows (i, j, d), i < j."""
    u = h.view(np.uint64)
    out = []
    for i in rows:
        pc = popcount(u ^ u[i])
        js = np.flatnonzero(pc <= distance)
        js = js[js != i]
        out.extend((min(int(i), int(j)), max(int(i), int(j)), int(pc[j])) for j in js)
    return np.array(sorted(set(out)), dtype=np.int64).reshape(-1, 3)


def pixel_payload(h: np.ndarray, seed: int) -> list[bytes]:
    """32 x 32 grey images from the hashes: bit (i, j) of the 8 x 8 pattern -> a 4 x 4 block, plus noise."""
    rng = np.random.default_rng(seed)
    bits = np.unpackbits(h.view(np.uint64).astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).reshape(-1, 8, 8)
    img = np.kron(bits, np.ones((4, 4), np.uint8)) * 160 + 40
    img = np.clip(img + rng.integers(-20, 21, size=img.shape), 0, 255).astype(np.uint8)
    return [x.tobytes() for x in img]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--distance", type=int, default=dedup.DedupConfig().near_distance)
    ap.add_argument("--sample-rows", type=int, default=1000, help="rows brute-forced against all N for the recall")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--method", choices=["lsh", "exact"], default="lsh")
    ap.add_argument("--verify", action="store_true", help="also time the pixel verification (1 KB payload per row)")
    args = ap.parse_args(argv)
    import pandas as pd

    from pipelines.spark import get_spark

    spark = get_spark("local[2]", app_name="bench-dedup", conf={"spark.sql.shuffle.partitions": str(args.partitions),
                                                               "spark.driver.memory": "6g"})
    cfg = dedup.DedupConfig(near_distance=args.distance)
    results = []
    for n in args.sizes:
        h, planted = clustered_hashes(n, args.distance, seed=n)
        frame = pd.DataFrame({"id": np.arange(n, dtype=np.int64), "phash": h})
        if args.verify:
            frame = frame.assign(width=32, height=32, channels=1, pixel_encoding="raw", pixels=pixel_payload(h, seed=n))
        df = spark.createDataFrame(frame).repartition(args.partitions).localCheckpoint(eager=True)
        del frame
        t0 = time.perf_counter()
        if args.method == "lsh":
            edges = candidates.lsh_pairs(df.select("id", "phash"), args.distance, groups=cfg.lsh_groups, subtables=cfg.lsh_subtables,
                                    window=cfg.lsh_window, max_group_rows=cfg.lsh_max_group_rows,
                                    exact_rows=cfg.lsh_exact_rows, seed=cfg.lsh_seed)
        else:
            m, r = candidates.choose_bands(n, n, args.distance)
            edges = candidates.candidate_pairs(df.select("id", "phash"), args.distance, m, r, cfg.hot_bucket_cap, cfg.broadcast_max_rows)
        edges = searched = edges.localCheckpoint(eager=True)
        t1 = time.perf_counter()
        if args.verify:
            edges = verify.verify(edges, df, cfg.min_similarity).localCheckpoint(eager=True)
        tv = time.perf_counter()
        decisions = keep.greedy_mis(df.select("id"), edges, cfg.max_rounds, cfg.fallback_max_edges, cfg.driver_max_edges)
        kept = decisions.filter("kept").count()
        t2 = time.perf_counter()
        # Untimed: what the search examined and what it found, against the truth.
        if args.method == "lsh":
            key_bits = candidates.group_key_bits(n, cfg.lsh_max_group_rows) if n > cfg.lsh_exact_rows else 0
            sizes = [r["count"] for r in candidates.lsh_groups(df.select("id", "phash"), cfg.lsh_groups, key_bits, cfg.lsh_seed)
                     .groupBy("g", "key").count().collect()]
            comparisons = candidates.lsh_comparisons(sizes, cfg.lsh_subtables, cfg.lsh_window, cfg.lsh_exact_rows)
            shape = f"G={cfg.lsh_groups} T={cfg.lsh_subtables} W={cfg.lsh_window} key bits {key_bits}, largest group {max(sizes):,}"
        else:
            comparisons = candidates.band_join(df.select("id", "phash"), args.distance, m, r, cfg.hot_bucket_cap, cfg.broadcast_max_rows).count()
            shape = f"MIH m={m} r={r}"
        # Recall is the search's: the edges before the pixel test.
        found = np.array([(r.src, r.dst, r.distance) for r in searched.collect()], dtype=np.int64).reshape(-1, 3)
        sample = brute_sample(h, args.distance, np.random.default_rng(n + 1).choice(n, size=min(args.sample_rows, n), replace=False))
        truth = np.unique(np.concatenate([planted, sample]), axis=0)
        codes_found = set(map(tuple, found[:, :2].tolist()))
        hit = np.array([(int(a), int(b)) in codes_found for a, b, _ in truth], dtype=bool)
        hit_planted = np.array([(int(a), int(b)) in codes_found for a, b, _ in planted], dtype=bool)
        hit_sample = np.array([(int(a), int(b)) in codes_found for a, b, _ in sample], dtype=bool)
        by_d = {d: (int(hit[truth[:, 2] == d].sum()), int((truth[:, 2] == d).sum())) for d in range(args.distance + 1)}
        wrong = int((popcount(h.view(np.uint64)[found[:, 0]] ^ h.view(np.uint64)[found[:, 1]]) != found[:, 2]).sum()) if len(found) else 0
        row = {"n": n, "shape": shape, "t_pairs": t1 - t0, "t_verify": tv - t1, "t_mis": t2 - tv, "t": t2 - t0, "found": len(found), "kept": kept,
                   "comparisons_per_image": comparisons / n, "recall": hit.mean(), "recall_planted": hit_planted.mean(),
                   "recall_sample": hit_sample.mean() if len(sample) else float("nan"), "truth": len(truth), "sample_pairs": len(sample),
                   "wrong_distance": wrong, "by_d": by_d}
        results.append(row)
        print(row, flush=True)
    print(f"\n## near-dup search ({args.method}), D={args.distance}, Spark local[2], {args.partitions} shuffle partitions\n")
    print("| N | search | comparisons / image | pairs found / image | recall (all truth pairs) | recall planted | recall brute-force sample | search s | verify s | MIS s | total s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for x in results:
        print(f"| {x['n']:,} | {x['shape']} | {x['comparisons_per_image']:.1f} | {x['found'] / x['n']:.3f} | {x['recall']:.4f} ({x['truth']:,} pairs) | "
              f"{x['recall_planted']:.4f} | {x['recall_sample']:.4f} ({x['sample_pairs']:,} pairs) | {x['t_pairs']:.1f} | {x['t_verify']:.1f} | {x['t_mis']:.1f} | {x['t']:.1f} |")
    print("\nrecall by distance (found / truth pairs):")
    for x in results:
        print(f"  N={x['n']:,}: " + ", ".join(f"{d}: {a}/{b}" for d, (a, b) in x["by_d"].items() if b))
    if len(results) > 1:
        lo, hi = results[0], results[-1]
        print(f"\nN ratio {hi['n'] / lo['n']:.0f}: time ratio {hi['t'] / lo['t']:.2f} (goal <= 4.8), search-only ratio "
              f"{hi['t_pairs'] / lo['t_pairs']:.2f}; comparisons per image ratio "
              f"{hi['comparisons_per_image'] / lo['comparisons_per_image']:.3f} (flat = 1); pairs found per image ratio "
              f"{(hi['found'] / hi['n']) / (lo['found'] / lo['n']):.2f}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
