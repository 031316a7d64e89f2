"""pipelines/dedup/candidates.py's LSH candidate search (lsh_pairs) against brute force: exact on small runs, recall
>= 0.99 of the pairs within D on clustered hashes with planted near pairs, and work per image that stays
bounded as N grows (speed itself is measured in bench/dedup.py, not here)."""
from __future__ import annotations

import numpy as np
import pytest

from bench.dedup import brute_sample, clustered_hashes, popcount
from pipelines import dedup
from pipelines.dedup import CandidateMethod, DedupConfig, VerifyMode, candidates
from tests.pipelines.test_dedup import (
    IMG_DDL,
    brute_pairs,
    hashes_df,
    image_rows,
    planted_hashes,
    sequential_greedy,
)


def found_pairs(df) -> set[tuple[int, int, int]]:
    rows = [(r.src, r.dst, r.distance) for r in df.collect()]
    assert len(rows) == len(set(rows)), "a pair came out twice"
    return set(rows)


def test_small_run_is_searched_all_pairs_exactly(spark):
    """<= lsh_exact_rows hashes: one all-pairs group, the brute-force result, index-only rows respected."""
    h = planted_hashes(1500, 12, seed=4)
    query = [i % 4 != 0 for i in range(len(h))]
    expected = {(a, b, d) for a, b, d in brute_pairs(h, 12) if query[a] or query[b]}
    got = found_pairs(candidates.lsh_pairs(hashes_df(spark, h, query), 12, exact_rows=2048))
    assert got == expected
    assert len(expected) > 300 and any(not query[a] for a, _, _ in expected)


@pytest.fixture(scope="module")
def lsh_runs(spark):
    """The bench's clustered generator at N and 4N, searched in windowed groups of ~4k rows (not all-pairs);
    8 groups instead of the default 32 keep the test short (recall measured 1.0 with both here)."""
    cfg = {"groups": 8, "subtables": 10, "window": 8, "max_group_rows": 4096, "exact_rows": 256, "seed": 0}
    out = {}
    for n in (8_000, 32_000):
        h, planted = clustered_hashes(n, 12, seed=n)
        df = hashes_df(spark, h)
        got = found_pairs(candidates.lsh_pairs(df, 12, **cfg))
        key_bits = candidates.group_key_bits(n, cfg["max_group_rows"])
        sizes = [r["count"] for r in candidates.lsh_groups(df, cfg["groups"], key_bits, 0).groupBy("g", "key").count().collect()]
        truth = np.unique(np.concatenate([planted, brute_sample(h, 12, np.random.default_rng(n).choice(n, 600, replace=False))]), axis=0)
        out[n] = {"h": h, "got": got, "truth": truth, "key_bits": key_bits, "sizes": sizes, "cfg": cfg}
    return out


def test_lsh_recall_on_clustered_hashes_with_planted_pairs(lsh_runs):
    for n, run in lsh_runs.items():
        truth, got = run["truth"], run["got"]
        u = run["h"].view(np.uint64)
        # Precision is exact: every returned pair is within D with its true distance.
        g = np.array(sorted(got), dtype=np.int64)
        assert (g[:, 0] < g[:, 1]).all() and (g[:, 2] <= 12).all()
        assert (popcount(u[g[:, 0]] ^ u[g[:, 1]]) == g[:, 2]).all()
        keys = {(a, b) for a, b, _ in got}
        hit = np.array([(a, b) in keys for a, b, _ in truth.tolist()])
        assert set(truth[:, 2].tolist()) == set(range(13)), "planted pairs at every distance 0..12"
        assert len(truth) >= 0.02 * n
        assert hit.mean() >= 0.99, f"N={n}: recall {hit.mean():.4f} of {len(truth)} pairs within 12"
        assert hit[truth[:, 2] <= 6].all(), "a pair within 6 bits was missed"
        assert run["key_bits"] == {8_000: 1, 32_000: 3}[n]  # groups of ~4k rows at both sizes, not all-pairs
        assert max(run["sizes"]) > run["cfg"]["exact_rows"]


def test_lsh_work_per_image_stays_bounded_as_n_grows(lsh_runs):
    per_image = {}
    for n, run in lsh_runs.items():
        c = run["cfg"]
        per_image[n] = candidates.lsh_comparisons(run["sizes"], c["subtables"], c["window"], c["exact_rows"]) / n
        # Every group is windowed: G * T * W popcounts per image, minus the window's tail in each group.
        assert 0.99 * c["groups"] * c["subtables"] * c["window"] <= per_image[n] <= c["groups"] * c["subtables"] * c["window"]
        assert len(run["got"]) / n < 0.1  # what comes out is the near pairs, not the examined ones
    assert per_image[32_000] <= 1.01 * per_image[8_000]


def test_choose_method_keeps_the_exact_search_where_it_is_cheap():
    cfg = DedupConfig()  # D = 12
    assert candidates.choose_method(3_000, 3_000, cfg) is CandidateMethod.EXACT  # 455 join rows per image
    assert candidates.choose_method(100_000, 100_000, cfg) is CandidateMethod.LSH  # 6,868 per image
    assert candidates.choose_method(10**6, 10**6, DedupConfig(near_distance=8)) is CandidateMethod.EXACT  # 1,000
    assert candidates.choose_method(10**6, 10**6, DedupConfig(near_distance=8, candidates=CandidateMethod.LSH)) is CandidateMethod.LSH
    with pytest.raises(TypeError, match="candidates must be a CandidateMethod"):
        DedupConfig(candidates="lsh")
    with pytest.raises(ValueError, match="lsh_groups, lsh_subtables, lsh_window"):
        DedupConfig(lsh_window=0)


def test_deduplicate_through_lsh_keeps_the_keep_rule(spark):
    """deduplicate() with the LSH search forced on (windowed groups of ~375 rows) decides as the exact search."""
    h = planted_hashes(1500, 8, seed=11)
    pairs = brute_pairs(h, 8)
    rows = image_rows(h, "lsh")
    cfg = DedupConfig(near_distance=8, verify=VerifyMode.NONE, partitions=4, candidates=CandidateMethod.LSH,
                      lsh_max_group_rows=512, lsh_exact_rows=64, driver_max_rows=0)
    assert candidates.group_key_bits(len(h), 512) == 2
    kept, dups = dedup.deduplicate(spark, spark.createDataFrame(rows, IMG_DDL), None, cfg)
    kept_uris = {r.source_uri for r in kept.collect()}
    ref = sequential_greedy(len(h), pairs)
    assert kept_uris == {rows[i]["source_uri"] for i, k in ref.items() if k is None}
    assert {r.source_uri: r.kept_source_uri for r in dups.collect()} == {
        rows[i]["source_uri"]: rows[k]["source_uri"] for i, k in ref.items() if k is not None}
