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

Modules: common.py (config, helpers), candidates.py (1-3), verify.py (4), keep.py (5), driver.py (the same
decisions on the driver for runs up to driver_max_rows); this module composes them (`deduplicate`).
"""
from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.dedup import driver
from pipelines.dedup.candidates import assign_ranks, candidate_pairs, choose_bands, choose_method, exact_groups, lsh_pairs
from pipelines.dedup.common import (
    DUPLICATES_COLUMNS,
    LOSSY_FORMATS,
    CandidateMethod,
    DedupConfig,
    VerifyMode,
    _checkpoint,
    _partitions,
    hamming,
)
from pipelines.dedup.keep import greedy_mis
from pipelines.dedup.verify import verify
from schemas.images import DuplicateKind

__all__ = ["DUPLICATES_COLUMNS", "LOSSY_FORMATS", "CandidateMethod", "DedupConfig", "VerifyMode", "deduplicate", "find_duplicates"]


def deduplicate(spark: SparkSession, images: DataFrame, previous: DataFrame | None, config: DedupConfig,
                rows: int | None = None) -> tuple[DataFrame, DataFrame]:
    """Drop exact and near duplicates from `images`.

    images: this run's valid images, with at least the IMAGES_ARROW columns source_uri, sha256,
      pixels_sha256, phash, orig_width, orig_height, orig_format, file_size, width, height, channels,
      pixel_encoding, pixels; source_uri must be unique. rows: its row count when the caller knows it (the
      preprocess job counted it with the decode stage), else it is counted here.
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
    dups = find_duplicates(spark, images, previous, config, rows)
    if isinstance(dups, pa.Table):
        dups = driver.duplicates_frame(spark, dups)
    return images.join(dups.select("source_uri"), "source_uri", "left_anti"), dups


def find_duplicates(spark: SparkSession, images: DataFrame, previous: DataFrame | None, config: DedupConfig,
                    rows: int | None = None, carry: Sequence[str] = ()) -> pa.Table | DataFrame:
    """`deduplicate`'s duplicates rows alone: an Arrow table (driver.DUPLICATES_SCHEMA) already decided on the driver
    when the run has at most driver_max_rows images with the earlier runs', else the distributed path's Spark DataFrame
    (checkpointed: computed once). A caller writing the rows itself skips the Spark job that turning a
    driver table into a DataFrame and writing it costs. The driver's table also holds each dropped image's `carry`
    columns of `images` (after DUPLICATES_COLUMNS); the DataFrame does not."""
    if config.driver_max_rows:
        n = (images.count() if rows is None else rows) + (previous.count() if previous is not None else 0)
        if n <= config.driver_max_rows:
            return driver.duplicates_table(driver.deduplicate_on_driver(spark, images, previous, config, carry=carry))
    parts = _partitions(spark, config)
    prev_conf = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", str(parts))
    try:
        return _deduplicate(spark, images, previous, config)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", prev_conf)


def _deduplicate(spark: SparkSession, images: DataFrame, previous: DataFrame | None, config: DedupConfig) -> DataFrame:
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
    return _checkpoint(dups)
