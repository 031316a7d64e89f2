"""``ReaderKind.PETASTORM``: ``petastorm.make_batch_reader(cur_shard=rank, shard_count=world_size)``.

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
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from training.data.batch import Batch, decode_pixel_column
from training.data.dataset import DatasetInfo
from training.data.loader import Loader, LoaderConfig, not_enough_rows, rebatch


def _file_urls(info: DatasetInfo) -> list[str]:
    """The manifest's image files as file:// URLs. petastorm is handed this list, never the images/ directory: for a
    directory, pyarrow's legacy ParquetDataset picks up `_common_metadata`, and petastorm unpickles its
    `dataset-toolkit.unischema.v1` key with an unpickler that allows `builtins.exec`, so a planted file would run code
    in the training process. For a list of files there is no common metadata, and petastorm infers the schema from the
    Parquet schema (infer_or_load_unischema). Keys petastorm would unpickle in the files themselves are refused by
    dataset.inspect_dataset."""
    # Not Path.as_uri(): petastorm urlparse()s without unquoting, so a percent-encoded `run_id%3D...` is not found.
    return ["file://" + str(Path(f).resolve()) for f in info.files]


def _petastorm_row_groups(urls: list[str]) -> list[tuple[str, int]]:
    """(path, row_group) in the order petastorm's make_batch_reader numbers them for sharding, computed with petastorm's
    own functions (reader.py: ParquetDataset(validate_schema=False) -> dataset_metadata.load_row_groups)."""
    from petastorm.etl.dataset_metadata import load_row_groups
    from petastorm.fs_utils import get_filesystem_and_path_or_paths
    from petastorm.reader import normalize_dataset_url_or_urls

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # petastorm 0.12 uses pyarrow's legacy ParquetDataset
        filesystem, paths = get_filesystem_and_path_or_paths(normalize_dataset_url_or_urls(urls), "libhdfs3")
        dataset = pq.ParquetDataset(paths, filesystem=filesystem, validate_schema=False, metadata_nthreads=10)
        if dataset.common_metadata is not None or dataset.metadata is not None:
            raise RuntimeError("petastorm was given dataset-level metadata; it must only ever see the listed files")
        return [(piece.path, piece.row_group) for piece in load_row_groups(dataset)]


class PetastormLoader(Loader):
    """petastorm.make_batch_reader with cur_shard/shard_count; see the module docstring."""

    def __init__(self, config: LoaderConfig, info: DatasetInfo):
        super().__init__(config, info)
        W, B = config.world_size, config.batch_size
        if info.num_rows < W * B:
            raise not_enough_rows(config, info.num_rows)
        self._urls = _file_urls(info)
        pieces = _petastorm_row_groups(self._urls)
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
                self._urls,
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
            batches = rebatch(
                chunks, self.config.batch_size, self.steps_per_epoch - start_step, skip_rows=start_step * self.config.batch_size
            )
            for batch in batches:
                yield Batch(batch.images.pin_memory(), batch.labels, batch.ids) if self.config.pin_memory else batch
        finally:
            reader.stop()
            reader.join()
