"""Pixel similarity of two stored normalised images: the test a pHash candidate pair must pass.

Rule. Both images are reduced to grey (PIL's integer ITU-R 601 luma, so a 1-channel dataset and its
3-channel original give identical signatures), area-resampled to a GRID x GRID grid (32 x 32 cells) and
centred and scaled to unit norm; besides the whole image, the same is done for centre crops that cut
1% and 2% of the side from every border (CROPS). similarity(a, b) is the largest normalised
cross-correlation (NCC, -1..1, unitless) of a's whole grid with b's whole grid, of a's crops with b's
whole grid and of a's whole grid with b's crops: the crops align a picture with a copy of it that was
cropped a little at the borders and resized back (a zoom of 2-4%), which moves a textured photo's
plain NCC at 32 x 32 down to 0.59. A candidate pair is a near duplicate when similarity >=
DEFAULT_MIN_SIMILARITY. NCC ignores brightness and contrast (gain and offset of the grey levels).
A flat grid (centred norm < 1e-6 grey levels) gets a zero vector: similarity 0 with everything
(exact copies of it are still caught by the sha256 / pixels_sha256 groups of pipelines/dedup/candidates.py).

Why (bench/dedup_quality.py; tune: MNIST train digits seed 0 + even photo families; held-out: MNIST
test and scikit-learn digits seed 1 + odd photo families; greedy keep rule, pairwise P / R / lost):
* Distinct handwritten digits within the pHash radius reach NCC 0.992 (32 x 32), planted duplicates
  (byte copy, 2x upscale, JPEG, 10% darker, RGB + blur 0.5) stay >= 0.986: digits need ~0.98.
  At 0.98, resolution 64: MNIST train P 0.9932 / R 1.0 / lost 0.30%, MNIST test 0.9958 / 1.0 / 0.35%
  (the old 256-bit pHash rule lost 8-9%). scikit-learn's 8x8 digits (upscaled, ~14 effective DCT
  coefficients) need 0.99 (at 0.98: P 0.944, lost 3.5%).
* Distinct photos within pHash 24 never exceed NCC 0.56, but variants of textured photos (gravel,
  cell microscopy, brick) stored at 32 px fall to 0.82-0.89 (JPEG files are decoded with DCT scaling,
  PNG files at full size, and the two low-pass filters differ at the 32-px Nyquist band), and a corner
  watermark on a dark photo to 0.93. Photos alone would take 0.85; no single NCC threshold serves both
  kinds at 32 px, and at 64 px held-out photos reach recall 0.946 at 0.98 (0.990 at 0.90).
The default favours precision on low-entropy data (merging distinct images loses training data);
DEFAULT_MIN_SIMILARITY can be lowered per dataset (PreprocessConfig.min_similarity) for photo-only data.

Cost: SIGNATURE_BYTES = 3 x 1024 float16 = 6,144 bytes per image; ~20 us per pair in numpy batches
of 4,096 (three 1024-long dot products and two more per extra crop).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipelines.decode import to_grey

GRID = 32                   # side of the grey grid the images are compared on, cells
CROPS = (0.01, 0.02)        # centre crops (fraction of the side cut from EACH border) compared besides the whole image
DEFAULT_MIN_SIMILARITY = 0.98  # NCC, see the module docstring
DEFAULT_NEAR_DISTANCE = 12     # pHash (64-bit) candidate radius D, bits: true photo pairs reach 12-22 bits (crops)

_VIEWS = 1 + len(CROPS)     # vectors per signature: the whole image, then one per crop
_DIM = GRID * GRID
SIGNATURE_BYTES = _VIEWS * _DIM * 2  # float16
SIGNATURE_SHAPE = (_VIEWS, _DIM)     # a signature's float16 values, as `unpack` shapes them
_FLAT = 1e-6                # a grid whose centred norm is below this (grey levels) is flat: zero vector

# A corner watermark: the largest corner rectangle (cells of the whole grid) whose pixels a pair may
# disagree on. Stock marks span 20-25% of the width and ~4% of the height, 3% from the border: 12 x 8
# cells (37.5% x 25%) hold them with room. NCC over the rest must be CORNER_MARGIN above the threshold.
CORNER_CELLS = (8, 12)      # (rows, columns)
CORNER_MARGIN = 0.01


def _grey(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) -> float64 (H, W) grey levels 0..255."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = to_grey(arr)[..., 0]  # PIL's luma, so 1- and 3-channel copies of a picture agree bit for bit
    if arr.ndim != 2:
        raise ValueError(f"expected pixels of shape (H, W), (H, W, 1) or (H, W, 3), got {np.asarray(pixels).shape}")
    return arr.astype(np.float64)


def _window(n: int, crop: float) -> np.ndarray:
    """(GRID, n) area-averaging matrix: cell i is the mean of the source pixels covering the i-th of GRID
    equal slices of [crop * n, n - crop * n] (fractional pixel overlaps weighted by their length)."""
    lo, hi = crop * n, n - crop * n
    edges = lo + (hi - lo) * np.arange(GRID + 1) / GRID
    left, right = edges[:-1, None], edges[1:, None]
    j = np.arange(n)[None, :]
    m = np.clip(np.minimum(right, j + 1) - np.maximum(left, j), 0.0, None)
    return m / m.sum(axis=1, keepdims=True)


def _views(grey: np.ndarray) -> np.ndarray:
    """(B, H, W) grey -> (B, _VIEWS, _DIM) zero-mean unit-norm float32 vectors."""
    _, h, w = grey.shape
    out = []
    for crop in (0.0, *CROPS):
        # two matrix products, (GRID, H) @ (B, H, W) @ (W, GRID): ~200k multiply-adds an image where the
        # three-operand einsum summed over (i, j, h, w) at once (12M, 17 ms an image at 64 px)
        g = _window(h, crop) @ grey @ _window(w, crop).T
        g = g.reshape(len(g), -1)
        g = g - g.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(g, axis=1, keepdims=True)
        out.append(np.where(norm > _FLAT, g / np.maximum(norm, _FLAT), 0.0))
    return np.stack(out, axis=1).astype(np.float32)


def signatures(images: Sequence[np.ndarray]) -> list[bytes]:
    """Batch `signature`: images of one shape are resampled together."""
    out: list[bytes | None] = [None] * len(images)
    by_shape: dict[tuple[int, int], list[int]] = {}
    greys = [_grey(im) for im in images]
    for i, g in enumerate(greys):
        by_shape.setdefault(g.shape, []).append(i)
    for idx in by_shape.values():
        views = _views(np.stack([greys[i] for i in idx])).astype(np.float16)
        for i, v in zip(idx, views):
            out[i] = v.tobytes()
    return out  # type: ignore[return-value]


def signature(pixels: np.ndarray) -> bytes:
    """The per-image feature the pixel test compares: SIGNATURE_BYTES bytes (float16)."""
    return signatures([pixels])[0]


def _unpack(sigs: Sequence[bytes]) -> np.ndarray:
    raw = np.frombuffer(b"".join(sigs), dtype=np.float16)
    if raw.size != len(sigs) * _VIEWS * _DIM:
        raise ValueError(f"expected signatures of {SIGNATURE_BYTES} bytes, got {sorted({len(s) for s in sigs})}")
    return raw.reshape(len(sigs), _VIEWS, _DIM).astype(np.float32)


def similarities(a: Sequence[bytes], b: Sequence[bytes]) -> np.ndarray:
    """(P,) float32 similarity of each pair (a[i], b[i]), vectorised."""
    if len(a) != len(b):
        raise ValueError(f"a and b must pair up, got {len(a)} and {len(b)} signatures")
    if not len(a):
        return np.zeros(0, np.float32)
    return similarities_unpacked(_unpack(a), _unpack(b))


def unpack(sigs: Sequence[bytes]) -> np.ndarray:
    """Signatures -> (N, _VIEWS, _DIM) float32, for callers that score one image against many (similarities_unpacked)."""
    return _unpack(sigs)


def similarities_unpacked(va: np.ndarray, vb: np.ndarray) -> np.ndarray:
    """`similarities` on unpacked signatures (N, _VIEWS, _DIM); va may be (1, ...) against any number of vb."""
    va = np.broadcast_to(va, vb.shape) if len(va) == 1 else va
    whole = np.einsum("pd,pd->p", va[:, 0], vb[:, 0])
    a_crop = np.einsum("pkd,pd->pk", va[:, 1:], vb[:, 0])  # a zoomed in, against all of b
    b_crop = np.einsum("pd,pkd->pk", va[:, 0], vb[:, 1:])
    best = np.maximum(whole, np.maximum(a_crop.max(axis=1, initial=-1.0), b_crop.max(axis=1, initial=-1.0)))
    best = np.maximum(best, _corner_trimmed(va[:, 0], vb[:, 0]) - CORNER_MARGIN)
    return np.clip(best, -1.0, 1.0).astype(np.float32)


def _corner_masks() -> np.ndarray:
    """(4, _DIM) bool: the cells of each CORNER_CELLS rectangle (top-left, top-right, bottom-left, bottom-right)."""
    rows, cols = CORNER_CELLS
    masks = np.zeros((4, GRID, GRID), bool)
    for k, (top, left) in enumerate([(0, 0), (0, GRID - cols), (GRID - rows, 0), (GRID - rows, GRID - cols)]):
        masks[k, top:top + rows, left:left + cols] = True
    return masks.reshape(4, _DIM)


_CORNERS = _corner_masks()


def _corner_trimmed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(P, _DIM) zero-mean unit-norm grids -> (P,) the largest NCC over the cells outside one corner rectangle.

    From the totals (sum 0, sum of squares 1, sum of products = the whole NCC) minus the corner's own sums,
    so each corner costs five dot products over its 96 cells, not a re-normalisation of 928."""
    n = float(_DIM - _CORNERS[0].sum())  # cells left
    best = np.full(len(a), -1.0, np.float32)
    whole = np.einsum("pd,pd->p", a, b)
    for mask in _CORNERS:
        ca, cb = a[:, mask], b[:, mask]
        sa, sb = -ca.sum(1), -cb.sum(1)                 # sums over the rest (the totals are 0)
        saa, sbb = 1.0 - (ca * ca).sum(1), 1.0 - (cb * cb).sum(1)
        sab = whole - (ca * cb).sum(1)
        cov = sab - sa * sb / n
        var = np.maximum(saa - sa * sa / n, 0.0) * np.maximum(sbb - sb * sb / n, 0.0)
        ncc = np.where(var > 1e-12, cov / np.sqrt(np.maximum(var, 1e-24)), 0.0)
        best = np.maximum(best, ncc.astype(np.float32))
    return best


def similarity(a: bytes, b: bytes) -> float:
    """Similarity of two signatures, -1..1 (1 = the same grey image up to brightness and contrast)."""
    return float(similarities([a], [b])[0])
