"""Exact and near-duplicate removal in Spark, near-linear in N (issue "3/8 Deduplication").

The pieces are pure DataFrame -> DataFrame functions, composed by `deduplicate`:

1. `assign_ranks`    one slim row per image (no pixels) with `id` = its rank, 0 = best. Order: images
                     of earlier runs first (they are always kept), then larger original resolution
                     (orig_width * orig_height), then lossless before lossy (a PNG original beats its
                     larger JPEG re-encode), then larger file, then source_uri (ascending).
2. `exact_groups`    images with the same sha256 of the original bytes, or the same sha256 of the
                     normalised pixels, are ONE picture ("exact": same bytes or same normalised pixels);
                     the best-ranked member represents the group. Only representatives go on to 3-5.
3. candidates      two generators of the pairs within pHash distance D, chosen by `choose_method`:
   `candidate_pairs` multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012): the 64-bit pHash is cut
                     into m bands; a pair within Hamming distance D has some band within r = D // m
                     (generalised pigeonhole), so an equi-join of (band, value XOR mask) for all masks of
                     weight <= r against (band, value) finds every pair within D; the exact distance then
                     filters them. The result equals the all-pairs result (tests check it against
                     brute force). `choose_bands` picks m from N and D with a cost model; hot buckets
                     are salted so that one (band, value) key cannot stall a task. Its cost per image
                     grows with N (the buckets fill), so it serves small runs and small D.
   `lsh_pairs`       sorted-window bit-sampling LSH: G coarse groups (a key of a few sampled bits, one
                     Spark row per image and group), and inside each group T sub-tables that sort the
                     group by 32 other sampled bits and compare every hash with its W successors in
                     numpy. Work per image is G * T * W comparisons at any N (bounded buckets), and
                     it finds a measured share of the pairs (recall, bench/dedup.py, docs/dedup.md);
                     groups of at most `lsh_exact_rows` rows are compared all-pairs (exact).
4. `verify`          a second, pixel-level check of every candidate pair on the stored normalised
                     pixels (pipelines/similarity.py): the pair is a duplicate only when its similarity
                     is >= `min_similarity`. pHash alone merges distinct thin, low-entropy images (digits,
                     line art) that share hashes; the pixel test separates them (docs/dedup.md).
5. `greedy_mis`      the keep rule: the greedy maximal independent set by rank of the similarity graph,
                     computed in rounds of DataFrame joins (proof in its docstring).

Everything is Spark SQL expressions (`bit_count`, `^`, `shiftrightunsigned`), except the pixel
signatures of the images that are in candidate pairs and the pair scores, which are batch `mapInArrow`s.

`images` is read several times (slim projection, pixels of candidate nodes, the kept rows):
callers should persist it if it is expensive to recompute.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Iterator
from functools import reduce

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from pipelines import similarity
from schemas.images import DuplicateKind
from schemas.pixels import decode_pixels

HASH_BITS = 64  # imagehash pHash, hash_size 8

# Original formats whose files are lossy re-encodes (a PNG, TIFF, BMP or GIF holds its pixels exactly).
# WebP may be either; its header does not say which cheaply, so it ranks as lossy.
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP", "JPEG2000")


class CandidateMethod(str, enum.Enum):
    AUTO = "auto"    # EXACT while its cost model is at most exact_max_rows_per_image, else LSH
    EXACT = "exact"  # multi-index hashing: every pair within D; rows per image grow with N
    LSH = "lsh"      # sorted-window LSH: bounded work per image, recall measured (docs/dedup.md)


class VerifyMode(str, enum.Enum):
    NONE = "none"      # trust the 64-bit pHash alone (similarity is recorded as NaN)
    PIXELS = "pixels"  # also require pixel similarity >= min_similarity (pipelines/similarity.py)


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    # --near-dup-distance D: pHash (64-bit) Hamming distance at or below which two images are near
    # duplicates; 0 disables near-dup (exact only). Default from bench/dedup_quality.py, see docs/dedup.md.
    near_distance: int = similarity.DEFAULT_NEAR_DISTANCE
    # Multi-index hashing bands m; None = choose_bands(N, D) (cost model). The radius is always D // m.
    bands: int | None = None
    # A (band, value) bucket of more index rows than this is split into ceil(count / cap) salted
    # sub-buckets, each joined in its own task.
    hot_bucket_cap: int = 2000
    # Candidate generator (CandidateMethod). AUTO keeps the exact search where it is cheap (small runs,
    # small D) and switches to LSH above exact_max_rows_per_image join rows per image (mih_cost / N).
    candidates: CandidateMethod = CandidateMethod.AUTO
    exact_max_rows_per_image: float = 1000.0
    # LSH (lsh_pairs): coarse groups G (Spark rows per image), sub-tables T per group, window W (successors
    # compared per hash and sub-table). Work per image = G * T * W = 2,560 popcounts at any N. Recall on the
    # clustered bench hashes (bench/dedup.py, docs/dedup.md): 1.0 at 1M; 0.9966 of all pairs within 12 at 4M,
    # every pair within 9 bits found, 0.964 of the pairs at exactly 12 (more groups raise it).
    lsh_groups: int = 32
    lsh_subtables: int = 10
    lsh_window: int = 8
    # Rows per coarse group at most (on average): the group key gets ceil(log2(N / this)) bits, so one
    # group's numpy arrays stay ~17 bytes x 2^22 = 68 MiB (plus ~100 MiB of sort temporaries) per task at
    # any N. Key bits cost recall (a pair must agree on them for all T sub-tables of the group), so the
    # groups are as large as a task comfortably holds.
    lsh_max_group_rows: int = 1 << 22
    # A group of at most this many rows is compared all-pairs (n^2 / 2 popcounts: 2M at 2,048), so small
    # runs get every pair within D.
    lsh_exact_rows: int = 2048
    lsh_seed: int = 0
    verify: VerifyMode = VerifyMode.PIXELS
    # Min pixel similarity of a verified pair (pipelines/similarity.py, measured in docs/dedup.md).
    min_similarity: float = similarity.DEFAULT_MIN_SIMILARITY
    # Rounds of the distributed greedy MIS before falling back to the driver.
    max_rounds: int = 40
    # The fallback finishes on the driver only if at most this many undecided edges remain, else it fails.
    fallback_max_edges: int = 2_000_000
    # A similarity graph of at most this many verified edges is decided on the driver at once (the same
    # sequential greedy, ~100 bytes of Python per edge): each distributed round is a few Spark jobs, a fixed
    # cost of seconds that small and medium runs (most edges are few: duplicates are rare) need not pay.
    driver_max_edges: int = 100_000
    # A run of at most this many images (this run's plus earlier runs') is decided on the driver whole
    # (pipelines/dedup_local.py: one compact table of ~200 bytes a row, exact candidates, the same keep rule):
    # two Spark jobs instead of ~70 stages. 0 = always distributed.
    driver_max_rows: int = 1_000_000
    # Broadcast the (band, value) index when it has at most this many rows (N * m); else a shuffle join.
    broadcast_max_rows: int = 4_000_000
    # Shuffle partitions for the joins; None = the session's spark.sql.shuffle.partitions.
    partitions: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.near_distance < HASH_BITS // 2:
            raise ValueError(f"near_distance must be in 0..{HASH_BITS // 2 - 1} (bits of a 64-bit pHash), got {self.near_distance}")
        if self.bands is not None and not 1 <= self.bands <= HASH_BITS:
            raise ValueError(f"bands must be in 1..{HASH_BITS} or None (auto), got {self.bands}")
        if self.hot_bucket_cap < 1 or self.max_rounds < 1:
            raise ValueError(f"hot_bucket_cap and max_rounds must be >= 1, got {self.hot_bucket_cap}, {self.max_rounds}")
        if not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"min_similarity must be in -1.0..1.0, got {self.min_similarity}")
        if not isinstance(self.verify, VerifyMode):
            raise TypeError(f"verify must be a VerifyMode, got {self.verify!r}")
        if not isinstance(self.candidates, CandidateMethod):
            raise TypeError(f"candidates must be a CandidateMethod, got {self.candidates!r}")
        if min(self.lsh_groups, self.lsh_subtables, self.lsh_window, self.lsh_max_group_rows, self.lsh_exact_rows) < 1:
            raise ValueError(f"lsh_groups, lsh_subtables, lsh_window, lsh_max_group_rows and lsh_exact_rows must be >= 1, got "
                             f"{self.lsh_groups}, {self.lsh_subtables}, {self.lsh_window}, {self.lsh_max_group_rows}, {self.lsh_exact_rows}")


# ----------------------------------------------------------------------------- band choice
def band_widths(bands: int) -> list[int]:
    """64 bits cut into `bands` contiguous bands, widths differing by at most 1 (wider bands first)."""
    base, extra = divmod(HASH_BITS, bands)
    return [base + 1 if i < extra else base for i in range(bands)]


def ball_size(width: int, radius: int) -> int:
    """Number of `width`-bit values within Hamming distance `radius` of one value: sum_{k<=r} C(w, k)."""
    return sum(math.comb(width, k) for k in range(min(radius, width) + 1))


def mih_cost(n_query: int, n_index: int, distance: int, bands: int) -> float:
    """Rows the banded join produces for uniform hashes, our cost unit.

    Per band of width w with radius r = D // m: each query row enumerates ball_size(w, r) keys
    (the exploded rows), and each key meets n_index / 2^w index rows on average (the candidate
    pairs). Total = sum over bands of n_query * ball(w, r) * (1 + n_index / 2^w).
    """
    radius = distance // bands
    return float(sum(n_query * ball_size(w, radius) * (1.0 + n_index / 2.0**w) for w in band_widths(bands)))


def choose_bands(n_query: int, n_index: int, distance: int) -> tuple[int, int]:
    """(m, r) minimising `mih_cost`, m in 1..D+1 (more than D+1 bands only shrinks the buckets' keys
    without lowering r below 0). Ties go to fewer bands."""
    best = min(range(1, distance + 2), key=lambda m: (mih_cost(n_query, n_index, distance, m), m))
    return best, distance // best


def masks_within(width: int, radius: int) -> list[int]:
    """All `width`-bit XOR masks of weight <= radius (0 first)."""
    from itertools import combinations

    out = [0]
    for k in range(1, min(radius, width) + 1):
        out.extend(sum(1 << b for b in bits) for bits in combinations(range(width), k))
    return out


# ----------------------------------------------------------------------------- Spark helpers
def hamming(a: Column, b: Column) -> Column:
    """Hamming distance of two int64 columns, as int."""
    return F.bit_count(a.bitwiseXOR(b)).cast("int")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _band(col: Column, offset: int, width: int) -> Column:
    return F.shiftrightunsigned(col, offset).bitwiseAND(F.lit(_signed64((1 << width) - 1)).cast("long"))


def _checkpoint(df: DataFrame) -> DataFrame:
    """Cut lineage (rounds of joins) and materialise once."""
    return df.localCheckpoint(eager=True)


def _partitions(spark: SparkSession, config: DedupConfig) -> int:
    return config.partitions or int(spark.conf.get("spark.sql.shuffle.partitions"))


# ----------------------------------------------------------------------------- 1. ranks
RANK_ORDER = ("earlier runs first, then larger orig_width*orig_height, then lossless before lossy (orig_format), "
              "then larger file_size, then source_uri ascending")


def assign_ranks(images: DataFrame, previous: DataFrame | None) -> DataFrame:
    """-> (id, source_uri, sha256, pixels_sha256, phash, is_prev), id = rank (0 = best), see RANK_ORDER.

    A distributed sort (range partitioning) followed by monotonically_increasing_id, which increases
    with the sort order across partitions: the ids are not dense but are ordered like the ranks.
    """
    cols = ["source_uri", "sha256", "pixels_sha256", "phash", "orig_width", "orig_height", "orig_format", "file_size"]
    missing = [c for c in cols if c not in images.columns]
    if missing:
        raise ValueError(f"images lacks columns {missing}; expected at least {cols}, found {images.columns}")
    slim = images.select(*cols, F.lit(False).alias("is_prev"))
    if previous is not None:
        missing = [c for c in cols if c not in previous.columns]
        if missing:
            raise ValueError(f"previous lacks columns {missing}; expected at least {cols}, found {previous.columns}")
        slim = slim.unionByName(previous.select(*cols, F.lit(True).alias("is_prev")))
    area = F.col("orig_width").cast("long") * F.col("orig_height").cast("long")
    lossless = ~F.upper(F.col("orig_format")).isin(*LOSSY_FORMATS)
    ranked = (
        slim.orderBy(F.col("is_prev").desc(), area.desc(), lossless.desc(), F.col("file_size").desc(),
                     F.col("source_uri").asc(), F.col("sha256").asc())
        .withColumn("id", F.monotonically_increasing_id())
        .select("id", "source_uri", "sha256", "pixels_sha256", "phash", "is_prev")
    )
    return _checkpoint(ranked)


# ----------------------------------------------------------------------------- 2. exact groups
def exact_groups(ranked: DataFrame) -> DataFrame:
    """ranked -> ranked + `grp`: the id of the best-ranked image with the same bytes or the same pixels.

    Two levels: the best of each sha256 group, then the best of those per pixels_sha256. Same bytes
    decode to the same pixels, so this is the transitive closure of both equalities. Images of
    earlier runs rank first, so a group holding one is represented by it.
    """
    by_bytes = ranked.withColumn("sha_rep", F.min("id").over(Window.partitionBy("sha256")))
    reps = (
        by_bytes.filter(F.col("id") == F.col("sha_rep"))
        .select(F.col("id").alias("sha_rep"), F.min("id").over(Window.partitionBy("pixels_sha256")).alias("grp"))
    )
    return by_bytes.join(reps, "sha_rep").drop("sha_rep")


# ----------------------------------------------------------------------------- 3. candidates
def _query_flag(hashes: DataFrame) -> Column:
    return F.col("query") if "query" in hashes.columns else F.lit(True)


def band_join(hashes: DataFrame, distance: int, bands: int, radius: int, hot_bucket_cap: int = 2000, broadcast_max_rows: int = 4_000_000) -> DataFrame:
    """The raw multi-index join: one row per (query, index, band) whose band values are within `radius`.

    hashes: (id long, phash long[, query bool]). Query rows (query=True, default all) enumerate
    value ^ mask for every mask of weight <= radius; all rows are indexed by their exact value.
    -> (band, q_id, q_hash, i_id, i_hash, i_query). Hot buckets (more than hot_bucket_cap index rows)
    are salted: their index rows are spread over ceil(count / cap) salts and the query rows that hit
    them are replicated once per salt, so no task joins more than cap index rows per key.
    """
    if bands < 1 or radius < distance // bands:
        # Fewer than D // m bits of slack per band would miss pairs (pigeonhole): refuse, not approximate.
        raise ValueError(f"need bands >= 1 and radius >= distance // bands = {distance // max(bands, 1)}, got bands={bands} radius={radius}")
    widths = band_widths(bands)
    offsets = [sum(widths[i + 1:]) for i in range(bands)]  # band 0 = the most significant bits
    base = hashes.select("id", "phash", _query_flag(hashes).alias("query"))
    index = reduce(
        DataFrame.unionByName,
        [base.select(F.lit(b).alias("band"), _band(F.col("phash"), offsets[b], widths[b]).alias("value"),
                     F.col("id").alias("i_id"), F.col("phash").alias("i_hash"), F.col("query").alias("i_query"))
         for b in range(bands)],
    )
    # Hot (band, value) keys and their salt counts: a small table, broadcast to both sides.
    hot = (
        index.groupBy("band", "value").count().filter(F.col("count") > hot_bucket_cap)
        .select("band", "value", F.ceil(F.col("count") / hot_bucket_cap).cast("int").alias("salts"))
    )
    hot = F.broadcast(_checkpoint(hot))
    index = (
        index.join(hot, ["band", "value"], "left")
        .withColumn("salt", F.when(F.col("salts").isNull(), F.lit(0)).otherwise(F.pmod(F.xxhash64("i_id"), F.col("salts")).cast("int")))
        .drop("salts")
    )
    queries = base.filter(F.col("query"))
    enum_rows = reduce(
        DataFrame.unionByName,
        [queries.select(F.lit(b).alias("band"),
                        F.explode(F.array(*[F.lit(m).cast("long") for m in masks_within(widths[b], radius)])).alias("mask"),
                        _band(F.col("phash"), offsets[b], widths[b]).alias("own"),
                        F.col("id").alias("q_id"), F.col("phash").alias("q_hash"))
         .select("band", F.col("own").bitwiseXOR(F.col("mask")).alias("value"), "q_id", "q_hash")
         for b in range(bands)],
    )
    enum_rows = (
        enum_rows.join(hot, ["band", "value"], "left")
        .withColumn("salt", F.explode(F.sequence(F.lit(0), F.coalesce(F.col("salts"), F.lit(1)) - 1)))
        .drop("salts")
    )
    n_index_rows = bands * base.count() if broadcast_max_rows > 0 else None
    right = F.broadcast(index) if n_index_rows is not None and n_index_rows <= broadcast_max_rows else index
    return enum_rows.join(right, ["band", "value", "salt"]).select("band", "q_id", "q_hash", "i_id", "i_hash", "i_query")


def candidate_pairs(hashes: DataFrame, distance: int, bands: int, radius: int, hot_bucket_cap: int = 2000,
                    broadcast_max_rows: int = 4_000_000) -> DataFrame:
    """Every pair within Hamming `distance`, exactly once: (src, dst, distance) with src < dst.

    hashes: (id long, phash long[, query bool]); pairs with no query row are not searched (they are
    pairs among earlier runs' images). A pair is met in every band where it is within radius (and,
    for two query rows, from both sides): it is kept only from the first such band, and from the
    query side with the smaller id when both are query rows, so no distinct() shuffle is needed.
    """
    widths = band_widths(bands)
    offsets = [sum(widths[i + 1:]) for i in range(bands)]
    raw = band_join(hashes, distance, bands, radius, hot_bucket_cap, broadcast_max_rows)
    x = F.col("q_hash").bitwiseXOR(F.col("i_hash"))
    earlier_band_close = [(F.col("band") > b) & (F.bit_count(_band(x, offsets[b], widths[b])) <= radius) for b in range(bands)]
    first_band = ~reduce(lambda a, b: a | b, earlier_band_close, F.lit(False))
    one_side = (~F.col("i_query")) | (F.col("q_id") < F.col("i_id"))
    return (
        raw.filter(one_side & first_band)
        .withColumn("distance", F.bit_count(x).cast("int"))
        .filter(F.col("distance") <= distance)
        .select(F.least("q_id", "i_id").alias("src"), F.greatest("q_id", "i_id").alias("dst"), "distance")
    )


# ----------------------------------------------------------------------------- 3b. LSH candidates
_POP16 = np.array([i.bit_count() for i in range(1 << 16)], dtype=np.uint8)  # popcount of a 16-bit word
LSH_KEY_BITS = 32  # sampled bits a sub-table sorts by (two 16-bit radix passes)
LSH_PAIRS_SCHEMA = "src long, dst long, distance int"


def group_key_bits(n_rows: int, max_group_rows: int) -> int:
    """Bits of the coarse group key: the fewest that make the average group <= max_group_rows rows."""
    return max(0, math.ceil(math.log2(max(n_rows, 1) / max_group_rows)))


def lsh_group_positions(seed: int, group: int, key_bits: int) -> list[int]:
    """Hash bit positions (0 = least significant) of coarse group `group`'s key, deterministic in (seed, group)."""
    return [int(b) for b in np.random.default_rng([seed, group]).permutation(HASH_BITS)[:key_bits]]


