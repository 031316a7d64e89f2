"""The batched pHash equals imagehash.phash bit for bit."""
from __future__ import annotations

import imagehash
import numpy as np
import pytest
from PIL import Image

from pipelines.phash import canonical_gray, hamming, hex_to_int64, int64_to_hex, phash_batch, phash_image
from tests.pipelines.imagefactory import photo_like


def _reference(image: Image.Image) -> int:
    return hex_to_int64(str(imagehash.phash(image)))


def _many_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    images = []
    for i in range(160):  # photo-like, many sizes and aspect ratios (the LANCZOS path varies)
        images.append(photo_like(int(rng.integers(20, 90)), int(rng.integers(20, 90)), seed=i))
    for i in range(60):  # noise
        images.append(Image.fromarray(rng.integers(0, 256, (int(rng.integers(8, 64)), 40, 3), dtype=np.uint8), "RGB"))
    for v in (0, 1, 127, 255):  # constant images: every DCT coefficient but DC is 0, ties at the median
        images.append(Image.new("RGB", (50, 50), (v, v, v)))
    for i in range(30):  # few grey levels: many equal coefficients, ties at the median
        arr = (rng.integers(0, 2, (4, 4)) * 255).astype(np.uint8)
        images.append(Image.fromarray(np.kron(arr, np.ones((8, 8), np.uint8)), "L"))
    images.append(Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1)), "L"))  # exact 32x32 ramp
    images.append(Image.fromarray(((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8), "L"))  # checkerboard
    return images


def test_phash_equals_imagehash_bit_for_bit_on_many_images():
    images = _many_images()
    expected = np.array([_reference(im) for im in images], dtype=np.int64)
    batched = phash_batch(np.stack([canonical_gray(im) for im in images]))
    assert len(images) > 250
    mismatches = [(i, int64_to_hex(int(a)), int64_to_hex(int(b))) for i, (a, b) in enumerate(zip(batched, expected)) if a != b]
    assert not mismatches, f"{len(mismatches)} pHashes differ from imagehash: {mismatches[:5]}"
    # hashes really differ between images (not a constant)
    assert len(set(expected.tolist())) > 200


def test_single_image_path_and_hex_round_trip():
    im = photo_like(70, 50, seed=3)
    value = phash_image(im)
    ref = imagehash.phash(im)
    assert value == hex_to_int64(str(ref))
    assert imagehash.hex_to_hash(int64_to_hex(value)) == ref


def test_sign_bit_is_the_first_hash_bit():
    # imagehash's first (row-major) bit is the most significant: set -> negative int64
    bits = np.zeros((8, 8), bool)
    bits[0, 0] = True
    h = imagehash.ImageHash(bits)
    assert hex_to_int64(str(h)) == -(1 << 63)
    bits = np.zeros((8, 8), bool)
    bits[7, 7] = True
    assert hex_to_int64(str(imagehash.ImageHash(bits))) == 1


def test_hamming_matches_imagehash_distance():
    a, b = photo_like(64, 64, seed=1), photo_like(64, 64, seed=2)
    ha, hb = imagehash.phash(a), imagehash.phash(b)
    assert int(hamming(phash_image(a), phash_image(b))[0]) == ha - hb


def test_wrong_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(B, 32, 32\)"):
        phash_batch(np.zeros((2, 16, 16), np.uint8))


def test_canonical_grays_whole_is_imagehash_input_and_zoom_is_the_centre_crop():
    from pipelines.phash import ZOOMS, canonical_grays

    for i, im in enumerate(_many_images()[:40]):
        whole, zooms = canonical_grays(im)
        assert np.array_equal(whole, canonical_gray(im)), i
        w, h = im.size
        assert zooms.shape == (len(ZOOMS), 32, 32)
        for z, zoom in zip(ZOOMS, zooms):
            box = (z * w, z * h, w - z * w, h - z * h)
            assert np.array_equal(zoom, np.asarray(im.convert("L").resize((32, 32), Image.Resampling.LANCZOS, box=box))), (i, z)


def test_a_mask_view_ignores_what_changes_inside_its_region_and_only_that():
    """An overlay inside one mask region leaves that view's hash exactly as it was (the fill is the mean of the
    rest, which the overlay does not touch); the whole pHash moves."""
    from pipelines.phash import _MASKS, VIEWS, ZOOMS, canonical_grays, view_hashes

    rng = np.random.default_rng(1)
    moved = 0
    for seed in range(20):
        base = photo_like(96, 96, seed=100 + seed)
        whole, zoom = canonical_grays(base)
        for k, name in enumerate(VIEWS[len(ZOOMS):], start=len(ZOOMS)):
            top, left, bottom, right = _MASKS[name]
            covered = whole.copy()
            covered[top + 2:bottom - 2, left + 2:right - 2] = rng.integers(0, 256, (bottom - top - 4, right - left - 4))
            before, after = view_hashes(np.stack([whole, covered]), np.stack([zoom, zoom]))
            assert before[k] == after[k], (seed, name)
            others = [j for j in range(len(ZOOMS), len(VIEWS)) if j != k]
            assert any(before[j] != after[j] for j in others), (seed, name)  # the other views see the overlay
            plain = phash_batch(np.stack([whole, covered]))
            moved += int(plain[0] != plain[1])
    assert moved >= 90  # the whole hash almost always moves: the views are what catches an overlaid copy
