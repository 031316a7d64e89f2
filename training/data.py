"""Training data readers: a preprocessed dataset (schemas/ layout) -> per-rank batches of uint8 tensors.

Two readers behind one interface (`open_loader(LoaderConfig) -> Loader`):

* ``ReaderKind.ARROW`` (default, the fast path): a native pyarrow reader.
  - Metadata only, at open: every (file, row_group, num_rows) of OUT/images, files sorted by path.
  - Per epoch, all ranks compute the same plan from (seed, epoch) alone, with no communication:
    row groups are permuted with ``np.random.default_rng((seed, epoch))`` and laid end to end as one
    virtual sequence of N rows; rank r takes rows ``[r * (N // W), r * (N // W) + steps * B)``.
    A row group straddling a boundary is read by both neighbours, each keeping its own slice, so
    shares are disjoint and *equal to the row*.
  - steps_per_epoch = (N // W) // B on every rank and in every epoch. Rows dropped per epoch:
    N - W * steps * B <= (W - 1) + W * (B - 1) < W * B (which rows are dropped changes with the epoch
    when shuffle=True).
  - Within a rank, rows are shuffled inside a window of ``shuffle_window`` consecutive pieces (a
    shuffle buffer) with ``np.random.default_rng((seed, epoch, rank, window))``: the rank's stream is
    the windows one after another, each in its shuffled order, and batch j is stream rows
    [j * B, (j + 1) * B) (inside a batch, rows are grouped by row group; the shuffle decides which
    rows share a batch). One background thread reads row groups, decodes and gathers batches,
    ``prefetch`` batches ahead, so I/O + decode overlap compute (pyarrow, numpy and torch release
    the GIL).
  - Deterministic given (seed, epoch, rank, world_size); ``epoch(e, start_step=k)`` starts reading
    at the window holding stream row k * B and yields exactly the tail of ``epoch(e)``.

* ``ReaderKind.PETASTORM``: ``petastorm.make_batch_reader(cur_shard=rank, shard_count=world_size)``.
  - petastorm shards by *row group*: row group i of ``petastorm.etl.dataset_metadata.load_row_groups``
    (files in path order, row groups in file order) belongs to shard ``i % shard_count``; its seed only
    shuffles the order, never the membership. We call the same petastorm functions on the metadata
    to get each rank's row count R_r, and steps_per_epoch = min_r R_r // B, so every rank does the same
    number of steps. Shares are disjoint but uneven: each rank drops R_r - steps * B rows, which can
    be up to about one row group per rank (more than the arrow reader's < W * B in total).
  - Per epoch a new reader with ``seed=seed + epoch`` (row-group order and in-row-group row shuffle by
    petastorm). With ``petastorm_workers=1`` (default) results arrive in ventilation order, so epochs
    are deterministic and resume (which skips start_step * B rows) is exact. With more workers the
    order depends on thread timing, and so does which of the rank's rows are the dropped
    R_r - steps * B (the rank's rows themselves do not change); resume is then not exact.
  - petastorm's row-group-sized batches are re-batched into exact ``batch_size`` batches.

Pixels: raw rows (``pixel_encoding == "raw"``, the fast path) go from the Arrow binary column's
buffers to one ``np.frombuffer`` over the data buffer, viewed as (rows, H*W*C) without a copy, after
checking (on the offsets buffer) that every row holds exactly H * W * C bytes; a batch is then one
gather of whole rows into a new (B, H, W, C) buffer, handed out as its (B, C, H, W) permuted view
(``torch.channels_last`` memory format: what GPU convolutions want, and no HWC -> CHW transpose, which
cost as much as the Parquet read). No per-row Python loop. PNG rows are decoded one by one with Pillow
(the slow path; use raw for training).

Normalisation happens in exactly one place: ``to_model_input`` (and its inverse ``from_model_output``).
Batches stay uint8 so host->device copies move 4x fewer bytes.

This module never imports ``pipelines`` or pyspark.
"""
from __future__ import annotations

import abc
import dataclasses
import os
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from schemas import SCHEMA_VERSION, DatasetLayout, Manifest
from schemas.pixels import PixelEncoding
from schemas.pixels import decode_pixels as decode_pixel_row
from schemas.uri import uri_to_path
from training.config import ReaderKind  # defined with the rest of the configuration

