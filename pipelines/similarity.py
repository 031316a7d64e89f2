"""Pixel similarity of two stored normalised images: the test a pHash candidate pair must pass.

Placeholder header, rewritten with the measured numbers below.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GRID = 32                   # side of the grey grid the images are compared on, cells
CROPS = (0.01, 0.02)        # centre crops (fraction of the side cut from EACH border) compared besides the whole image
BLUR_SIGMA = 0.0            # Gaussian blur of the grid before normalising, cells (0 = none)
DEFAULT_MIN_SIMILARITY = 0.95
DEFAULT_NEAR_DISTANCE = 12

_VIEWS = 1 + len(CROPS)     # vectors per signature: the whole image, then one per crop
_DIM = GRID * GRID
SIGNATURE_BYTES = _VIEWS * _DIM * 2  # float16
_FLAT = 1e-6                # a grid whose centred norm is below this (grey levels) is flat: zero vector

# ITU-R 601-2 luma in PIL's fixed point (what convert("L") and pipelines.decode.to_grey compute), so a
# 3-channel image and its 1-channel grey version give the same grey values, bit for bit.
_LUMA = np.array([19595, 38470, 7471], dtype=np.uint32)


def _grey(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) -> float64 (H, W) grey levels 0..255."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = ((arr.astype(np.uint32) @ _LUMA + 0x8000) >> 16)
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
        g = np.einsum("ih,bhw,jw->bij", _window(h, crop), grey, _window(w, crop))
        if BLUR_SIGMA > 0:
            from scipy.ndimage import gaussian_filter

            g = gaussian_filter(g, (0, BLUR_SIGMA, BLUR_SIGMA), mode="nearest")
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
    va, vb = _unpack(a), _unpack(b)
    whole = np.einsum("pd,pd->p", va[:, 0], vb[:, 0])
    a_crop = np.einsum("pkd,pd->pk", va[:, 1:], vb[:, 0])  # a zoomed in, against all of b
    b_crop = np.einsum("pd,pkd->pk", va[:, 0], vb[:, 1:])
    best = np.maximum(whole, np.maximum(a_crop.max(axis=1, initial=-1.0), b_crop.max(axis=1, initial=-1.0)))
    return np.clip(best, -1.0, 1.0).astype(np.float32)


def similarity(a: bytes, b: bytes) -> float:
    """Similarity of two signatures, -1..1 (1 = the same grey image up to brightness and contrast)."""
    return float(similarities([a], [b])[0])
