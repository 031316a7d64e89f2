"""``ReaderKind.ARROW`` (the default, fast path): a native pyarrow reader.

- Metadata only, at open: every (file, row_group, num_rows) of the files the manifest lists, in listed order.
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

"""
from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from schemas.pixels import PixelEncoding
from training.data.batch import Batch, _as_tensor, _labels_from_arrow, _png_rows, _raw_rows
from training.data.dataset import DatasetInfo, RowGroup
from training.data.loader import Loader, LoaderConfig, not_enough_rows


@dataclasses.dataclass(frozen=True)
class _Piece:
    """Rows [start, stop) of one row group."""

    group: RowGroup
    start: int
    stop: int

    @property
    def num_rows(self) -> int:
        return self.stop - self.start


class ArrowLoader(Loader):
    """Native pyarrow reader; see the module docstring for the sharding and shuffling rules."""

    def __init__(self, config: LoaderConfig, info: DatasetInfo):
        super().__init__(config, info)
        per_rank = self.num_rows // config.world_size
        self.steps_per_epoch = per_rank // config.batch_size
        if self.steps_per_epoch == 0:
            raise not_enough_rows(config, self.num_rows)
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