def lsh_subtable_positions(seed: int, group: int, table: int, exclude: list[int]) -> list[int]:
    """The LSH_KEY_BITS positions sub-table `table` of `group` sorts by (most significant first); never the
    group's own key bits, which are equal inside a group."""
    rest = [int(b) for b in np.random.default_rng([seed, group, 1 + table]).permutation(HASH_BITS) if b not in exclude]
    return rest[:LSH_KEY_BITS]


def _key_luts(positions: list[int]) -> np.ndarray:
    """(8, 256) uint32: lut[i][v] = the key bits that byte i (little-endian) of the hash contributes when it is v."""
    lut = np.zeros((8, 256), dtype=np.uint32)
    v = np.arange(256, dtype=np.uint32)
    for j, p in enumerate(positions):
        lut[p // 8] |= ((v >> np.uint32(p % 8)) & np.uint32(1)) << np.uint32(len(positions) - 1 - j)
    return lut


def _popcount(x: np.ndarray) -> np.ndarray:
    """Bits set in each uint64 (numpy 1.26 has no bitwise_count): four 16-bit table look-ups."""
    p = _POP16[x.view(np.uint16)].reshape(-1, 4)
    return p[:, 0] + p[:, 1] + p[:, 2] + p[:, 3]


def _sorted_by_key(h: np.ndarray, positions: list[int]) -> np.ndarray:
    """Order of the uint64 hashes `h` by the 32 sampled bits: two stable radix passes over 16-bit halves
    (numpy sorts uint16 by radix, ~20 ns per row, vs ~120 for a 32-bit argsort)."""
    lut = _key_luts(positions)
    b = h.view(np.uint8).reshape(-1, 8)
    key = lut[0][b[:, 0]]
    for i in range(1, 8):
        key |= lut[i][b[:, i]]
    order = np.argsort((key & np.uint32(0xFFFF)).astype(np.uint16), kind="stable")
    return order[np.argsort((key[order] >> np.uint32(16)).astype(np.uint16), kind="stable")]


def lsh_group_pairs(ids: np.ndarray, hashes: np.ndarray, query: np.ndarray, group: int, *, distance: int, key_bits: int,
                    subtables: int, window: int, exact_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs within `distance` that one coarse group's sub-tables find -> (src, dst, distance), src < dst, unique.

    ids int64 (n,), hashes int64 (n,), query bool (n,). A group of at most exact_rows rows is compared
    all-pairs (exact). Otherwise each of `subtables` sub-tables sorts the group by LSH_KEY_BITS sampled bits
    and compares every hash with its `window` successors: hashes that agree on a long prefix of the sampled
    bits (likely when few bits differ) sit close in that order. Only pairs with a query row are returned.
    """
    h = hashes.astype(np.int64).view(np.uint64)
    n = len(h)
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    dist: list[np.ndarray] = []
    if n <= exact_rows:
        a, b = np.triu_indices(n, 1)
        pc = _popcount(h[a] ^ h[b])
        keep = pc <= distance
        src.append(a[keep])
        dst.append(b[keep])
        dist.append(pc[keep])
    else:
        exclude = lsh_group_positions(seed, group, key_bits)
        for t in range(subtables):
            order = _sorted_by_key(h, lsh_subtable_positions(seed, group, t, exclude))
            hs = h[order]
            for j in range(1, min(window, n - 1) + 1):
                x = hs[:-j] ^ hs[j:]
                w = x.view(np.uint16).reshape(-1, 4)
                low = _POP16[w[:, 0]] + _POP16[w[:, 1]]  # half the bits first: > D for ~90% of far pairs
                cand = np.flatnonzero(low <= distance)
                pc = low[cand] + _POP16[w[cand, 2]] + _POP16[w[cand, 3]]
                hit = cand[pc <= distance]
                src.append(order[hit])
                dst.append(order[hit + j])
                dist.append(pc[pc <= distance])
    a = np.concatenate(src) if src else np.zeros(0, np.int64)
    b = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    d = np.concatenate(dist).astype(np.int32) if dist else np.zeros(0, np.int32)
    keep = query[a] | query[b]  # pairs among earlier runs' images are never searched
    a, b, d = a[keep], b[keep], d[keep]
    lo, hi = np.minimum(ids[a], ids[b]), np.maximum(ids[a], ids[b])
    if len(lo):
        first = np.unique(np.stack([lo, hi], axis=1), axis=0, return_index=True)[1]  # met in several sub-tables
        lo, hi, d = lo[first], hi[first], d[first]
    return lo.astype(np.int64), hi.astype(np.int64), d


def _lsh_group_frame(pdf, *, distance: int, key_bits: int, subtables: int, window: int, exact_rows: int, seed: int):
    import pandas as pd

    if pdf.empty:
        return pd.DataFrame({"src": np.zeros(0, np.int64), "dst": np.zeros(0, np.int64), "distance": np.zeros(0, np.int32)})
    lo, hi, d = lsh_group_pairs(pdf["id"].to_numpy(np.int64), pdf["phash"].to_numpy(np.int64), pdf["query"].to_numpy(bool),
                                int(pdf["g"].iloc[0]), distance=distance, key_bits=key_bits, subtables=subtables,
                                window=window, exact_rows=exact_rows, seed=seed)
    return pd.DataFrame({"src": lo, "dst": hi, "distance": d})


def lsh_groups(hashes: DataFrame, groups: int, key_bits: int, seed: int) -> DataFrame:
    """hashes (id, phash[, query]) -> (g, key, id, phash, query): one row per image and coarse group, key =
    the group's `key_bits` sampled bits. With key_bits = 0 every group holds every image."""
    base = hashes.select("id", "phash", _query_flag(hashes).alias("query"))
    keys = []
    for g in range(groups):
        key = F.lit(0).cast("long")
        for i, p in enumerate(lsh_group_positions(seed, g, key_bits)):
            key = key.bitwiseOR(F.shiftleft(F.shiftrightunsigned(F.col("phash"), p).bitwiseAND(F.lit(1).cast("long")), i))
        keys.append(F.struct(F.lit(g).alias("g"), key.alias("key")))
    return base.select(F.explode(F.array(*keys)).alias("k"), "id", "phash", "query").select("k.g", "k.key", "id", "phash", "query")


def lsh_pairs(hashes: DataFrame, distance: int, *, groups: int = 32, subtables: int = 10, window: int = 8,
              max_group_rows: int = 1 << 22, exact_rows: int = 2048, seed: int = 0) -> DataFrame:
    """Pairs within Hamming `distance` found by sorted-window LSH: (src, dst, distance), src < dst, each once.

    hashes: (id long, phash long[, query bool]); only pairs with a query row are returned. Every returned
    pair is within `distance` (exact popcount); a pair within `distance` is missed with a probability that
    grows with its distance and with the group size (measured: docs/dedup.md). Runs with at most
    exact_rows hashes are searched all-pairs in one group, so their result is exact.

    Cost: `groups` Spark rows per image (g, key, id, phash, query: a 48-byte UnsafeRow) through one shuffle; per group,
    `subtables` x (a 32-bit radix sort + `window` popcounts) per row in numpy. Work per image stays
    groups * subtables * window as N grows; the coarse key grows by a bit per doubling past max_group_rows.
    """
    n_rows = hashes.count()
    if n_rows <= exact_rows:
        groups, key_bits = 1, 0  # one all-pairs group: exact
    else:
        key_bits = group_key_bits(n_rows, max_group_rows)
    rows = lsh_groups(hashes, groups, key_bits, seed)
    fn = functools.partial(_lsh_group_frame, distance=distance, key_bits=key_bits, subtables=subtables, window=window,
                           exact_rows=exact_rows, seed=seed)
    found = rows.groupBy("g", "key").applyInPandas(fn, LSH_PAIRS_SCHEMA)
    # A pair met in several groups comes out once (the distance is a function of the pair).
    return found.dropDuplicates(["src", "dst"])


def lsh_comparisons(group_sizes: list[int], subtables: int, window: int, exact_rows: int) -> int:
    """Popcounts lsh_pairs does for groups of these sizes (all-pairs groups: n(n-1)/2; window groups:
    subtables x sum_{j<=window} (n - j)): the candidate pairs it examines."""
    total = 0
    for n in group_sizes:
        if n <= exact_rows:
            total += n * (n - 1) // 2
        else:
            total += subtables * sum(n - j for j in range(1, min(window, n - 1) + 1))
    return total


def choose_method(n_query: int, n_index: int, config: DedupConfig) -> CandidateMethod:
    """AUTO -> EXACT while the multi-index join costs at most config.exact_max_rows_per_image rows per query
    image (mih_cost at the chosen bands), else LSH."""
    if config.candidates is not CandidateMethod.AUTO:
        return config.candidates
    m = config.bands or choose_bands(max(n_query, 1), max(n_index, 1), config.near_distance)[0]
    per_image = mih_cost(max(n_query, 1), max(n_index, 1), config.near_distance, m) / max(n_query, 1)
    return CandidateMethod.EXACT if per_image <= config.exact_max_rows_per_image else CandidateMethod.LSH


# ----------------------------------------------------------------------------- 4. verification
SIGNATURE_SCHEMA = "id long, signature binary"
SCORED_SCHEMA = "src long, dst long, distance int, similarity float"


def _signature_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """(id, width, height, channels, pixel_encoding, pixels) -> (id, signature): the stored pixels, not the file."""
    for batch in batches:
        c = batch.to_pydict()
        images = [decode_pixels(p, h, w, ch, e) for p, w, h, ch, e in zip(c["pixels"], c["width"], c["height"], c["channels"], c["pixel_encoding"])]
        yield pa.RecordBatch.from_pydict({"id": c["id"], "signature": similarity.signatures(images)},
                                         schema=pa.schema([("id", pa.int64()), ("signature", pa.binary())]))


def _score_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """(src, dst, distance, sig_a, sig_b) -> (src, dst, distance, similarity), vectorised over the pairs of a batch."""
    for batch in batches:
        c = batch.to_pydict()
        scores = similarity.similarities(c["sig_a"], c["sig_b"]) if c["src"] else np.zeros(0, np.float32)
        yield pa.RecordBatch.from_pydict(
            {"src": c["src"], "dst": c["dst"], "distance": c["distance"], "similarity": np.asarray(scores, np.float32)},
            schema=pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("distance", pa.int32()), ("similarity", pa.float32())]),
        )