__all__ = [
    "Batch",
    "Loader",
    "LoaderConfig",
    "PixelEncoding",
    "ReaderKind",
    "decode_pixel_column",
    "from_model_output",
    "open_loader",
    "to_model_input",
]




@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    data: str                           # dataset root (OUT), local path or file:// URI
    reader: ReaderKind = ReaderKind.ARROW
    batch_size: int = 64                # per rank
    rank: int = 0                       # passed in explicitly by the caller; the loader never reads env vars
    world_size: int = 1
    seed: int = 0
    shuffle: bool = True
    with_ids: bool = False              # also return image_id strings per batch
    # arrow reader: rows are shuffled within windows of this many consecutive row-group pieces
    # (memory: about 2 windows of shuffle_window * rows per row group * H*W*C bytes at a time).
    shuffle_window: int = 4
    prefetch: int = 4                   # batches made ahead by a background thread (arrow); petastorm's results queue
    petastorm_workers: int = 1          # petastorm reader threads; 1 keeps epochs deterministic (see module doc)
    # Batches in page-locked host memory (CUDA hosts only), so batch.images.to("cuda", non_blocking=True) overlaps.
    pin_memory: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "reader", ReaderKind(self.reader))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.pin_memory and not torch.cuda.is_available():
            raise ValueError("pin_memory=True needs CUDA, but torch.cuda.is_available() is False on this host")
        if self.shuffle_window < 1 or self.prefetch < 1 or self.petastorm_workers < 1:
            raise ValueError(
                f"shuffle_window, prefetch and petastorm_workers must be >= 1, got "
                f"{self.shuffle_window}, {self.prefetch}, {self.petastorm_workers}"
            )


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


# ----------------------------------------------------------------------------- normalisation


