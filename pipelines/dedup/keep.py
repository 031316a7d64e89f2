"""Step 5 of the dedup, the keep rule: the greedy maximal independent set by rank of the similarity graph.
"""
from __future__ import annotations

from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from pipelines.dedup.common import _checkpoint

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
