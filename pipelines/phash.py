"""pHash (imagehash's algorithm, hash_size 8), batched over many images.

imagehash.phash(image) does, per image:
    small = image.convert("L").resize((32, 32), LANCZOS)
    dct   = scipy.fftpack.dct(scipy.fftpack.dct(small, axis=0), axis=1)
    low   = dct[:8, :8];  bits = low > median(low)
and `str(hash)` / int(str(hash), 16) reads the 64 bits row-major, the first bit most significant.

Here the resize stays per image (`canonical_gray`, PIL in C) and the DCT + median + bit packing
run once per batch on a (B, 32, 32) array with the same scipy.fftpack routine and the same
numpy median, so the result is bit-for-bit imagehash's (tests/pipelines/test_phash.py checks it
on hundreds of images, constant images and median ties included).
"""
from __future__ import annotations

import numpy as np
import scipy.fftpack
from PIL import Image

HASH_SIZE = 8
HIGHFREQ_FACTOR = 4
SMALL = HASH_SIZE * HIGHFREQ_FACTOR  # 32: side of the canonical grey image

# Row-major bit weights: bit (0, 0) is the most significant of 64, as in imagehash's hex string.
_WEIGHTS = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)).reshape(HASH_SIZE, HASH_SIZE)


def canonical_gray(image: Image.Image) -> np.ndarray:
    """The (32, 32) uint8 grey image pHash is computed on: convert("L") then LANCZOS, as imagehash does."""
    return np.asarray(image.convert("L").resize((SMALL, SMALL), Image.Resampling.LANCZOS))


# ----------------------------------------------------------------------------- view hashes (issue 11/14)
# One 64-bit pHash moves 14-22 bits when 5% of a photo's side is cropped away or 5% of its area is covered by a
# logo (docs/dedup.md), past any radius digits can afford. Each image therefore also gets the pHashes of views
# of itself, each to be compared only with its counterpart on the other image (the candidate step does not search
# them yet; docs/dedup.md, "Crops and overlays", measures them):
#   zoom_*    the centre crops that cut each of ZOOMS of the side from every border, resized to 32 x 32: compared
#             with the other image's whole pHash, one of them meets a copy cropped by 2-5% a side within a few bits;
#   mask_*    the whole canonical grey with one region (a corner's MASK_CELLS square, or the centre) filled with the
#             mean of the rest: an overlay inside that region leaves the hash of the rest unchanged.
ZOOMS = (0.025, 0.045)  # fractions of the side cut from each border by the zoom views (crops of 2-5%: <= 1% off)
VIEWS = (*(f"zoom_{z:g}" for z in ZOOMS), "mask_tl", "mask_tr", "mask_bl", "mask_br", "mask_c")
MASK_CELLS = 14    # side of a corner mask, cells of the 32 x 32 grey (44%: an overlay of 5% of the area, 2-4% in)
_MASKS = {"mask_tl": (0, 0, MASK_CELLS, MASK_CELLS), "mask_tr": (0, SMALL - MASK_CELLS, MASK_CELLS, SMALL),
          "mask_bl": (SMALL - MASK_CELLS, 0, SMALL, MASK_CELLS), "mask_br": (SMALL - MASK_CELLS, SMALL - MASK_CELLS, SMALL, SMALL),
          "mask_c": (9, 9, 23, 23)}  # (top, left, bottom, right); the centre square is 44% of the side too


