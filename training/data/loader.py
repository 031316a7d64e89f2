"""The reader interface: `LoaderConfig` and the abstract `Loader` both readers implement."""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from schemas import Manifest
from training.config import ReaderKind  # defined with the rest of the configuration
from training.data.batch import Batch
from training.data.dataset import DatasetInfo


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


def not_enough_rows(config: LoaderConfig, num_rows: int) -> ValueError:
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

    def __init__(self, config: LoaderConfig, info: DatasetInfo):
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


def rebatch(chunks: Iterator[Batch], batch_size: int, n_batches: int, skip_rows: int = 0) -> Iterator[Batch]:
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
