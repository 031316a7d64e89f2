"""Steps 1-3 of the dedup (pipelines/dedup/__init__.py): ranks, exact groups and the near-duplicate candidate
pairs (multi-index hashing with its band choice, sorted-window LSH).
"""
from __future__ import annotations

import functools
import math
from functools import reduce

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from pipelines.dedup.common import HASH_BITS, LOSSY_FORMATS, CandidateMethod, DedupConfig, _band, _checkpoint


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