def to_model_input(
    images: torch.Tensor, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """THE one place normalisation happens. uint8 (B, C, H, W) on any device -> float32 on that device, in the same
    memory format (a channels_last batch from the loaders stays channels_last).

    Without mean/std: x / 127.5 - 1, so 0 -> -1.0 and 255 -> +1.0 (what a tanh generator produces).
    With mean and std (per channel, of pixels scaled to [0, 1], e.g. the manifest's pixel_mean /
    pixel_std): (x / 255 - mean[c]) / std[c].
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images of shape (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
    x = images.to(torch.float32)
    if mean is None and std is None:
        return x.div_(127.5).sub_(1.0)
    m, s = _channel_stats(mean, std, images.shape[1], images.device)
    return x.div_(255.0).sub_(m).div_(s)


def from_model_output(
    x: torch.Tensor, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """Inverse of `to_model_input`: float (B, C, H, W) -> uint8 (B, C, H, W), rounded and clamped to 0..255."""
    if x.dim() != 4:
        raise ValueError(f"expected (B, C, H, W), got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float32)
    if mean is None and std is None:
        y = (x + 1.0) * 127.5
    else:
        m, s = _channel_stats(mean, std, x.shape[1], x.device)
        y = (x * s + m) * 255.0
    return y.round_().clamp_(0, 255).to(torch.uint8)


def _channel_stats(mean, std, channels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    if mean is None or std is None:
        raise ValueError(f"give both mean and std or neither, got mean={mean!r} std={std!r}")
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(-1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(-1)
    if m.numel() != channels or s.numel() != channels:
        raise ValueError(f"mean/std need one value per channel ({channels}), got {m.numel()} and {s.numel()}")
    if bool((s <= 0).any()):
        raise ValueError(f"std must be > 0 per channel, got {s.tolist()}")
    return m.view(1, -1, 1, 1), s.view(1, -1, 1, 1)


# ----------------------------------------------------------------------------- pixels


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


# ----------------------------------------------------------------------------- dataset metadata


@dataclasses.dataclass(frozen=True)
class RowGroup:
    path: str        # local path of the Parquet file
    index: int       # row group index within the file
    num_rows: int


@dataclasses.dataclass(frozen=True)
class _Piece:
    """Rows [start, stop) of one row group."""

    group: RowGroup
    start: int
    stop: int

    @property
    def num_rows(self) -> int:
        return self.stop - self.start


_REQUIRED_TYPES = {
    "image_id": (pa.types.is_string, pa.types.is_large_string),
    "pixels": (pa.types.is_binary, pa.types.is_large_binary),
    "label_index": (pa.types.is_integer,),
}


def _check_file_schema(path: str, schema: pa.Schema) -> None:
    meta = schema.metadata or {}
    version = meta.get(b"imagegen.schema_version")
    if version is not None and version.decode() != str(SCHEMA_VERSION):
        raise ValueError(f"{path}: images schema version {version.decode()}, this code reads {SCHEMA_VERSION}")
    for name, checks in _REQUIRED_TYPES.items():
        idx = schema.get_field_index(name)
        if idx < 0:
            raise ValueError(f"{path}: expected column {name!r} of the images schema, found columns {schema.names}")
        typ = schema.field(idx).type
        if not any(check(typ) for check in checks):
            raise ValueError(f"{path}: column {name!r} has type {typ}, expected {'/'.join(c.__name__[3:] for c in checks)}")


def _check_stats(path: str, md: pq.FileMetaData, manifest: Manifest) -> None:
    """Check every row group's min/max statistics (metadata only, no data read) against the manifest: width, height
    and channels equal to its resolution and channels, label_index inside its classes. Row groups without
    statistics are left to the decode-time checks."""
    names = [md.schema.column(j).path for j in range(md.num_columns)]

    def ranges(name: str):
        if name not in names:
            return
        j = names.index(name)
        for i in range(md.num_row_groups):
            stats = md.row_group(i).column(j).statistics
            if stats is not None and stats.has_min_max:
                yield i, stats.min, stats.max

    for name, want in (("width", manifest.resolution), ("height", manifest.resolution), ("channels", manifest.channels)):
        for i, lo, hi in ranges(name):
            if lo != want or hi != want:
                raise ValueError(f"{name} mismatch: manifest says {want}, {path} row group {i} has {name} in [{lo}, {hi}]")
    if manifest.classes:
        for i, lo, hi in ranges("label_index"):
            if lo < 0 or hi >= len(manifest.classes):
                raise ValueError(
                    f"label_index out of range: manifest has {len(manifest.classes)} classes (0..{len(manifest.classes) - 1}), "
                    f"{path} row group {i} has label_index in [{lo}, {hi}]"
                )


@dataclasses.dataclass(frozen=True)
class _DatasetInfo:
    root: str
    images_dir: str
    manifest: Manifest
    encoding: PixelEncoding
    row_groups: tuple[RowGroup, ...]  # files sorted by path, row groups in file order, empty ones left out
    has_labels: bool

    @property
    def num_rows(self) -> int:
        return sum(g.num_rows for g in self.row_groups)


def _inspect(data: str) -> _DatasetInfo:
    root = uri_to_path(data)
    manifest = Manifest.read(root)  # FileNotFoundError without manifest.json, ValueError on a wrong schema_version
    try:
        encoding = PixelEncoding(manifest.pixel_encoding)
    except ValueError:
        raise ValueError(
            f"{root}: manifest pixel_encoding is {manifest.pixel_encoding!r}, expected one of {[e.value for e in PixelEncoding]}"
        ) from None
    if manifest.channels not in (1, 3, 4) or manifest.resolution < 1:
        raise ValueError(f"{root}: manifest has channels={manifest.channels}, resolution={manifest.resolution}; "
                         f"expected channels in (1, 3, 4) and resolution >= 1")
    images_dir = DatasetLayout(root).images
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"{images_dir} not found: the manifest exists but the dataset has no images/ directory")
    # pyarrow.dataset lists the files the way every Parquet reader does: hive partitions, '_' and '.' files ignored
    # (Spark's _SUCCESS, .crc).
    files = sorted(pads.dataset(images_dir, format="parquet", partitioning="hive").files)
    if not files:
        raise ValueError(f"no Parquet files under {images_dir}")
    groups: list[RowGroup] = []
    for path in files:
        pf = pq.ParquetFile(path)
        _check_file_schema(path, pf.schema_arrow)
        _check_stats(path, pf.metadata, manifest)
        for i in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(i).num_rows
            if n > 0:
                groups.append(RowGroup(path=path, index=i, num_rows=n))
    return _DatasetInfo(
        root=root,
        images_dir=images_dir,
        manifest=manifest,
        encoding=encoding,
        row_groups=tuple(groups),
        has_labels=bool(manifest.classes),
    )


def _not_enough_rows(config: LoaderConfig, num_rows: int) -> ValueError:
    return ValueError(
        f"world_size {config.world_size} x batch {config.batch_size} needs >= {config.world_size * config.batch_size} rows, "
        f"dataset has {num_rows}"
    )


# ----------------------------------------------------------------------------- the interface


class Loader(abc.ABC):
    """Per-rank batches of one dataset. Use `open_loader`; close it (or use `with`)."""

    manifest: Manifest
    steps_per_epoch: int   # identical on every rank and in every epoch, from metadata only
    num_rows: int          # rows in the dataset

    def __init__(self, config: LoaderConfig, info: _DatasetInfo):
        self.config = config
        self.info = info
        self.manifest = info.manifest
        self.num_rows = info.num_rows
        self._columns = ["pixels"] + (["label_index"] if info.has_labels else []) + (["image_id"] if config.with_ids else [])
        self._closed = False

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every batch's images."""
        r = self.manifest.resolution
        return (self.manifest.channels, r, r)

    @abc.abstractmethod
    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Exactly steps_per_epoch - start_step batches of batch_size rows. Deterministic given (seed, epoch, rank,
        world_size): resuming at (epoch, start_step) yields exactly the batches the uninterrupted run would have
        yielded from there."""

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_epoch_args(self, epoch: int, start_step: int) -> None:
        if self._closed:
            raise RuntimeError("loader is closed")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step must be in [0, steps_per_epoch={self.steps_per_epoch}], got {start_step}")


def _rebatch(chunks: Iterator[Batch], batch_size: int, n_batches: int, skip_rows: int = 0) -> Iterator[Batch]:
    """A stream of row chunks of any size -> exactly n_batches batches of batch_size rows, after dropping the first
    skip_rows rows. Only batches that straddle chunks are copied; the others are views of their chunk."""
    produced = 0
    pending: list[Batch] = []
    pending_rows = 0
    if n_batches == 0:
        return
    for chunk in chunks:
        pos, n = 0, len(chunk)
        if skip_rows:
            pos = min(skip_rows, n)
            skip_rows -= pos
        while pos < n:
            if pending_rows == 0 and n - pos >= batch_size:
                yield chunk.slice(pos, pos + batch_size)
                pos += batch_size
            else:
                take = min(batch_size - pending_rows, n - pos)
                pending.append(chunk.slice(pos, pos + take))
                pending_rows += take
                pos += take
                if pending_rows < batch_size:
                    continue
                yield Batch.cat(pending)
                pending, pending_rows = [], 0
            produced += 1
            if produced == n_batches:
                return
    raise RuntimeError(
        f"reader ran out of rows: expected {n_batches} batches of {batch_size}, produced {produced} "
        f"(+{pending_rows} rows); the dataset changed since the loader was opened?"
    )


# ----------------------------------------------------------------------------- arrow reader


class ArrowLoader(Loader):
    """Native pyarrow reader; see the module docstring for the sharding and shuffling rules."""

    def __init__(self, config: LoaderConfig, info: _DatasetInfo):
        super().__init__(config, info)
        per_rank = self.num_rows // config.world_size
        self.steps_per_epoch = per_rank // config.batch_size
        if self.steps_per_epoch == 0:
            raise _not_enough_rows(config, self.num_rows)
        self._per_rank = per_rank

    def plan(self, epoch: int) -> list[list[_Piece]]:
        """This rank's windows for `epoch`: lists of row-group pieces; rows are shuffled within a window."""
        cfg = self.config
        groups = self.info.row_groups
        if cfg.shuffle:
            order = np.random.default_rng((cfg.seed, epoch)).permutation(len(groups))
        else:
            order = np.arange(len(groups))
        begin = cfg.rank * self._per_rank
        end = begin + self.steps_per_epoch * cfg.batch_size
        pieces: list[_Piece] = []
        pos = 0  # first row of the current group in the epoch's virtual sequence
        for gi in order:
            g = groups[int(gi)]
            lo, hi = max(begin, pos), min(end, pos + g.num_rows)
            if lo < hi:
                pieces.append(_Piece(g, lo - pos, hi - pos))
            pos += g.num_rows
            if pos >= end:
                break
        w = cfg.shuffle_window
        return [pieces[i : i + w] for i in range(0, len(pieces), w)]

    def _load_window(self, epoch: int, window: int, pieces: list[_Piece], files: dict[str, pq.ParquetFile]) -> _Window:
        m = self.manifest
        views, labels, ids = [], [], []
        for p in pieces:
            pf = files.get(p.group.path)
            if pf is None:
                # pre_buffer coalesces a row group's column chunks into few large reads: measured ~2x fewer CPU
                # seconds per row than the default on 64x64 raw rows (bench/loader.py).
                pf = files[p.group.path] = pq.ParquetFile(p.group.path, pre_buffer=True)
            t = pf.read_row_group(p.group.index, columns=self._columns)
            if t.num_rows != p.group.num_rows:
                raise RuntimeError(f"{p.group.path} row group {p.group.index}: metadata said {p.group.num_rows} rows, read {t.num_rows}")
            t = t.slice(p.start, p.num_rows)
            col = t.column("pixels")
            pixels = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()  # a row group reads as one chunk
            where = f"{p.group.path} row group {p.group.index} from row {p.start}"
            try:
                if self.info.encoding is PixelEncoding.PNG:
                    views.append(_png_rows(pixels, m.resolution, m.resolution, m.channels, 0))
                else:
                    views.append(_raw_rows(pixels, m.resolution, m.resolution, m.channels, 0))
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            if self.info.has_labels:
                labels.append(_labels_from_arrow(t.column("label_index")).numpy())
            if self.config.with_ids:
                ids.extend(t.column("image_id").to_pylist())
        sizes = [len(v) for v in views]
        n = sum(sizes)
        if self.config.shuffle:
            order = np.random.default_rng((self.config.seed, epoch, self.config.rank, window)).permutation(n)
        else:
            order = np.arange(n)
        return _Window(
            views=views,
            starts=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            labels=np.concatenate(labels) if self.info.has_labels else None,
            ids=ids if self.config.with_ids else None,
            order=order,
        )

    def _materialize(self, parts: list[tuple[_Window, np.ndarray]]) -> Batch:
        """Gather the rows `idx` of each window straight into one new (B, H, W, C) buffer, returned as its
        (B, C, H, W) channels_last view: per piece, one torch index_select of whole rows (H*W*C bytes each, HWC as
        stored) from its Arrow buffer, so no transpose. Rows of a batch are grouped by piece (in stream order within a
        piece): the batch's *set* of rows is what the shuffle decides."""
        m = self.manifest
        r, c = m.resolution, m.channels
        row_bytes = r * r * c
        n = sum(len(idx) for _, idx in parts)
        # A new buffer per batch (the consumer owns it, may keep it, and it may be pinned); the allocator reuses the
        # freed blocks, so this costs no page faults in steady state (bench/loader.py counts them).
        out = torch.empty((n, row_bytes), dtype=torch.uint8, pin_memory=self.config.pin_memory)
        labels: list[np.ndarray] = []
        ids: list[str] = []
        pos = 0
        for win, idx in parts:
            piece_of = np.searchsorted(win.starts, idx, side="right") - 1
            grouped = np.argsort(piece_of, kind="stable")
            idx, piece_of = idx[grouped], piece_of[grouped]
            cuts = np.searchsorted(piece_of, np.arange(len(win.views) + 1))
            for k in np.flatnonzero(np.diff(cuts)):
                a, b = int(cuts[k]), int(cuts[k + 1])
                # One gather of whole rows, written straight into the batch.
                src = _as_tensor(win.views[k].reshape(-1, row_bytes))  # (n_k, H*W*C) view of the Arrow buffer
                torch.index_select(src, 0, torch.from_numpy(idx[a:b] - win.starts[k]), out=out[pos + a : pos + b])
            if win.labels is not None:
                labels.append(win.labels[idx])
            if win.ids is not None:
                ids.extend(win.ids[i] for i in idx)
            pos += len(idx)
        return Batch(
            images=out.view(n, r, r, c).permute(0, 3, 1, 2),
            labels=torch.from_numpy(np.concatenate(labels)) if self.info.has_labels else None,
            ids=ids if self.config.with_ids else None,
        )

    def _produce(self, epoch: int, start_step: int, emit) -> None:
        """Make batches start_step .. steps_per_epoch - 1 of `epoch` and hand each to emit (False: stop)."""
        B = self.config.batch_size
        windows = self.plan(epoch)
        skip = start_step * B  # stream rows before the first batch to make
        first = 0
        while first < len(windows) and skip >= sum(p.num_rows for p in windows[first]):
            skip -= sum(p.num_rows for p in windows[first])
            first += 1
        remaining = self.steps_per_epoch - start_step
        files: dict[str, pq.ParquetFile] = {}
        parts: list[tuple[_Window, np.ndarray]] = []
        have = 0
        for w in range(first, len(windows)):
            if remaining == 0:
                return
            win = self._load_window(epoch, w, windows[w], files)
            pos, n = (skip if w == first else 0), len(win.order)
            while pos < n and remaining:
                take = min(B - have, n - pos)
                parts.append((win, win.order[pos : pos + take]))
                have += take
                pos += take
                if have == B:
                    if not emit(self._materialize(parts)):
                        return
                    parts, have, remaining = [], 0, remaining - 1
        if remaining:
            raise RuntimeError(f"arrow reader ran out of rows in epoch {epoch}: {remaining} batches short (a bug)")

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        self._check_epoch_args(epoch, start_step)
        return self._epoch(epoch, start_step)

    def _epoch(self, epoch: int, start_step: int) -> Iterator[Batch]:
        # One background thread reads, decodes and gathers; up to `prefetch` finished batches wait in the queue.
        # pyarrow, numpy's take and torch's copy release the GIL, so this overlaps the training step.
        results: queue.Queue = queue.Queue(maxsize=self.config.prefetch)
        stop = threading.Event()

        def emit(item: Any) -> bool:
            while not stop.is_set():
                try:
                    results.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def run() -> None:
            try:
                self._produce(epoch, start_step, emit)
            except BaseException as exc:  # handed to the consumer, raised there
                emit(_Failure(exc))

        thread = threading.Thread(target=run, name="imagegen-arrow-loader", daemon=True)
        thread.start()
        try:
            for _ in range(self.steps_per_epoch - start_step):
                item = results.get()
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
        finally:
            stop.set()
            thread.join()


@dataclasses.dataclass
class _Window:
    """The rows of one shuffle window, decoded to views (no pixel copies yet)."""

    views: list[np.ndarray]     # per piece: (n_k, H*W, C) uint8 (a view of the Arrow buffer for raw pixels)
    starts: np.ndarray          # (pieces + 1,) first window row of each piece, then the total
    labels: np.ndarray | None   # (n,) int64 in window-row order, -1 for nulls
    ids: list[str] | None       # (n,) in window-row order
    order: np.ndarray           # (n,) the window's stream: its i-th streamed row is window row order[i]


@dataclasses.dataclass
class _Failure:
    exc: BaseException


# ----------------------------------------------------------------------------- petastorm reader


def _petastorm_row_groups(images_dir: str) -> list[tuple[str, int]]:
    """(path, row_group) in the order petastorm's make_batch_reader numbers them for sharding, computed with petastorm's
    own functions (reader.py: ParquetDataset(validate_schema=False) -> dataset_metadata.load_row_groups)."""
    from petastorm.etl.dataset_metadata import load_row_groups
    from petastorm.fs_utils import get_filesystem_and_path_or_paths
    from petastorm.reader import normalize_dataset_url_or_urls

    url = normalize_dataset_url_or_urls(Path(images_dir).resolve().as_uri())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # petastorm 0.12 uses pyarrow's legacy ParquetDataset
        filesystem, path = get_filesystem_and_path_or_paths(url, "libhdfs3")
        dataset = pq.ParquetDataset(path, filesystem=filesystem, validate_schema=False, metadata_nthreads=10)
        return [(piece.path, piece.row_group) for piece in load_row_groups(dataset)]


class PetastormLoader(Loader):
    """petastorm.make_batch_reader with cur_shard/shard_count; see the module docstring."""

    def __init__(self, config: LoaderConfig, info: _DatasetInfo):
        super().__init__(config, info)
        W, B = config.world_size, config.batch_size
        if info.num_rows < W * B:
            raise _not_enough_rows(config, info.num_rows)
        pieces = _petastorm_row_groups(info.images_dir)
        rows_of: dict[tuple[str, int], int] = {}
        for path in sorted({p for p, _ in pieces}):
            md = pq.ParquetFile(path).metadata
            for i in range(md.num_row_groups):
                rows_of[(path, i)] = md.row_group(i).num_rows
        # petastorm: row group i belongs to shard i % shard_count, whatever the seed (it only reorders).
        self.rank_rows = [sum(rows_of[p] for i, p in enumerate(pieces) if i % W == r) for r in range(W)]
        self.rank_row_groups = [sum(1 for i in range(len(pieces)) if i % W == r) for r in range(W)]
        if sum(self.rank_rows) != info.num_rows:
            raise RuntimeError(f"petastorm sees {sum(self.rank_rows)} rows in {info.images_dir}, the metadata {info.num_rows}")
        self.steps_per_epoch = min(self.rank_rows) // B
        if self.steps_per_epoch == 0:
            r = int(np.argmin(self.rank_rows))
            raise ValueError(
                f"petastorm shards by row group: rank {r} of world_size {W} gets {self.rank_row_groups[r]} row groups with "
                f"{self.rank_rows[r]} rows, fewer than batch {B}; dataset has {info.num_rows} rows in {len(pieces)} row groups "
                f"(use the arrow reader, smaller batches or smaller row groups)"
            )
        self._url = Path(info.images_dir).resolve().as_uri()

    def _make_reader(self, epoch: int):
        from petastorm import make_batch_reader

        cfg = self.config
        # petastorm 0.12 drives pyarrow's legacy ParquetDataset API from its worker threads, which warns on every row
        # group (FutureWarning); and it warns that schema_fields are now full-match regexes ("pixels" vs pixels_sha256),
        # which is what we want. Silence exactly those, process-wide (worker threads do not see catch_warnings).
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")
        warnings.filterwarnings("ignore", message="schema_fields behavior has changed", category=UserWarning)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return make_batch_reader(
                self._url,
                schema_fields=self._columns,
                reader_pool_type="thread",
                workers_count=cfg.petastorm_workers,
                results_queue_size=max(2, cfg.prefetch),
                # petastorm also reorders a shard's row groups by the seed when shuffle_row_groups is off; no seed
                # keeps shuffle=False in row-group order.
                seed=cfg.seed + epoch if cfg.shuffle else None,
                shuffle_row_groups=cfg.shuffle,
                shuffle_rows=cfg.shuffle,
                num_epochs=1,
                cur_shard=cfg.rank,
                shard_count=cfg.world_size,
            )

    def _batch_from_petastorm(self, result: Any) -> Batch:
        m = self.manifest
        # petastorm hands binary cells as a numpy object array of bytes; pa.array builds one Arrow buffer from it in C,
        # so both readers share the per-row-loop-free decode_pixel_column.
        pixels = pa.array(result.pixels, type=pa.binary())
        images = decode_pixel_column(pixels, height=m.resolution, width=m.resolution, channels=m.channels, encoding=self.info.encoding)
        labels = None
        if self.info.has_labels:
            raw = np.asarray(result.label_index)
            if raw.dtype.kind == "f":  # nullable int column -> pandas float64 with NaN for nulls
                raw = np.where(np.isnan(raw), -1, raw)
            elif raw.dtype == object:
                raw = np.array([-1 if v is None else v for v in raw])
            labels = torch.from_numpy(raw.astype(np.int64))
        ids = [str(x) for x in result.image_id] if self.config.with_ids else None
        return Batch(images=images, labels=labels, ids=ids)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        self._check_epoch_args(epoch, start_step)
        return self._epoch(epoch, start_step)

    def _epoch(self, epoch: int, start_step: int) -> Iterator[Batch]:
        reader = self._make_reader(epoch)
        try:
            chunks = (self._batch_from_petastorm(r) for r in reader)
            batches = _rebatch(
                chunks, self.config.batch_size, self.steps_per_epoch - start_step, skip_rows=start_step * self.config.batch_size
            )
            for batch in batches:
                yield Batch(batch.images.pin_memory(), batch.labels, batch.ids) if self.config.pin_memory else batch
        finally:
            reader.stop()
            reader.join()


# ----------------------------------------------------------------------------- entry point


def open_loader(config: LoaderConfig) -> Loader:
    """Validate the dataset from metadata (manifest, schema, geometry statistics, row counts) and open a loader."""
    info = _inspect(config.data)
    if config.reader is ReaderKind.ARROW:
        return ArrowLoader(config, info)
    return PetastormLoader(config, info)
