"""The photo corpus's crop and overlay variants are what their names promise (issue 11/14)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from jobs.dedup_corpora import MAX_OVERLAY_AREA, OVERLAY_VARIANTS, PHOTO_VARIANTS, photo_variant
from tests.pipelines.imagefactory import photo_like


def _decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).astype(np.int16)


def test_overlays_cover_at_most_five_percent_and_crops_cut_two_to_five_percent():
    base = photo_like(300, 240, seed=3)
    orig = np.asarray(base).astype(np.int16)
    for seed in range(8):
        rng = np.random.default_rng(seed)
        for kind in OVERLAY_VARIANTS:
            changed = np.abs(_decode(photo_variant(base, kind, rng)[1]) - orig).max(axis=2) > 0
            assert 0 < changed.mean() <= MAX_OVERLAY_AREA + 0.005, (kind, seed, changed.mean())
        w, h = Image.open(io.BytesIO(photo_variant(base, "crop_mixed", rng)[1])).size
        assert 0.90 * 300 <= w <= 0.96 * 300 + 1 and 0.90 * 240 <= h <= 0.96 * 240 + 1
    assert {"crop_3pct", "crop_5pct", "crop_4pct_kept", "crop_mixed", "logo_corner", "logo_centre", "text_centre"} <= set(PHOTO_VARIANTS)