def verify(edges: DataFrame, pixels: DataFrame, min_similarity: float) -> DataFrame:
    """Keep the candidate edges whose stored normalised images are similar enough.

    edges: (src, dst, distance); pixels: (id, width, height, channels, pixel_encoding, pixels) of at least
    the edges' ends. Each end's signature is computed once (a batch mapInArrow over the stored pixels, no
    decode of the original file), joined to both sides of its edges, and the pairs scored in batches.
    -> (src, dst, distance, similarity) with similarity >= min_similarity.
    """
    ends = edges.select(F.col("src").alias("id")).unionByName(edges.select(F.col("dst").alias("id"))).distinct()
    signed = (
        pixels.join(ends, "id", "left_semi")
        .select("id", "width", "height", "channels", "pixel_encoding", "pixels")
        .mapInArrow(_signature_batches, SIGNATURE_SCHEMA)
    )
    signed = _checkpoint(signed)
    a = signed.select(F.col("id").alias("src"), F.col("signature").alias("sig_a"))
    b = signed.select(F.col("id").alias("dst"), F.col("signature").alias("sig_b"))
    scored = (
        edges.join(a, "src").join(b, "dst")
        .select("src", "dst", F.col("distance").cast("int").alias("distance"), "sig_a", "sig_b")
        .mapInArrow(_score_batches, SCORED_SCHEMA)
    )
    return scored.filter(F.col("similarity") >= F.lit(min_similarity))


