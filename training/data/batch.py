"""A batch of images (uint8, channels_last) and the decoding of a Parquet `pixels` column into one.

Raw rows (``pixel_encoding == "raw"``, the fast path) go from the Arrow binary column's buffers to one
``np.frombuffer`` over the data buffer, viewed as (rows, H*W*C) without a copy, after checking (on the offsets
buffer) that every row holds exactly H * W * C bytes; a batch is then one gather of whole rows into a new
(B, H, W, C) buffer, handed out as its (B, C, H, W) permuted view (``torch.channels_last``: what GPU convolutions
want, and no HWC -> CHW transpose, which cost as much as the Parquet read). No per-row Python loop. PNG rows are
decoded one by one with Pillow (the slow path; use raw for training).
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from schemas.pixels import PixelEncoding
from schemas.pixels import decode_pixels as decode_pixel_row


@dataclasses.dataclass
class Batch:
    # uint8 (B, C, H, W), channels_last-contiguous: a permuted view of a dense (B, H, W, C) buffer, i.e.
    # images.is_contiguous(memory_format=torch.channels_last). Rows are stored HWC, as Parquet holds them, so a batch
    # is one row gather with no transpose; this is the layout GPU convolutions want. Call .contiguous() for NCHW.
    images: torch.Tensor
    labels: torch.Tensor | None     # int64 (B,), label_index; None if the dataset has no labels; -1 for null labels
    ids: list[str] | None           # image_id per row when LoaderConfig.with_ids

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def slice(self, start: int, stop: int) -> Batch:
        return Batch(
            images=self.images[start:stop],
            labels=None if self.labels is None else self.labels[start:stop],
            ids=None if self.ids is None else self.ids[start:stop],
        )

    @staticmethod
    def cat(parts: Sequence[Batch]) -> Batch:
        if len(parts) == 1:
            return parts[0]
        return Batch(
            images=torch.cat([p.images for p in parts]),
            labels=None if parts[0].labels is None else torch.cat([p.labels for p in parts]),
            ids=None if parts[0].ids is None else [i for p in parts for i in p.ids],
        )


def decode_pixel_column(
    column: pa.Array | pa.ChunkedArray,
    *,
    height: int,
    width: int,
    channels: int,
    encoding: PixelEncoding | str,
    order: np.ndarray | None = None,
) -> torch.Tensor:
    """A binary `pixels` column of n rows -> new uint8 tensor (n, channels, height, width), channels_last-contiguous
    (a permuted view of a new dense (n, H, W, C) buffer, like `Batch.images`); with `order` (row indices), rows
    order[0], order[1], ... instead.

    raw (the fast path, no per-row Python work): per Arrow chunk, the offsets buffer is checked to be uniform (every
    row exactly height * width * channels bytes), one np.frombuffer over the data buffer is viewed as (n, H*W*C)
    without copying, and torch copies whole rows into the output (one memcpy-like copy per chunk, or one gather with
    `order`; no transpose). png: one Pillow decode per row (the slow path; prefer raw for training).
    """
    encoding = PixelEncoding(encoding)
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    views: list[np.ndarray] = []
    base = 0  # row index of the chunk's first row, for error messages
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        if chunk.null_count:
            raise ValueError(f"pixels column has {chunk.null_count} null rows near row {base}; the schema says non-null")
        if encoding is PixelEncoding.PNG:
            views.append(_png_rows(chunk, height, width, channels, base))
        else:
            views.append(_raw_rows(chunk, height, width, channels, base))
        base += len(chunk)
    row_bytes = height * width * channels
    if order is None:
        out = torch.empty((base, row_bytes), dtype=torch.uint8)
        pos = 0
        for rows in views:
            out[pos : pos + len(rows)].copy_(_as_tensor(rows.reshape(len(rows), row_bytes)))
            pos += len(rows)
    else:
        # Rows of one chunk are copied as they are; with several chunks, gather from their concatenation.
        src = views[0] if len(views) == 1 else np.concatenate(views) if views else np.empty((0, height * width, channels), np.uint8)
        out = _as_tensor(src.reshape(base, row_bytes)).index_select(0, torch.from_numpy(np.asarray(order, dtype=np.int64)))
    return out.view(out.shape[0], height, width, channels).permute(0, 3, 1, 2)


def _as_tensor(rows: np.ndarray) -> torch.Tensor:
    if rows.flags.writeable:
        return torch.from_numpy(rows)
    with warnings.catch_warnings():  # an immutable Arrow buffer: torch warns, but the tensor is only read from
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(rows)


def _raw_rows(chunk: pa.Array, height: int, width: int, channels: int, base: int) -> np.ndarray:
    """A binary Arrow array of raw HWC rows -> (n, H*W, C) uint8 numpy view of its data buffer (no copy)."""
    if pa.types.is_binary(chunk.type):
        offset_dtype = np.dtype(np.int32)
    elif pa.types.is_large_binary(chunk.type):
        offset_dtype = np.dtype(np.int64)
    else:
        raise TypeError(f"pixels column must be binary or large_binary, got {chunk.type}")
    n = len(chunk)
    row_bytes = height * width * channels
    _, offsets_buf, data_buf = chunk.buffers()
    # (n + 1,) offsets of this (possibly sliced) array into the data buffer, in bytes.
    offsets = np.frombuffer(offsets_buf, dtype=offset_dtype, count=n + 1, offset=chunk.offset * offset_dtype.itemsize)
    lengths = np.diff(offsets)
    bad = np.flatnonzero(lengths != row_bytes)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"raw pixels: expected {row_bytes} bytes per row (height {height} x width {width} x channels {channels}, "
            f"from the manifest), found {int(lengths[i])} bytes at row {base + i} ({bad.size} of {n} rows differ); "
            f"check the manifest's resolution/channels/pixel_encoding"
        )
    flat = np.frombuffer(data_buf, dtype=np.uint8, count=n * row_bytes, offset=int(offsets[0]))
    return flat.reshape(n, height * width, channels)


def _png_rows(chunk: pa.Array, height: int, width: int, channels: int, base: int) -> np.ndarray:
    """A binary Arrow array of PNG files -> (n, H*W, C) uint8, one decode per row (schemas/pixels.py)."""
    out = np.empty((len(chunk), height * width, channels), dtype=np.uint8)
    for i, value in enumerate(chunk):  # per-row decode: the documented slow path
        try:
            out[i] = decode_pixel_row(value.as_py(), height, width, channels, PixelEncoding.PNG).reshape(height * width, channels)
        except ValueError as exc:
            raise ValueError(f"{exc} (row {base + i})") from None
    return out


def _labels_from_arrow(column: pa.Array | pa.ChunkedArray) -> torch.Tensor:
    """label_index (nullable int) -> int64 (n,), null -> -1."""
    filled = pc.fill_null(column, -1)
    if isinstance(filled, pa.ChunkedArray):
        filled = filled.combine_chunks() if filled.num_chunks != 1 else filled.chunk(0)
    return torch.from_numpy(filled.to_numpy(zero_copy_only=False).astype(np.int64))
