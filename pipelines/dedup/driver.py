"""The whole dedup decided on the driver, for runs whose compact table fits there (issue 10/14).

The distributed path (`pipelines/dedup/__init__.py`) spreads dedup over ~70 Spark stages (ranks, exact groups, candidate joins, verification,
rounds of the greedy MIS): right for 10^8 images, a fixed cost of 10-25 s for 10^3-10^5 of them. Here the same
decision is made from one compact table collected once, (source_uri, sha256, pixels_sha256, phash, original size,
format, file size) ~ 200 bytes a row, with numpy:

  ranks          the same order as dedup.assign_ranks (RANK_ORDER), dense ids 0..n-1
  exact groups   the same two-level rule as dedup.exact_groups (same bytes, then same pixels)
  candidates     every pair of nodes within pHash distance D, exactly: D + 1 bands of the 64 bits, a pair
                 within D agrees on at least one band (pigeonhole), so equal-key runs of each band hold every
                 such pair; the exact distance then filters them
  keep rule      the sequential greedy by rank, which dedup.greedy_mis proves its rounds equal, verifying each
                 pair only when the keep rule needs it (pixels of only the candidate pairs' ends, one Spark job)

Spark jobs: one to collect the compact table, one for the candidates' pixels (only when there are candidates).
The result equals dedup's distributed path where that path is exact (tests/pipelines/test_dedup_local.py checks
it on the same inputs), and is a superset of the LSH path's pairs where that one samples.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import similarity
from pipelines.dedup.candidates import _popcount, band_widths, choose_bands, masks_within
from pipelines.dedup.common import DUPLICATES_COLUMNS, LOSSY_FORMATS, DedupConfig, VerifyMode
from pipelines.dedup.verify import SIGNATURE_SCHEMA, _signature_batches
from schemas.images import DuplicateKind

COMPACT_COLUMNS = ["source_uri", "sha256", "pixels_sha256", "phash", "orig_width", "orig_height", "orig_format", "file_size"]
PIXEL_COLUMNS = ["source_uri", "width", "height", "channels", "pixel_encoding", "pixels"]
DUPLICATES_SCHEMA = pa.schema([("source_uri", pa.string()), ("kept_source_uri", pa.string()), ("kind", pa.string()),
                               ("distance", pa.int32()), ("similarity", pa.float32())])
_PAIR_CHUNK = 4_000_000  # candidate pairs filtered per numpy step (~100 MB of temporaries)


def compact_table(images: DataFrame, previous: DataFrame | None, carry: Sequence[str] = ()) -> pd.DataFrame:
    """The compact rows of this run's images and the earlier runs' (is_prev), collected in one job, with the `carry`
    columns of `images` (null on the earlier runs' rows) for the caller to read off the dropped rows."""
    slim = images.select(*COMPACT_COLUMNS, *carry, F.lit(False).alias("is_prev"))
    if previous is not None:
        nulls = [F.lit(None).cast(images.schema[c].dataType).alias(c) for c in carry]
        slim = slim.unionByName(previous.select(*COMPACT_COLUMNS, *nulls, F.lit(True).alias("is_prev")))
    return slim.toArrow().to_pandas()


def rank(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by dedup.RANK_ORDER, with `id` = rank (0 = best). Python's str order is code point order, which
    is UTF-8 byte order, Spark's order for strings."""
    if rows["source_uri"].duplicated().any():
        repeated = rows.loc[rows["source_uri"].duplicated(), "source_uri"].head(3).tolist()
        raise ValueError(f"source_uri must be unique over images and previous; found repeated: {repeated}")
    keys = pd.DataFrame({
        "prev": rows["is_prev"].astype(bool),
        "area": rows["orig_width"].astype("int64") * rows["orig_height"].astype("int64"),
        "lossless": ~rows["orig_format"].fillna("").str.upper().isin(LOSSY_FORMATS),
        "file_size": rows["file_size"].astype("int64"),
        "source_uri": rows["source_uri"],
        "sha256": rows["sha256"].fillna(""),
    })
    order = keys.sort_values(["prev", "area", "lossless", "file_size", "source_uri", "sha256"],
                             ascending=[False, False, False, False, True, True], kind="stable").index
    ranked = rows.loc[order].reset_index(drop=True)
    ranked["id"] = np.arange(len(ranked), dtype=np.int64)
    return ranked


def exact_groups(ranked: pd.DataFrame) -> np.ndarray:
    """(n,) grp: the id of the best-ranked image with the same bytes, then of those the best with the same pixels."""
    sha_rep = ranked.groupby("sha256", sort=False, dropna=False)["id"].transform("min").to_numpy()
    reps = ranked["id"].to_numpy() == sha_rep
    rep_grp = ranked.loc[reps].groupby("pixels_sha256", sort=False, dropna=False)["id"].transform("min")
    grp_of_rep = pd.Series(rep_grp.to_numpy(), index=ranked.loc[reps, "id"].to_numpy())
    return grp_of_rep.reindex(sha_rep).to_numpy()


_QUERY_CHUNK = 1 << 16  # query hashes looked up per numpy step


def near_pairs(hashes: np.ndarray, query: np.ndarray, distance: int,
               bands: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of `hashes` (uint64) within Hamming `distance` where query[i] or query[j]; -> (i, j, d).

    Multi-index hashing (Norouzi et al. 2012), exact: the 64 bits are cut into m bands (candidates.choose_bands'
    cost model picks m from N and D unless `bands` is given); a pair within D differs in at most r = D // m bits of
    some band (pigeonhole), so each query hash looks up, per band, every key within r bits of its own (the masks of
    weight <= r) in that band's sorted keys. m = D + 1 (r = 0) compares whole buckets of 2^(64/m) keys, which grows
    as N^2 / 2^(64/m) (at N = 100k and D = 8, 9 bands of 7 bits: 350M comparisons); m = 3, r = 2 keeps 21-bit
    buckets nearly empty at that N for 232 lookups a hash. The result does not depend on m (tested)."""
    n = len(hashes)
    if n == 0 or distance < 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.int32)
    queries = np.flatnonzero(query)
    m = bands or choose_bands(max(len(queries), 1), n, distance)[0]
    radius = distance // m
    found: list[np.ndarray] = []
    offset = 0
    for width in band_widths(m):
        key = (hashes >> np.uint64(offset)) & np.uint64((1 << width) - 1)
        offset += width
        order = np.argsort(key, kind="stable")
        skey = key[order]
        starts = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]])
        run_end = np.repeat(np.r_[starts[1:], n], np.diff(np.r_[starts, n]))  # end of each sorted position's run
        for mask in masks_within(width, radius):
            for chunk in range(0, len(queries), _QUERY_CHUNK):
                qi = queries[chunk:chunk + _QUERY_CHUNK]
                wanted = key[qi] ^ np.uint64(mask)
                lo = np.searchsorted(skey, wanted)
                hit = lo < n
                hit[hit] = skey[lo[hit]] == wanted[hit]
                qi, lo = qi[hit], lo[hit]
                counts = run_end[lo] - lo
                if not len(counts):
                    continue
                # every (query, sorted position) pair of the matched runs, about _PAIR_CHUNK pairs at a time (a hot
                # bucket, e.g. many flat images sharing a band value, would otherwise expand all at once)
                cum = np.cumsum(counts)
                cuts = np.unique(np.r_[0, np.searchsorted(cum, np.arange(_PAIR_CHUNK, int(cum[-1]), _PAIR_CHUNK)), len(qi)])
                for s0, s1 in zip(cuts[:-1], cuts[1:]):
                    c, base = counts[s0:s1], lo[s0:s1]
                    first = np.repeat(base - np.cumsum(c) + c, c) + np.arange(int(c.sum()))
                    i, j = np.repeat(qi[s0:s1], c), order[first]
                    a, b = np.minimum(i, j), np.maximum(i, j)
                    keep = (a != b) & (_popcount(hashes[a] ^ hashes[b]) <= distance)
                    found.append(a[keep].astype(np.int64) * n + b[keep])
    if not found:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.int32)
    pairs = np.unique(np.concatenate(found))
    i, j = pairs // n, pairs % n
    return i, j, _popcount(hashes[i] ^ hashes[j]).astype(np.int32)


def _signature_array(spark: SparkSession, images: DataFrame, previous: DataFrame | None,
                     uris: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(packed, which): the float16 pixel signatures of the named images (this run's or earlier runs'), packed[p] the
    one of uris[which[p]], as (len(uris), views, dim). One Spark job computes them where the pixels are
    (verify._signature_batches, on every core) and only the signatures come back, 6 KB an image, viewed in place in
    Arrow's buffer: the driver never holds the pixels nor a float32 copy of them all (collecting the pixels and
    unpacking every signature made the driver 1.5 GB at 100k images)."""
    wanted = F.broadcast(spark.createDataFrame(pd.DataFrame({"source_uri": uris, "id": np.arange(len(uris), dtype=np.int64)}),
                                               "source_uri string, id long"))
    px = images.select(*PIXEL_COLUMNS)
    if previous is not None:
        px = px.unionByName(previous.select(*PIXEL_COLUMNS))
    cols = ["id", "width", "height", "channels", "pixel_encoding", "pixels"]
    table = px.join(wanted, "source_uri").select(*cols).mapInArrow(_signature_batches, SIGNATURE_SCHEMA).toArrow()
    if table.num_rows != len(uris):
        raise ValueError(f"pixels of {len(uris)} candidate images asked for, {table.num_rows} found")
    sigs = table.column("signature").combine_chunks()
    offsets = np.frombuffer(sigs.buffers()[1], np.int32, count=len(sigs) + 1, offset=sigs.offset * 4)
    if not (np.diff(offsets) == similarity.SIGNATURE_BYTES).all():
        raise ValueError("pixel signatures of unexpected size")
    packed = np.frombuffer(sigs.buffers()[2], np.float16, count=len(sigs) * similarity.SIGNATURE_BYTES // 2,
                           offset=int(offsets[0])).reshape(len(sigs), *similarity.SIGNATURE_SHAPE)
    return packed, table.column("id").to_numpy()


def greedy_keep(n_nodes: int, a: np.ndarray, b: np.ndarray, verified) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sequential greedy MIS by rank over node positions 0..n-1 (smaller is better) on the candidate graph
    (a, b), verifying lazily: a node is dropped by its best-ranked KEPT candidate neighbour whose pair passes
    `verified(v, us) -> (index into us of the first that passes or -1, its similarity)`, us ascending. This equals
    the greedy over the fully verified graph (dedup.greedy_mis): a node's fate depends only on its verified edges
    to kept nodes ranked before it, and the first passing one in rank order is the best-ranked kept neighbour
    (kept_by). Pairs with a dropped end are never scored, which is most of them where duplicates abound.
    -> (kept (n,) bool, dropper (n,) int64, -1 where kept, similarity (n,) float32 of the dropping pair)."""
    kept = np.ones(n_nodes, bool)
    dropper = np.full(n_nodes, -1, np.int64)
    sim = np.full(n_nodes, np.nan, np.float32)
    if not len(a):
        return kept, dropper, sim
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((lo, hi))  # by the later node, then its earlier neighbours ascending
    lo, hi = lo[order], hi[order]
    starts = np.flatnonzero(np.r_[True, hi[1:] != hi[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], len(hi)]):
        v = int(hi[s])
        us = lo[s:e]
        us = us[kept[us]]
        if not len(us):
            continue
        k, score = verified(v, us)
        if k >= 0:
            kept[v] = False
            dropper[v] = us[k]
            sim[v] = score
    return kept, dropper, sim


def deduplicate_on_driver(spark: SparkSession, images: DataFrame, previous: DataFrame | None, config: DedupConfig,
                          rows: pd.DataFrame | None = None, carry: Sequence[str] = ()) -> pd.DataFrame:
    """dedup.deduplicate's decision for a run whose compact table fits on the driver -> the duplicates rows
    (DUPLICATES_COLUMNS, then the dropped image's `carry` columns), one per dropped image of `images`. `rows`: the
    compact table (with the carry columns), if already collected."""
    ranked = rank(compact_table(images, previous, carry) if rows is None else rows)
    ids = ranked["id"].to_numpy()
    grp = exact_groups(ranked)
    is_prev = ranked["is_prev"].to_numpy(bool)
    hashes = ranked["phash"].to_numpy(np.int64).view(np.uint64)
    node = np.flatnonzero((ids == grp) | is_prev)  # positions = ids (dense ranks)

    # the candidate graph over the nodes (node index a < b), verified lazily by the keep rule
    a = b = np.zeros(0, np.int64)
    if config.near_distance > 0 and len(node) > 1:
        a, b, _ = near_pairs(hashes[node], ~is_prev[node], config.near_distance)
    if config.verify is VerifyMode.PIXELS and len(a):
        uris = ranked["source_uri"].to_numpy()[node]
        ends = np.unique(np.r_[a, b])
        sig, which = _signature_array(spark, images, previous, uris[ends].tolist())  # (ends, views, dim) float16
        row_of = np.full(len(node), -1, np.int64)
        row_of[ends[which]] = np.arange(len(which))

        def verified(v: int, us: np.ndarray) -> tuple[int, float]:
            # float16 -> float32 per lookup: the values similarity.unpack would give, for these rows only
            scores = similarity.similarities_unpacked(sig[row_of[v]][None].astype(np.float32),
                                                      sig[row_of[us]].astype(np.float32))
            ok = np.flatnonzero(scores >= config.min_similarity)
            return (int(ok[0]), float(scores[ok[0]])) if len(ok) else (-1, float("nan"))
    else:
        def verified(v: int, us: np.ndarray) -> tuple[int, float]:
            return 0, float("nan")  # every candidate is a duplicate: pHash alone decides
    kept_node, dropper, drop_sim = greedy_keep(len(node), a, b, verified)

    # each id's group representative's fate, as dedup._deduplicate's `fate`
    kept_by_id = np.full(len(ranked), -1, np.int64)          # for a dropped representative: the id it yields to
    rep_similarity = np.full(len(ranked), np.nan, np.float32)
    rep_kept = np.ones(len(ranked), bool)
    dropped_nodes = np.flatnonzero(~kept_node)
    rep_kept[node[dropped_nodes]] = False
    kept_by_id[node[dropped_nodes]] = node[dropper[dropped_nodes]]
    rep_similarity[node[dropped_nodes]] = drop_sim[dropped_nodes]
    new = np.flatnonzero(~is_prev)
    g = grp[new]
    is_rep = ids[new] == g
    group_kept = rep_kept[g]
    target = np.where(is_rep, np.where(group_kept, -1, kept_by_id[g]), np.where(group_kept, g, kept_by_id[g]))
    dropped = target >= 0
    rows_new, target = new[dropped], target[dropped]
    exact = (~is_rep & group_kept)[dropped]
    distance = np.where(exact, 0, _popcount(hashes[rows_new] ^ hashes[target])).astype(np.int32)
    similarity_ = np.where(exact, np.float32(1.0), rep_similarity[g[dropped]]).astype(np.float32)
    uris = ranked["source_uri"].to_numpy()
    out = pd.DataFrame({
        "source_uri": uris[rows_new],
        "kept_source_uri": uris[target],
        "kind": np.where(exact, DuplicateKind.EXACT.value, DuplicateKind.NEAR.value),
        "distance": distance,
        "similarity": similarity_,
    }, columns=DUPLICATES_COLUMNS)
    for c in carry:
        out[c] = ranked[c].to_numpy()[rows_new]
    return out


def duplicates_table(dups: pd.DataFrame) -> pa.Table:
    """deduplicate_on_driver's rows as Arrow: DUPLICATES_SCHEMA, then any carried columns as pandas has them."""
    # column by column from numpy: from_pandas would turn an unverified pair's NaN similarity into null
    table = pa.Table.from_arrays([pa.array(dups[f.name].to_numpy(), f.type) for f in DUPLICATES_SCHEMA], schema=DUPLICATES_SCHEMA)
    for c in dups.columns[len(DUPLICATES_SCHEMA):]:
        table = table.append_column(c, pa.Array.from_pandas(dups[c]))
    return table


def duplicates_frame(spark: SparkSession, table: pa.Table) -> DataFrame:
    """duplicates_table's rows (DUPLICATES_SCHEMA's columns) as a Spark DataFrame."""
    table = table.select(DUPLICATES_SCHEMA.names)
    # a local table is split over the default parallelism; duplicates are few, so one file per ~500k rows
    return spark.createDataFrame(table).coalesce(max(1, table.num_rows // 500_000))