def canonical_grays(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(whole, zooms): `canonical_gray(image)` (bit for bit imagehash's), (32, 32) uint8, and the ZOOMS centre
    crops, (len(ZOOMS), 32, 32) uint8, from one conversion to grey."""
    grey = image.convert("L")
    w, h = grey.size
    zooms = [grey.resize((SMALL, SMALL), Image.Resampling.LANCZOS, box=(z * w, z * h, w - z * w, h - z * h)) for z in ZOOMS]
    return np.asarray(grey.resize((SMALL, SMALL), Image.Resampling.LANCZOS)), np.stack([np.asarray(z) for z in zooms])


def view_grays(wholes: np.ndarray, zooms: np.ndarray) -> np.ndarray:
    """(B, 32, 32) whole and (B, len(ZOOMS), 32, 32) zoom greys -> (B, len(VIEWS), 32, 32) uint8, in VIEWS order."""
    out = np.empty((len(wholes), len(VIEWS), SMALL, SMALL), np.uint8)
    out[:, :len(ZOOMS)] = zooms
    flat = wholes.astype(np.float64)
    for k, name in enumerate(VIEWS[len(ZOOMS):], start=len(ZOOMS)):
        top, left, bottom, right = _MASKS[name]
        keep = np.ones((SMALL, SMALL), bool)
        keep[top:bottom, left:right] = False
        fill = np.rint(flat[:, keep].mean(axis=1)).astype(np.uint8)
        out[:, k] = wholes
        out[:, k, top:bottom, left:right] = fill[:, None, None]
    return out


def view_hashes(wholes: np.ndarray, zooms: np.ndarray) -> np.ndarray:
    """(B, 32, 32) whole and (B, len(ZOOMS), 32, 32) zoom greys -> (B, len(VIEWS)) int64 pHashes, in VIEWS order."""
    if len(wholes) == 0:
        return np.zeros((0, len(VIEWS)), np.int64)
    views = view_grays(wholes, zooms)
    return phash_batch(views.reshape(-1, SMALL, SMALL)).reshape(len(wholes), len(VIEWS))


def phash_bits(grays: np.ndarray) -> np.ndarray:
    """(B, 32, 32) grey images -> (B, 8, 8) bool pHash bits."""
    if grays.ndim != 3 or grays.shape[1:] != (SMALL, SMALL):
        raise ValueError(f"expected grey images of shape (B, {SMALL}, {SMALL}), got {grays.shape}")
    # imagehash hands scipy a uint8 array; fftpack converts to float64 the same way for a batch.
    dct = scipy.fftpack.dct(scipy.fftpack.dct(grays, axis=1), axis=2)
    low = dct[:, :HASH_SIZE, :HASH_SIZE]
    med = np.median(low.reshape(len(low), -1), axis=1)
    return low > med[:, None, None]


def bits_to_int64(bits: np.ndarray) -> np.ndarray:
    """(B, 8, 8) bool -> (B,) int64: the unsigned 64-bit value of imagehash's hex string, two's complement."""
    unsigned = (bits.astype(np.uint64) * _WEIGHTS).sum(axis=(1, 2), dtype=np.uint64)
    return unsigned.view(np.int64)


def phash_batch(grays: np.ndarray) -> np.ndarray:
    """(B, 32, 32) uint8 canonical grey images -> (B,) int64 pHashes."""
    if len(grays) == 0:
        return np.zeros(0, dtype=np.int64)
    return bits_to_int64(phash_bits(grays))


def phash_image(image: Image.Image) -> int:
    """One PIL image -> its pHash as a signed int64 (a batch of one)."""
    return int(phash_batch(canonical_gray(image)[None])[0])


def hex_to_int64(hex_string: str) -> int:
    """imagehash's str(hash) (16 hex digits) -> the signed int64 stored in Parquet."""
    value = int(hex_string, 16)
    return value - (1 << 64) if value >= (1 << 63) else value


def int64_to_hex(value: int) -> str:
    """The stored signed int64 -> imagehash's 16-hex-digit string (imagehash.hex_to_hash reads it)."""
    return f"{value & ((1 << 64) - 1):016x}"


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bitwise Hamming distance of int64 pHashes (broadcasts)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)).view(np.uint64)
    # popcount via bytes: (…, 8) uint8 -> unpackbits -> sum
    return np.unpackbits(np.atleast_1d(x).view(np.uint8).reshape(*np.atleast_1d(x).shape, 8), axis=-1).sum(axis=-1)