# ----------------------------------------------------------------------------- 5. keep rule
UNDECIDED, KEPT, DROPPED = 0, 1, 2


def greedy_mis(nodes_ranked: DataFrame, edges: DataFrame, max_rounds: int = 40, fallback_max_edges: int = 2_000_000,
               driver_max_edges: int = 0) -> DataFrame:
    """The greedy maximal independent set by rank, in rounds of joins.

    nodes_ranked: (id) with id = rank, smaller is better; edges: (src, dst, distance, similarity), undirected,
    no self loops. -> (id, kept bool, kept_by long|null, distance int|null, similarity float|null): kept_by is
    the best-ranked kept neighbour of a dropped node, `distance` and `similarity` the signals of that edge.

    Round: every undecided node whose id is smaller than the ids of all its undecided neighbours is
    KEPT; every undecided neighbour of a node kept this round is DROPPED. Nodes with no edge are kept
    at once (most images).

    Proof that this equals the sequential greedy (visit nodes by rank; keep a node unless a kept
    node is adjacent), call its result G. Invariant: every decided node is decided as in G.
    - A node v kept in a round has no undecided neighbour ranked before it. Every neighbour u ranked
      before v is decided; it is not KEPT, else v would already have been dropped (neighbours of kept
      nodes are dropped in the same round). So all of v's better-ranked neighbours are dropped, which
      by the invariant means not in G; the sequential greedy reaches v with no kept neighbour and
      keeps it: v in G.
    - A node dropped in a round is adjacent to a node kept in that round, in G by the case above; G
      is independent, so the dropped node is not in G.
    Progress: the best-ranked undecided node beats all its undecided neighbours, so every round
    decides at least one node and the loop ends; a chain whose ranks increase along it needs one round
    per two nodes, random ranks need O(log n) rounds. After max_rounds the rest is finished on the
    driver by the sequential greedy if at most fallback_max_edges edges remain, else it fails. A graph of
    at most driver_max_edges edges skips the rounds and is finished on the driver at once.
    """
    spark = nodes_ranked.sparkSession
    if "similarity" not in edges.columns:  # unverified edges carry no pixel signal
        edges = edges.withColumn("similarity", F.lit(float("nan")).cast("float"))
    both = edges.select("src", "dst").unionByName(edges.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
    live = _checkpoint(both)  # edges with both ends undecided, both directions
    undecided = _checkpoint(live.select(F.col("src").alias("id")).distinct())
    decided: list[DataFrame] = []  # (id, status) per round
    if driver_max_edges and live.count() <= 2 * driver_max_edges:  # `live` holds both directions
        decided.append(_finish_on_driver(spark, undecided, live, 2 * driver_max_edges, 0))
    else:
        rounds = 0
        while not undecided.isEmpty():
            if rounds >= max_rounds:
                decided.append(_finish_on_driver(spark, undecided, live, fallback_max_edges, max_rounds))
                break
            rounds += 1
            best_nb = live.groupBy("src").agg(F.min("dst").alias("best_nb"))
            kept = (
                undecided.join(best_nb, undecided["id"] == best_nb["src"], "left")
                .filter(F.col("best_nb").isNull() | (F.col("id") < F.col("best_nb")))
                .select("id")
            )
            dropped = live.join(kept.select(F.col("id").alias("src")), "src", "left_semi").select(F.col("dst").alias("id")).distinct()
            now = _checkpoint(kept.select("id", F.lit(KEPT).alias("status")).unionByName(dropped.select("id", F.lit(DROPPED).alias("status"))))
            decided.append(now)
            undecided = _checkpoint(undecided.join(now, "id", "left_anti"))
            live = _checkpoint(
                live.join(now.select(F.col("id").alias("src")), "src", "left_anti")
                .join(now.select(F.col("id").alias("dst")), "dst", "left_anti")
            )
    status = reduce(DataFrame.unionByName, decided) if decided else spark.createDataFrame([], "id long, status int")
    status = _checkpoint(status)
    all_status = (
        nodes_ranked.select("id").join(status, "id", "left")
        .select("id", F.coalesce(F.col("status"), F.lit(KEPT)).alias("status"))
    )
    kept_ids = all_status.filter(F.col("status") == KEPT).select(F.col("id").alias("dst"))
    # The best-ranked kept neighbour of each dropped node (the sequential greedy's dropper).
    w = Window.partitionBy("src").orderBy("dst")
    droppers = (
        edges.select("src", "dst", "distance", "similarity")
        .unionByName(edges.select(F.col("dst").alias("src"), F.col("src").alias("dst"), "distance", "similarity"))
        .join(kept_ids, "dst", "left_semi")
        .withColumn("k", F.row_number().over(w)).filter(F.col("k") == 1)
        .select(F.col("src").alias("id"), F.col("dst").alias("kept_by"), "distance", "similarity")
    )
    out = all_status.join(droppers, "id", "left")
    out = out.select(
        "id",
        (F.col("status") == KEPT).alias("kept"),
        F.when(F.col("status") == DROPPED, F.col("kept_by")).alias("kept_by"),
        F.when(F.col("status") == DROPPED, F.col("distance")).cast("int").alias("distance"),
        F.when(F.col("status") == DROPPED, F.col("similarity")).cast("float").alias("similarity"),
    )
    return _checkpoint(out)


def _finish_on_driver(spark: SparkSession, undecided: DataFrame, live: DataFrame, fallback_max_edges: int, max_rounds: int) -> DataFrame:
    n_edges = live.count()
    if n_edges > fallback_max_edges:
        raise RuntimeError(
            f"greedy MIS did not converge in {max_rounds} rounds: {n_edges} undecided edges remain, more than "
            f"fallback_max_edges={fallback_max_edges} that may be finished on the driver; raise max_rounds"
        )
    ids = sorted(r.id for r in undecided.collect())
    adj: dict[int, list[int]] = {i: [] for i in ids}
    for r in live.collect():
        adj[r.src].append(r.dst)
    status: dict[int, int] = {}
    for i in ids:  # sequential greedy by rank over the rest (decided nodes have no live edges)
        if i in status:
            continue
        status[i] = KEPT
        for j in adj[i]:
            status.setdefault(j, DROPPED)
    return spark.createDataFrame(sorted(status.items()), "id long, status int")


# ----------------------------------------------------------------------------- the stage
DUPLICATES_COLUMNS = ["source_uri", "kept_source_uri", "kind", "distance", "similarity"]


def deduplicate(spark: SparkSession, images: DataFrame, previous: DataFrame | None, config: DedupConfig) -> tuple[DataFrame, DataFrame]:
    """Drop exact and near duplicates from `images`.

    images: this run's valid images, with at least the IMAGES_ARROW columns source_uri, sha256,
      pixels_sha256, phash, orig_width, orig_height, orig_format, file_size, width, height, channels,
      pixel_encoding, pixels; source_uri must be unique.
    previous: images kept by earlier runs (same columns) or None. They are never dropped; they only
      absorb new duplicates (they rank before every new image).
    -> (kept, duplicates): kept = the rows of `images` to write (same columns); duplicates =
      (source_uri, kept_source_uri, kind, distance, similarity), one row per dropped row of `images`, where
      kept_source_uri is always a kept image (of this run or an earlier one). Every row of `images`
      is in exactly one of the two.

    Keep rule (docs/dedup.md): exact groups (same bytes or same normalised pixels) are one node,
    represented by their best-ranked member; over these nodes, the similarity graph has an edge
    where the 64-bit pHash distance is <= D and (with verification) the pixel similarity of the stored
    normalised images is >= min_similarity. The kept nodes are the greedy maximal independent set by rank: no two kept
    images are adjacent, every dropped representative is adjacent to a kept one. Members of a group
    whose representative is kept are `exact` duplicates of it (distance 0); members of a group whose
    representative is dropped point at the same kept image as their representative, kind `near`,
    with their own pHash distance to it.
    """
    if config.driver_max_rows:
        n = images.count() + (previous.count() if previous is not None else 0)
        if n <= config.driver_max_rows:
            from pipelines import dedup_local  # it imports this module's pieces

            dups = dedup_local.duplicates_frame(spark, dedup_local.deduplicate_on_driver(spark, images, previous, config))
            return images.join(dups.select("source_uri"), "source_uri", "left_anti"), dups
    parts = _partitions(spark, config)
    prev_conf = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", str(parts))
    try:
        return _deduplicate(spark, images, previous, config)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", prev_conf)


def _deduplicate(spark: SparkSession, images: DataFrame, previous: DataFrame | None, config: DedupConfig) -> tuple[DataFrame, DataFrame]:
    ranked = assign_ranks(images, previous)
    clash = ranked.groupBy("source_uri").count().filter(F.col("count") > 1).limit(3).collect()
    if clash:
        raise ValueError(f"source_uri must be unique over images and previous; found repeated: {[r.source_uri for r in clash]}")
    grouped = _checkpoint(exact_groups(ranked))
    # Near-dup nodes: group representatives plus every earlier-run image (always kept).
    nodes = grouped.filter((F.col("id") == F.col("grp")) | F.col("is_prev")).select("id", "phash", (~F.col("is_prev")).alias("query"))
    edges: DataFrame | None = None  # the similarity graph: (src, dst, distance, similarity)
    if config.near_distance > 0:
        n_query = nodes.filter(F.col("query")).count()
        n_index = nodes.count()
        if choose_method(n_query, n_index, config) is CandidateMethod.EXACT:
            bands = config.bands or choose_bands(max(n_query, 1), max(n_index, 1), config.near_distance)[0]
            edges = candidate_pairs(nodes, config.near_distance, bands, config.near_distance // bands,
                                    config.hot_bucket_cap, config.broadcast_max_rows)
        else:
            edges = lsh_pairs(nodes, config.near_distance, groups=config.lsh_groups, subtables=config.lsh_subtables,
                              window=config.lsh_window, max_group_rows=config.lsh_max_group_rows,
                              exact_rows=config.lsh_exact_rows, seed=config.lsh_seed)
        edges = _checkpoint(edges)
        if config.verify is VerifyMode.PIXELS and not edges.isEmpty():
            # Only the images in a candidate pair are decoded: filter the pixel rows by a (usually small,
            # broadcast) table of their URIs instead of shuffling every image's pixels into a join.
            ends = edges.select(F.col("src").alias("id")).unionByName(edges.select(F.col("dst").alias("id"))).distinct()
            ends = _checkpoint(grouped.select("id", "source_uri").join(ends, "id", "left_semi"))
            ends_b = F.broadcast(ends) if ends.count() <= config.broadcast_max_rows else ends
            cols = ["source_uri", "width", "height", "channels", "pixel_encoding", "pixels"]
            px = images.select(*cols)
            if previous is not None:
                px = px.unionByName(previous.select(*cols))
            px = px.join(ends_b, "source_uri")
            edges = _checkpoint(verify(edges, px, config.min_similarity))
        else:
            edges = edges.withColumn("similarity", F.lit(float("nan")).cast("float"))
    if edges is not None and not edges.isEmpty():
        decisions = greedy_mis(nodes.select("id"), edges, config.max_rounds, config.fallback_max_edges, config.driver_max_edges)
    else:  # no near pair (most small runs): every node is kept, no graph to decide
        decisions = nodes.select("id", F.lit(True).alias("kept"), F.lit(None).cast("long").alias("kept_by"),
                                 F.lit(None).cast("int").alias("distance"), F.lit(None).cast("float").alias("similarity"))

    # Where each new image ends up: its group's representative's fate.
    rep = decisions.select(F.col("id").alias("grp"), F.col("kept").alias("grp_kept"), F.col("kept_by").alias("grp_kept_by"),
                           F.col("similarity").alias("grp_similarity"))
    target = grouped.filter(~F.col("is_prev")).join(rep, "grp", "left")
    # Every group holding a new image has a node (its representative), hence a decision.
    is_rep = F.col("id") == F.col("grp")
    fate = target.select(
        "id", "source_uri", "phash",
        F.when(is_rep & F.col("grp_kept"), F.lit(None).cast("long"))
         .when(is_rep, F.col("grp_kept_by"))
         .when(F.col("grp_kept"), F.col("grp"))
         .otherwise(F.col("grp_kept_by")).alias("kept_by"),
        F.when(is_rep, F.lit(DuplicateKind.NEAR.value))
         .when(F.col("grp_kept"), F.lit(DuplicateKind.EXACT.value))
         .otherwise(F.lit(DuplicateKind.NEAR.value)).alias("kind"),
        # An exact duplicate has its kept image's pixels (1.0); a member of a dropped group has its
        # representative's pixels, hence the representative's similarity to the kept image.
        F.when(F.col("grp_kept"), F.lit(1.0)).otherwise(F.col("grp_similarity")).cast("float").alias("similarity"),
    )
    fate = _checkpoint(fate)
    keepers = grouped.select(F.col("id").alias("kept_by"), F.col("source_uri").alias("kept_source_uri"), F.col("phash").alias("kept_phash"))
    dups = (
        fate.filter(F.col("kept_by").isNotNull())
        .join(keepers, "kept_by")
        .select(
            *DUPLICATES_COLUMNS[:3],
            F.when(F.col("kind") == DuplicateKind.EXACT.value, F.lit(0)).otherwise(hamming(F.col("phash"), F.col("kept_phash"))).cast("int").alias("distance"),
            "similarity",
        )
    )
    dups = _checkpoint(dups)
    kept_uris = fate.filter(F.col("kept_by").isNull()).select("source_uri")
    kept = images.join(kept_uris, "source_uri", "left_semi").select(*images.columns)
    return kept, dups
