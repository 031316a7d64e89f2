"""pipelines/dedup/ against brute force, on random hashes with planted clusters, chains and a hot bucket."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines import dedup
from pipelines.dedup import DedupConfig, VerifyMode, candidates, keep


@pytest.fixture(params=[0, 10**6], ids=["distributed", "driver"])
def dedup_path(request) -> int:
    """DedupConfig.driver_max_rows: every deduplicate() test below runs through both paths, which must agree."""
    return request.param


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def brute_distances(h: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances (n, n) of int64 hashes, numpy (as imagededup does)."""
    u = h.view(np.uint64)
    x = u[:, None] ^ u[None, :]
    return _POP8[x.view(np.uint8).reshape(*x.shape, 8)].sum(-1)


def flip(value: int, bits) -> int:
    u = value & ((1 << 64) - 1)
    for b in bits:
        u ^= 1 << int(b)
    return u - (1 << 64) if u >= 1 << 63 else u


def planted_hashes(n: int, distance: int, seed: int) -> np.ndarray:
    """Random 64-bit hashes with clusters (<= distance from a centre), chains (consecutive links at
    distance - 1..distance, ends further apart) and a hot band (the top 32 bits shared by 150 hashes)."""
    rng = np.random.default_rng(seed)
    h = [int(x) for x in rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)]
    pos = 0
    for _ in range(n // 30):  # clusters of 4 around h[pos]
        for j in range(1, 4):
            h[pos + j] = flip(h[pos], rng.choice(64, size=int(rng.integers(0, distance + 1)), replace=False))
        pos += 4
    for _ in range(n // 60):  # chains of 5: each link flips fresh bits, so the ends drift apart
        bits = rng.permutation(64)
        step = max(distance - int(rng.integers(0, 2)), 1)
        for j in range(1, 5):
            h[pos + j] = flip(h[pos + j - 1], bits[(j - 1) * step:j * step])
        pos += 5
    top = h[pos] & ~((1 << 32) - 1)
    for j in range(150):  # hot bucket: same top 32 bits (band 0 for any m >= 2), random rest
        h[pos + j] = top | int(rng.integers(0, 2**32))
    return np.array(h, dtype=np.int64)


def brute_pairs(h: np.ndarray, distance: int) -> set[tuple[int, int, int]]:
    d = brute_distances(h)
    a, b = np.nonzero(np.triu(d <= distance, 1))
    return {(int(i), int(j), int(d[i, j])) for i, j in zip(a, b)}


def sequential_greedy(n: int, pairs: set[tuple[int, int, int]]) -> dict[int, int | None]:
    """The reference keep rule: visit by rank (id), keep unless a kept node is adjacent. -> id: best kept neighbour or None."""
    adj: dict[int, list[int]] = {i: [] for i in range(n)}
    for a, b, _ in pairs:
        adj[a].append(b)
        adj[b].append(a)
    kept: set[int] = set()
    out: dict[int, int | None] = {}
    for i in range(n):
        ks = sorted(k for k in adj[i] if k in kept)
        out[i] = ks[0] if ks else None
        if not ks:
            kept.add(i)
    return out


def hashes_df(spark, h: np.ndarray, query: list[bool] | None = None):
    rows = [(i, int(x)) if query is None else (i, int(x), query[i]) for i, x in enumerate(h)]
    return spark.createDataFrame(rows, "id long, phash long" + ("" if query is None else ", query boolean"))


# ----------------------------------------------------------------------------- pure functions
def test_masks_and_ball_sizes():
    for w, r in [(16, 0), (16, 2), (21, 2), (13, 1), (7, 3)]:
        masks = candidates.masks_within(w, r)
        assert len(masks) == len(set(masks)) == candidates.ball_size(w, r) == sum(math.comb(w, k) for k in range(r + 1))
        assert all(bin(m).count("1") <= r and m < 1 << w for m in masks)
    assert candidates.band_widths(5) == [13, 13, 13, 13, 12]
    assert sum(candidates.band_widths(7)) == 64


def test_choose_bands_balances_enumeration_and_buckets():
    # D = 0: one 64-bit band, radius 0 (a plain equi-join on the hash).
    assert candidates.choose_bands(10**6, 10**6, 0) == (1, 0)
    # Large N prefers wider bands (smaller buckets) than D + 1 bands would give.
    m, r = candidates.choose_bands(10**6, 10**6, 8)
    assert (m, r) == (3, 2)
    assert candidates.mih_cost(10**6, 10**6, 8, 3) < candidates.mih_cost(10**6, 10**6, 8, 9) / 10  # m = D + 1: 7-bit buckets
    for n in (10**5, 10**6, 10**8):
        for d in range(13):
            m, r = candidates.choose_bands(n, n, d)
            assert r == d // m and 1 <= m <= d + 1
            assert candidates.mih_cost(n, n, d, m) == min(candidates.mih_cost(n, n, d, k) for k in range(1, d + 2))


def test_pigeonhole_holds_for_uneven_bands():
    """Any pair within D has a band within D // m, for the widths band_widths gives (checked on random pairs)."""
    rng = np.random.default_rng(1)
    for m in range(1, 10):
        widths = candidates.band_widths(m)
        for _ in range(300):
            d = int(rng.integers(0, 13))
            bits = rng.choice(64, size=d, replace=False)
            per_band, lo = [], 0
            for w in widths:
                per_band.append(int(((bits >= 64 - lo - w) & (bits < 64 - lo)).sum()))
                lo += w
            assert min(per_band) <= d // m


# ----------------------------------------------------------------------------- banded join == all pairs
@pytest.mark.parametrize("distance,bands", [(8, None), (8, 9), (10, 4), (0, None)])
def test_candidate_pairs_equal_brute_force(spark, distance, bands):
    h = planted_hashes(2000, max(distance, 1), seed=distance * 10 + (bands or 0))
    expected = brute_pairs(h, distance)
    m = bands or candidates.choose_bands(len(h), len(h), distance)[0]
    # hot_bucket_cap=40 salts the planted hot band (150 rows) and the 7-bit buckets of m = 9.
    got_rows = candidates.candidate_pairs(hashes_df(spark, h), distance, m, distance // m, hot_bucket_cap=40).collect()
    got = [(r.src, r.dst, r.distance) for r in got_rows]
    assert len(got) == len(set(got)), "a pair came out twice"
    assert set(got) == expected
    if distance >= 8:
        assert len(expected) > 150  # the planted clusters and chains are there


def test_candidate_pairs_refuses_a_radius_that_would_miss_pairs(spark):
    with pytest.raises(ValueError, match="radius >= distance // bands"):
        candidates.candidate_pairs(hashes_df(spark, np.zeros(3, dtype=np.int64)), 8, 2, 3)


def test_candidate_pairs_with_index_only_rows(spark):
    """Rows with query=False (earlier runs) are matched by query rows but never against each other."""
    h = planted_hashes(800, 6, seed=3)
    query = [i % 3 != 0 for i in range(len(h))]
    expected = {(a, b, d) for a, b, d in brute_pairs(h, 6) if query[a] or query[b]}
    got = {(r.src, r.dst, r.distance) for r in candidates.candidate_pairs(hashes_df(spark, h, query), 6, 3, 2).collect()}
    assert got == expected and any(not query[a] for a, _, _ in expected)


# ----------------------------------------------------------------------------- keep rule
def chain_and_clusters() -> tuple[np.ndarray, set[tuple[int, int, int]]]:
    h = planted_hashes(1500, 8, seed=11)
    return h, brute_pairs(h, 8)


def check_keep_rule(n: int, pairs, kept: set[int]) -> None:
    adj = {i: set() for i in range(n)}
    for a, b, _ in pairs:
        adj[a].add(b)
        adj[b].add(a)
    assert all(not (adj[k] & kept) for k in kept), "two kept images are within D"
    assert all(adj[i] & kept for i in range(n) if i not in kept), "a dropped image has no kept image within D"


def test_greedy_mis_equals_sequential_greedy(spark):
    h, pairs = chain_and_clusters()
    n = len(h)
    edges = spark.createDataFrame(sorted(pairs), "src long, dst long, distance int")
    nodes = spark.createDataFrame([(i,) for i in range(n)], "id long")
    got = {r.id: r for r in keep.greedy_mis(nodes, edges).collect()}
    ref = sequential_greedy(n, pairs)
    # A small graph decided on the driver at once (no distributed round) gives the very same rows.
    on_driver = {r.id: r[:4] for r in keep.greedy_mis(nodes, edges, driver_max_edges=len(pairs)).collect()}
    assert on_driver == {i: r[:4] for i, r in got.items()}  # (id, kept, kept_by, distance); similarity is NaN here
    assert set(got) == set(range(n))
    assert {i for i, r in got.items() if r.kept} == {i for i, k in ref.items() if k is None}
    assert {i: r.kept_by for i, r in got.items() if not r.kept} == {i: k for i, k in ref.items() if k is not None}
    dist = {(a, b): d for a, b, d in pairs} | {(b, a): d for a, b, d in pairs}
    assert all(r.distance == dist[(i, r.kept_by)] for i, r in got.items() if not r.kept)
    check_keep_rule(n, pairs, {i for i, r in got.items() if r.kept})


def test_greedy_mis_chain_and_driver_fallback(spark):
    """A chain 0~1~2~...~6 ranked along itself: 0, 2, 4, 6 kept (a~b, b~c, a!~c). One round then the
    driver fallback gives the same answer; with no room for the fallback it fails loudly."""
    pairs = {(i, i + 1, 3) for i in range(6)}
    edges = spark.createDataFrame(sorted(pairs), "src long, dst long, distance int")
    nodes = spark.createDataFrame([(i,) for i in range(9)], "id long")  # 7, 8 isolated
    want = {0, 2, 4, 6, 7, 8}
    for rounds in (40, 1):
        got = keep.greedy_mis(nodes, edges, max_rounds=rounds).collect()
        assert {r.id for r in got if r.kept} == want
        assert {r.id: r.kept_by for r in got if not r.kept} == {1: 0, 3: 2, 5: 4}
    with pytest.raises(RuntimeError, match="did not converge in 1 rounds"):
        keep.greedy_mis(nodes, edges, max_rounds=1, fallback_max_edges=0)


# ----------------------------------------------------------------------------- deduplicate() on hash rows
def image_rows(h: np.ndarray, prefix: str, start: int = 0, sha=None, pix=None):
    """IMAGES-like rows with given pHashes; rank = the index (area decreases with it)."""
    rows = []
    for i, x in enumerate(h):
        k = start + i
        rows.append(dict(source_uri=f"{prefix}/{k:05d}.png", sha256=(sha or {}).get(k, f"{prefix}:s{k}"),
                         pixels_sha256=(pix or {}).get(k, f"{prefix}:p{k}"),
                         phash=int(x), orig_width=10000 - k, orig_height=100, orig_format="PNG", file_size=1000, width=1, height=1, channels=1,
                         pixel_encoding="raw", pixels=bytes([k % 256])))
    return rows


IMG_DDL = ("source_uri string, sha256 string, pixels_sha256 string, phash long, orig_width int, orig_height int, orig_format string, file_size long, "
           "width int, height int, channels int, pixel_encoding string, pixels binary")


def test_deduplicate_keep_rule_over_exact_groups(spark, dedup_path):
    h, pairs = chain_and_clusters()
    n = len(h)
    # Extra exact copies: 10 of same bytes as image 3 (ranked after it), 10 of same pixels as image 7.
    extra_h = np.array([h[3]] * 10 + [h[7]] * 10, dtype=np.int64)
    sha = {n + j: "new:s3" for j in range(10)}
    pix = {n + 10 + j: "new:p7" for j in range(10)}
    rows = image_rows(np.concatenate([h, extra_h]), "new", sha=sha, pix=pix)
    images = spark.createDataFrame(rows, IMG_DDL)
    kept, dups = dedup.deduplicate(spark, images, None, DedupConfig(near_distance=8, verify=VerifyMode.NONE, partitions=4, driver_max_rows=dedup_path))
    kept_uris = {r.source_uri for r in kept.collect()}
    d = {r.source_uri: r for r in dups.collect()}
    assert len(kept_uris) + len(d) == len(rows) and not kept_uris & set(d)
    assert set(kept.columns) == set(images.columns)
    uri = [r["source_uri"] for r in rows]
    ref = sequential_greedy(n, pairs)
    assert kept_uris == {uri[i] for i, k in ref.items() if k is None}
    check_keep_rule(n, pairs, {i for i in range(n) if uri[i] in kept_uris})
    for j in range(20):
        rep = 3 if j < 10 else 7
        row = d[uri[n + j]]
        if ref[rep] is None:  # representative kept: an exact duplicate of it
            assert (row.kept_source_uri, row.kind, row.distance) == (uri[rep], "exact", 0)
        else:  # representative dropped: same kept image as the representative
            assert (row.kept_source_uri, row.kind) == (uri[ref[rep]], "near")
    assert all(r.kept_source_uri in kept_uris for r in d.values())
    assert all(r.kind == "near" and 0 <= r.distance <= 8 for u, r in d.items() if u in uri[:n])


def test_deduplicate_near_zero_is_exact_only_and_rejects_repeated_uris(spark, dedup_path):
    h = np.array([5, 5, 7, 5], dtype=np.int64)
    rows = image_rows(h, "x", sha={1: "x:s0"})
    kept, dups = dedup.deduplicate(spark, spark.createDataFrame(rows, IMG_DDL), None, DedupConfig(near_distance=0, driver_max_rows=dedup_path))
    assert {r.source_uri for r in kept.collect()} == {"x/00000.png", "x/00002.png", "x/00003.png"}
    assert [tuple(r) for r in dups.collect()] == [("x/00001.png", "x/00000.png", "exact", 0, 1.0)]
    empty_kept, empty_dups = dedup.deduplicate(spark, spark.createDataFrame([], IMG_DDL), None, DedupConfig(driver_max_rows=dedup_path))
    assert (empty_kept.count(), empty_dups.count()) == (0, 0)
    with pytest.raises(ValueError, match="source_uri must be unique"):
        dedup.deduplicate(spark, spark.createDataFrame(rows + rows[:1], IMG_DDL), None, DedupConfig(near_distance=0, driver_max_rows=dedup_path))


def test_deduplicate_incremental_previous_always_kept(spark, dedup_path):
    """Run 1 then run 2 with `previous` = run 1's kept rows. A new image better ranked than an old one
    still loses to it; exact and near copies of old images are dropped against them; counts add up."""
    rng = np.random.default_rng(5)
    base = rng.integers(-(2**63), 2**63 - 1, size=300, dtype=np.int64)
    run1 = image_rows(base, "run1")
    images1 = spark.createDataFrame(run1, IMG_DDL)
    cfg = DedupConfig(near_distance=6, verify=VerifyMode.NONE, partitions=4, driver_max_rows=dedup_path)
    kept1, dups1 = dedup.deduplicate(spark, images1, None, cfg)
    k1 = kept1.collect()
    assert len(k1) + dups1.count() == 300 and len(k1) == 300  # random hashes: nothing merged
    new_h = rng.integers(-(2**63), 2**63 - 1, size=100, dtype=np.int64)
    new_h[0] = flip(int(base[10]), [1, 2, 3])  # near copy of an old image
    new_h[1] = base[20]                        # exact copy (same bytes) of an old image
    new_h[2] = flip(int(new_h[0]), [40, 41])   # near copy of the near copy (chain through a dropped image)
    run2 = image_rows(new_h, "run2", start=0, sha={1: "run1:s20"})
    for r in run2[:3]:
        r["orig_width"] = 10**6  # better ranked than every old image: must still not win
    images2 = spark.createDataFrame(run2, IMG_DDL)
    kept2, dups2 = dedup.deduplicate(spark, images2, kept1, cfg)
    d2 = {r.source_uri: r for r in dups2.collect()}
    kept2_uris = {r.source_uri for r in kept2.collect()}
    assert d2["run2/00000.png"][1:4] == ("run1/00010.png", "near", 3)
    assert d2["run2/00001.png"][1:] == ("run1/00020.png", "exact", 0, 1.0)
    assert d2["run2/00002.png"].kept_source_uri == "run1/00010.png"  # within 5 of it; its own dropper is dropped
    assert len(kept2_uris) + len(d2) == 100 and not kept2_uris & set(d2)
    assert all(u.startswith("run2/") for u in kept2_uris)
    # Keep rule over the union of both runs' kept images.
    union = [int(r.phash) for r in k1] + [int(new_h[int(u[5:10])]) for u in sorted(kept2_uris)]
    assert (np.triu(brute_distances(np.array(union, dtype=np.int64)) <= 6, 1)).sum() == 0


def test_config_is_validated():
    with pytest.raises(ValueError, match="near_distance"):
        DedupConfig(near_distance=40)
    with pytest.raises(TypeError, match="VerifyMode"):
        DedupConfig(verify="phash256")
    with pytest.raises(ValueError, match="min_similarity"):
        DedupConfig(min_similarity=1.5)
    assert candidates.masks_within(3, 1) == [0, 1, 2, 4]


def test_keep_rule_lossless_before_lossy_at_equal_resolution(spark, dedup_path):
    """Resolution first, then lossless before lossy, then file size: a larger JPEG re-encode of a PNG loses to it,
    a larger-resolution JPEG still wins over a smaller PNG."""
    rows = image_rows(np.array([9, 9, 9], dtype=np.int64), "k")
    rows[0].update(source_uri="k/a-reencode.jpg", orig_format="JPEG", file_size=50_000, orig_width=500)
    rows[1].update(source_uri="k/b-original.png", orig_format="PNG", file_size=20_000, orig_width=500)
    rows[2].update(source_uri="k/c-bigger.jpg", orig_format="JPEG", file_size=10_000, orig_width=501)
    cfg = DedupConfig(near_distance=4, verify=VerifyMode.NONE, partitions=4, driver_max_rows=dedup_path)
    kept, dups = dedup.deduplicate(spark, spark.createDataFrame(rows[:2], IMG_DDL), None, cfg)
    assert [r.source_uri for r in kept.collect()] == ["k/b-original.png"]
    kept, dups = dedup.deduplicate(spark, spark.createDataFrame(rows, IMG_DDL), None, cfg)
    assert [r.source_uri for r in kept.collect()] == ["k/c-bigger.jpg"]
    assert {r.source_uri: r.kept_source_uri for r in dups.collect()} == {"k/a-reencode.jpg": "k/c-bigger.jpg", "k/b-original.png": "k/c-bigger.jpg"}
