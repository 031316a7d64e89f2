"""pipelines.similarity: the pixel test of near-duplicate candidates, on small synthetic images."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines import similarity as sim


def smooth_image(rng: np.random.Generator, side: int = 32, channels: int = 3) -> np.ndarray:
    """A random image with structure at several scales (uint8, side x side x channels)."""
    from scipy.ndimage import gaussian_filter

    img = sum(gaussian_filter(rng.normal(size=(side, side, channels)), (s, s, 0)) * s for s in (1, 2, 4))
    img = (img - img.min()) / np.ptp(img) * 200 + 20
    return img.astype(np.uint8)


@pytest.mark.parametrize("side", [32, 64])
def test_identity_is_one(side):
    a = sim.signature(smooth_image(np.random.default_rng(0), side))
    assert sim.similarity(a, a) == pytest.approx(1.0, abs=1e-3)
    assert len(a) == sim.SIGNATURE_BYTES


def test_invariant_to_brightness_scaling():
    img = smooth_image(np.random.default_rng(1))
    darker = (img.astype(np.float64) * 0.8).round().astype(np.uint8)
    brighter = np.clip(img.astype(np.float64) + 30, 0, 255).astype(np.uint8)
    a = sim.signature(img)
    assert sim.similarity(a, sim.signature(darker)) > 0.999
    assert sim.similarity(a, sim.signature(brighter)) > 0.999


def test_symmetric():
    rng = np.random.default_rng(2)
    img = smooth_image(rng)
    other = np.clip(img.astype(np.int16) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    a, b = sim.signature(img), sim.signature(other)
    assert sim.similarity(a, b) == pytest.approx(sim.similarity(b, a), abs=1e-6)


def test_distinct_random_images_are_low():
    rng = np.random.default_rng(3)
    sigs = sim.signatures([smooth_image(rng) for _ in range(20)])
    scores = sim.similarities(sigs[:-1], sigs[1:])
    assert scores.max() < 0.6
    assert scores.max() < sim.DEFAULT_MIN_SIMILARITY


def test_one_and_three_channels_agree_on_grey_content():
    grey = smooth_image(np.random.default_rng(4), channels=1)
    as_rgb = np.repeat(grey, 3, axis=2)
    expected = sim.signature(grey)
    assert sim.signature(as_rgb) == expected          # same luma, bit for bit
    assert sim.signature(grey[..., 0]) == expected    # (H, W) and (H, W, 1) alike


def test_rgb_uses_pil_luma():
    from PIL import Image

    rgb = smooth_image(np.random.default_rng(5))
    luma = np.asarray(Image.fromarray(rgb).convert("L"))
    assert sim.signature(rgb) == sim.signature(luma)


def test_batch_equals_single():
    rng = np.random.default_rng(6)
    images = [smooth_image(rng, side) for side in (32, 64, 32, 48)]
    batch = sim.signatures(images)
    assert batch == [sim.signature(im) for im in images]
    scores = sim.similarities(batch[:-1], batch[1:])
    assert scores.shape == (3,)
    np.testing.assert_allclose(scores, [sim.similarity(a, b) for a, b in zip(batch[:-1], batch[1:])], atol=1e-6)
    assert sim.similarities([], []).shape == (0,)


def test_small_centre_crop_is_matched():
    """A 2% border crop resized back (a common re-publication edit) stays above the threshold."""
    from PIL import Image

    img = smooth_image(np.random.default_rng(7), 256)
    pil = Image.fromarray(img)
    cropped = pil.crop((5, 5, 251, 251)).resize((256, 256), Image.Resampling.LANCZOS)
    small = [np.asarray(p.resize((64, 64), Image.Resampling.LANCZOS)) for p in (pil, cropped)]
    a, b = sim.signatures(small)
    assert sim.similarity(a, b) >= sim.DEFAULT_MIN_SIMILARITY


def test_flat_image_matches_nothing():
    flat = np.full((32, 32, 3), 128, np.uint8)
    a = sim.signature(flat)
    assert sim.similarity(a, a) == 0.0
    assert sim.similarity(a, sim.signature(smooth_image(np.random.default_rng(8)))) == 0.0


def test_rejects_bad_input():
    with pytest.raises(TypeError):
        sim.signature(np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError):
        sim.signature(np.zeros((32, 32, 2), np.uint8))
    with pytest.raises(ValueError):
        sim.similarities([b"\x00" * 8], [b"\x00" * 8])


def test_corner_trimmed_ncc_equals_the_direct_masked_computation():
    from pipelines.similarity import _CORNERS, _corner_trimmed, _unpack, signatures

    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, size=(32, 32), dtype=np.uint8) for _ in range(6)]
    v = _unpack(signatures(imgs))[:, 0]
    a, b = v[:3], v[3:]
    want = []
    for x, y in zip(a, b):
        best = -1.0
        for mask in _CORNERS:
            xs, ys = x[~mask] - x[~mask].mean(), y[~mask] - y[~mask].mean()
            best = max(best, float(xs @ ys / np.linalg.norm(xs) / np.linalg.norm(ys)))
        want.append(best)
    np.testing.assert_allclose(_corner_trimmed(a, b), want, atol=1e-5)


def test_a_corner_mark_passes_the_same_change_in_the_middle_does_not():
    from pipelines.similarity import DEFAULT_MIN_SIMILARITY, signature, similarity

    rng = np.random.default_rng(4)
    y, x = np.mgrid[0:64, 0:64]
    base = (110 + 50 * np.sin(x / 5.0) * np.cos(y / 7.0) + rng.normal(0, 4, (64, 64))).clip(0, 255).astype(np.uint8)
    corner, middle = base.copy(), base.copy()
    corner[3:7, 40:60] = 255  # a white text-like bar 3 px from the top-right border
    middle[30:34, 22:42] = 255
    assert similarity(signature(base), signature(corner)) >= DEFAULT_MIN_SIMILARITY
    assert similarity(signature(base), signature(middle)) < DEFAULT_MIN_SIMILARITY


def test_views_by_matrix_products_equal_the_area_sum_definition():
    """_views computes each cell as two matrix products; the definition is one sum over (h, w) per cell."""
    import numpy as np

    from pipelines import similarity as S

    rng = np.random.default_rng(7)
    for h, w in ((64, 64), (32, 48), (8, 8)):
        grey = rng.integers(0, 256, (5, h, w)).astype(np.float64)
        got = S._views(grey)
        for v, crop in enumerate((0.0, *S.CROPS)):
            cells = np.einsum("ih,bhw,jw->bij", S._window(h, crop), grey, S._window(w, crop)).reshape(5, -1)
            cells -= cells.mean(axis=1, keepdims=True)
            want = cells / np.linalg.norm(cells, axis=1, keepdims=True)
            np.testing.assert_allclose(got[:, v], want, rtol=0, atol=1e-6)
            assert (got[:, v].astype(np.float16) == want.astype(np.float32).astype(np.float16)).mean() > 0.999
