"""pipelines/dedup/driver.py: the driver's dedup decides exactly as the distributed one (10/14)."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.dedup import DedupConfig, deduplicate
from pipelines.dedup import driver as dedup_local
from pipelines.dedup.candidates import ball_size
from tests.pipelines.test_dedup import IMG_DDL, brute_pairs, flip, image_rows, planted_hashes
from tests.pipelines.test_dedup_photos import IMG_DDL as PHOTO_DDL
from tests.pipelines.test_dedup_photos import rows as photo_rows  # noqa: F401  (module fixture)


@pytest.mark.parametrize("distance,seed", [(4, 1), (8, 2), (12, 3)])
def test_near_pairs_equal_brute_force(distance, seed):
    h = planted_hashes(1200, distance, seed)  # clusters, chains and a hot bucket of 150 equal top halves
    query = np.ones(len(h), bool)
    i, j, d = dedup_local.near_pairs(h.view(np.uint64), query, distance)
    assert {(int(a), int(b), int(c)) for a, b, c in zip(i, j, d)} == brute_pairs(h, distance)


@pytest.mark.parametrize("distance,seed", [(4, 4), (8, 5), (12, 6)])
def test_near_pairs_do_not_depend_on_the_band_count(distance, seed):
    """Every band count m in 1..D+1 (radius D // m) finds exactly the brute-force pairs, a mixed query set included."""
    h = planted_hashes(600, distance, seed)
    query = np.random.default_rng(seed).random(len(h)) < 0.7
    want = {p for p in brute_pairs(h, distance) if query[p[0]] or query[p[1]]}
    for bands in sorted({1, 2, 3, 4, distance + 1}):
        if ball_size(64 // bands + 1, distance // bands) > 5000:  # e.g. m = 1, r = 8: C(64, <=8) lookups a hash
            continue
        i, j, d = dedup_local.near_pairs(h.view(np.uint64), query, distance, bands=bands)
        assert {(int(a), int(b), int(c)) for a, b, c in zip(i, j, d)} == want, bands


def test_near_pairs_skip_pairs_of_two_index_rows():
    h = np.array([0, 1, 3, -1], dtype=np.int64)  # -1: all 64 bits set, far from the rest
    query = np.array([False, False, True, True])
    i, j, _ = dedup_local.near_pairs(h.view(np.uint64), query, 4)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 2), (1, 2)]  # (0, 1) is within 4 but both are earlier runs'


def _sim(x):
    return "nan" if x is None or x != x else round(x, 4)


def _decisions(kept, dups):
    return ({r.source_uri for r in kept.collect()},
            {(r.source_uri, r.kept_source_uri, r.kind, r.distance, _sim(r.similarity))
             for r in dups.collect()})


def test_driver_equals_distributed_on_photos_with_pixel_verification(spark, photo_rows):  # noqa: F811
    images = spark.createDataFrame(photo_rows, PHOTO_DDL)
    on_driver = _decisions(*deduplicate(spark, images, None, DedupConfig(partitions=4)))
    distributed = _decisions(*deduplicate(spark, images, None, DedupConfig(partitions=4, driver_max_rows=0)))
    assert on_driver == distributed
    assert len(on_driver[1]) > 20  # the photos' variants were found, not an empty agreement


def test_driver_equals_distributed_with_previous_runs(spark):
    rng = np.random.default_rng(21)
    base = rng.integers(-(2**63), 2**63 - 1, size=200, dtype=np.int64)
    for k in range(0, 60, 3):  # near copies inside the old run: the old run keeps them all anyway
        base[k + 1] = flip(int(base[k]), [k % 64])
    previous = spark.createDataFrame(image_rows(base, "old"), IMG_DDL)
    new = rng.integers(-(2**63), 2**63 - 1, size=150, dtype=np.int64)
    new[:20] = [flip(int(base[k]), [5, 9]) for k in range(20)]
    new[20:30] = base[30:40]
    new[30:40] = [flip(int(new[k]), [33]) for k in range(10)]
    rows = image_rows(new, "new", sha={20 + k: f"old:s{30 + k}" for k in range(10)})
    images = spark.createDataFrame(rows, IMG_DDL)
    cfg = dict(near_distance=6, verify=dedup_local.VerifyMode.NONE, partitions=4)
    on_driver = _decisions(*deduplicate(spark, images, previous, DedupConfig(**cfg)))
    distributed = _decisions(*deduplicate(spark, images, previous, DedupConfig(**cfg, driver_max_rows=0)))
    assert on_driver == distributed
    assert {k for _, _, k, _, _ in on_driver[1]} == {"exact", "near"}


def test_near_pairs_expand_a_hot_bucket_in_bounded_steps(monkeypatch):
    """Many hashes sharing every band value (flat images): the pairs are found in steps of _PAIR_CHUNK, all of them."""
    monkeypatch.setattr(dedup_local, "_PAIR_CHUNK", 1000)
    h = np.zeros(300, dtype=np.int64)
    h[150:] = -1  # two buckets of 150 equal hashes
    i, j, d = dedup_local.near_pairs(h.view(np.uint64), np.ones(300, bool), 2)
    assert len(i) == 2 * 150 * 149 // 2 and not d.any()
