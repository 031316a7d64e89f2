"""The pixel codec of the `pixels` column: the one definition both halves use.

A row's `pixels` holds one normalised image of `height x width x channels` uint8 values:
  raw  the HWC bytes as they are (the fast path: a reader views them without decoding)
  png  a PNG file of the same image (mode L for 1 channel, RGB for 3), smaller, costs a decode
"""
from __future__ import annotations

import enum
import io

import numpy as np

_PNG_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class PixelEncoding(str, enum.Enum):
    RAW = "raw"  # height * width * channels uint8 bytes, HWC order
    PNG = "png"  # a PNG file of the normalised image


def row_bytes(height: int, width: int, channels: int) -> int:
    """Bytes of one raw row."""
    return height * width * channels


def encode_pixels(pixels: np.ndarray, encoding: PixelEncoding | str) -> bytes:
    """uint8 (H, W, C) or (H, W) -> the `pixels` value."""
    encoding = PixelEncoding(encoding)
    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in _PNG_MODES:
        raise ValueError(f"expected uint8 pixels of shape (H, W, C) with C in {sorted(_PNG_MODES)}, got {arr.shape}")
    if encoding is PixelEncoding.RAW:
        return arr.tobytes()
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr, mode=_PNG_MODES[arr.shape[2]])
    img.save(buf, format="PNG", compress_level=1)  # fast setting: small images, decoded once per epoch
    return buf.getvalue()


def decode_pixels(data: bytes | memoryview, height: int, width: int, channels: int, encoding: PixelEncoding | str) -> np.ndarray:
    """The `pixels` value -> uint8 (H, W, C). Raw rows come back as a read-only view of `data`."""
    encoding = PixelEncoding(encoding)
    if encoding is PixelEncoding.RAW:
        arr = np.frombuffer(data, dtype=np.uint8)
        if arr.size != row_bytes(height, width, channels):
            raise ValueError(f"raw pixels hold {arr.size} bytes, expected height*width*channels = {height}*{width}*{channels}")
        return arr.reshape(height, width, channels)
    from PIL import Image

    mode = _PNG_MODES.get(channels)
    if mode is None:
        raise ValueError(f"png pixels: no PIL mode for {channels} channels (expected one of {sorted(_PNG_MODES)})")
    img = Image.open(io.BytesIO(data))
    if img.mode != mode or img.size != (width, height):
        raise ValueError(f"png pixels: expected mode {mode} {width}x{height}, found {img.mode} {img.size[0]}x{img.size[1]}")
    return np.asarray(img, dtype=np.uint8).reshape(height, width, channels)
