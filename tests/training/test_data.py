"""training/data.py: both readers on real Parquet datasets written with pyarrow (tests/training/conftest.py).

Expected values come from reading the Parquet files directly with pyarrow.parquet (`_truth`), never from the loader.
Multi-rank behaviour is simulated in-process by constructing one loader per rank.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from schemas import SCHEMA_VERSION, DatasetLayout
from tests.training.conftest import write_digits_dataset
from training.data import (
    Batch,
    LoaderConfig,
    ReaderKind,
    decode_pixel_column,
    from_model_output,
    open_loader,
    to_model_input,
)

READERS = [ReaderKind.ARROW, ReaderKind.PETASTORM]


# ----------------------------------------------------------------------------- datasets and ground truth


@pytest.fixture(scope="module")
def uneven_dataset(tmp_path_factory) -> Path:
    """90 rows, row groups of 7 in 3 files (30 rows each: groups of 7, 7, 7, 7, 2): shares straddle row groups."""
    return write_digits_dataset(tmp_path_factory.mktemp("uneven") / "ds", n=90, resolution=16, rows_per_group=7, files=3)


@dataclasses.dataclass
class Truth:
    ids: list[str]                      # file (sorted path) order, then row-group order
    groups: list[list[str]]             # ids per row group, same order (petastorm's shard numbering)
    pixels: dict[str, np.ndarray]       # id -> (C, H, W) uint8, from np.frombuffer(pixels).reshape(H, W, C)
    labels: dict[str, int | None]       # id -> label_index


def _truth(root: Path, resolution: int) -> Truth:
    files = sorted((Path(DatasetLayout(str(root)).images)).rglob("*.parquet"))
    ids, groups, pixels, labels = [], [], {}, {}
    for f in files:
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g, columns=["image_id", "pixels", "label_index"]).to_pylist()
            groups.append([r["image_id"] for r in t])
            for r in t:
                ids.append(r["image_id"])
                pixels[r["image_id"]] = np.frombuffer(r["pixels"], np.uint8).reshape(resolution, resolution, 3).transpose(2, 0, 1)
                labels[r["image_id"]] = r["label_index"]
    return Truth(ids, groups, pixels, labels)


def _rewrite(src: Path, dst: Path, table_fn, **manifest_changes) -> Path:
    """Copy dataset src to dst, passing every Parquet file's table through table_fn and updating manifest fields."""
    for f in sorted(Path(DatasetLayout(str(src)).images).rglob("*.parquet")):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        pf = pq.ParquetFile(f)
        pq.write_table(table_fn(pf.read()), out, row_group_size=pf.metadata.row_group(0).num_rows)
    manifest = json.loads(Path(DatasetLayout(str(src)).manifest).read_text())
    manifest.update(manifest_changes)
    Path(DatasetLayout(str(dst)).manifest).write_text(json.dumps(manifest))
    return dst


def _collect(loader, epoch: int = 0, start_step: int = 0) -> list[Batch]:
    return list(loader.epoch(epoch, start_step))


def _ids(batches: list[Batch]) -> list[str]:
    return [i for b in batches for i in b.ids]


def _cfg(root: Path, reader: ReaderKind, **kw) -> LoaderConfig:
    kw.setdefault("with_ids", True)
    return LoaderConfig(data=str(root), reader=reader, **kw)


# ----------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("which", ["tiny", "uneven"])
def test_ranks_read_disjoint_rows_covering_the_dataset(reader, world_size, which, digits_dataset, uneven_dataset):
    root, batch = (digits_dataset, 8) if which == "tiny" else (uneven_dataset, 5)
    truth = _truth(root, 32 if which == "tiny" else 16)
    n = len(truth.ids)
    per_rank: list[list[str]] = []
    steps = set()
    for rank in range(world_size):
        with open_loader(_cfg(root, reader, batch_size=batch, rank=rank, world_size=world_size, seed=3)) as loader:
            assert loader.num_rows == n
            batches = _collect(loader, epoch=1)
            assert len(batches) == loader.steps_per_epoch
            assert all(len(b) == batch and len(b.ids) == batch for b in batches)
            steps.add(loader.steps_per_epoch)
            per_rank.append(_ids(batches))
    assert len(steps) == 1, f"ranks disagree on steps_per_epoch: {steps}"
    (steps_per_epoch,) = steps
    flat = [i for ids in per_rank for i in ids]
    assert len(flat) == len(set(flat)), "a row was read by two ranks (or twice by one)"
    assert set(flat) <= set(truth.ids)
    dropped = n - len(flat)
    if reader is ReaderKind.ARROW:
        # The documented drop: < world_size * batch_size rows per epoch, and the most steps that allows.
        assert dropped < world_size * batch
        assert steps_per_epoch == (n // world_size) // batch
    else:
        # petastorm: row group i -> shard i % world_size; each rank reads only inside its own row groups.
        shard_rows = [{i for g, ids in enumerate(truth.groups) if g % world_size == r for i in ids} for r in range(world_size)]
        for rank in range(world_size):
            assert set(per_rank[rank]) <= shard_rows[rank]
        assert steps_per_epoch == min(len(s) for s in shard_rows) // batch


def test_shuffle_false_reads_in_file_order(digits_dataset):
    truth = _truth(digits_dataset, 32)
    with open_loader(_cfg(digits_dataset, ReaderKind.ARROW, batch_size=8, shuffle=False, world_size=2, rank=1)) as loader:
        assert _ids(_collect(loader, 0)) == truth.ids[48:96]
        assert _ids(_collect(loader, 5)) == truth.ids[48:96]


# ----------------------------------------------------------------------------- content


@pytest.mark.parametrize("reader", READERS)
def test_pixels_and_labels_match_the_parquet_rows(reader, digits_dataset):
    truth = _truth(digits_dataset, 32)
    with open_loader(_cfg(digits_dataset, reader, batch_size=8)) as loader:
        batches = _collect(loader)
    seen = 0
    for b in batches:
        assert b.images.dtype == torch.uint8 and b.images.shape == (8, 3, 32, 32)
        # channels_last: a (B, C, H, W) view of a dense (B, H, W, C) buffer.
        assert b.images.is_contiguous(memory_format=torch.channels_last) and b.images.stride() == (32 * 32 * 3, 1, 32 * 3, 3)
        assert b.images.permute(0, 2, 3, 1).is_contiguous()
        if reader is ReaderKind.ARROW:  # a new buffer per batch (petastorm's batches are slices of a row-group chunk)
            assert b.images.storage_offset() == 0 and b.images.untyped_storage().nbytes() == 8 * 32 * 32 * 3
        assert b.labels is not None and b.labels.dtype == torch.int64 and b.labels.shape == (8,)
        for j, image_id in enumerate(b.ids):
            np.testing.assert_array_equal(b.images[j].numpy(), truth.pixels[image_id])
            assert int(b.labels[j]) == truth.labels[image_id]
            seen += 1
    assert seen == len(truth.ids) == 96


def test_both_readers_give_the_same_multiset_of_rows(uneven_dataset):
    # 90 rows, batch 6: neither reader drops a row at world_size 1, so both multisets are the whole dataset.
    got = {}
    for reader in READERS:
        with open_loader(_cfg(uneven_dataset, reader, batch_size=6, seed=11)) as loader:
            batches = _collect(loader, epoch=2)
        rows = collections.Counter()
        for b in batches:
            for j, image_id in enumerate(b.ids):
                rows[(image_id, b.images[j].numpy().tobytes(), int(b.labels[j]))] += 1
        got[reader] = rows
    assert sum(got[ReaderKind.ARROW].values()) == 90
    assert got[ReaderKind.ARROW] == got[ReaderKind.PETASTORM]


def test_null_labels_become_minus_one_and_unlabelled_datasets_give_none(digits_dataset, tmp_path):
    truth = _truth(digits_dataset, 32)
    null_every_3rd = lambda t: t.set_column(  # noqa: E731
        t.schema.get_field_index("label_index"),
        pa.field("label_index", pa.int32()),
        pa.array([None if i % 3 == 0 else v for i, v in enumerate(t.column("label_index").to_pylist())], pa.int32()),
    )
    nulls = _rewrite(digits_dataset, tmp_path / "nulls", null_every_3rd)
    expected = {}
    for f in sorted(Path(DatasetLayout(str(nulls)).images).rglob("*.parquet")):
        for r in pq.read_table(f, columns=["image_id", "label_index"]).to_pylist():
            expected[r["image_id"]] = -1 if r["label_index"] is None else r["label_index"]
    assert -1 in expected.values() and len(set(expected.values())) > 2
    for reader in READERS:
        with open_loader(_cfg(nulls, reader, batch_size=8)) as loader:
            got = {i: int(lab) for b in _collect(loader) for i, lab in zip(b.ids, b.labels)}
        assert got == expected, reader

    unlabelled = _rewrite(digits_dataset, tmp_path / "unlabelled", lambda t: t, classes=[], label_counts={})
    for reader in READERS:
        with open_loader(_cfg(unlabelled, reader, batch_size=8)) as loader:
            batches = _collect(loader)
        assert all(b.labels is None for b in batches)
        assert sorted(_ids(batches)) == sorted(truth.ids)


def test_png_rows_decode_to_the_same_pixels_as_raw(digits_dataset, tmp_path):
    def to_png(t: pa.Table) -> pa.Table:
        pngs = []
        for raw in t.column("pixels").to_pylist():
            buf = io.BytesIO()
            Image.fromarray(np.frombuffer(raw, np.uint8).reshape(32, 32, 3), "RGB").save(buf, "PNG")
            pngs.append(buf.getvalue())
        t = t.set_column(t.schema.get_field_index("pixels"), pa.field("pixels", pa.binary(), nullable=False), pa.array(pngs, pa.binary()))
        enc = pa.array(["png"] * t.num_rows)
        return t.set_column(t.schema.get_field_index("pixel_encoding"), pa.field("pixel_encoding", pa.string(), nullable=False), enc)

    png = _rewrite(digits_dataset, tmp_path / "png", to_png, pixel_encoding="png")
    truth = _truth(digits_dataset, 32)
    for reader in READERS:
        with open_loader(_cfg(png, reader, batch_size=16)) as loader:
            batches = _collect(loader)
        assert len(_ids(batches)) == 96
        for b in batches:
            for j, image_id in enumerate(b.ids):
                np.testing.assert_array_equal(b.images[j].numpy(), truth.pixels[image_id])


def test_decode_pixels_raw_handles_sliced_and_large_binary_columns():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, size=(5, 4, 2, 3), dtype=np.uint8)  # (n, H, W, C)
    expected = rows.transpose(0, 3, 1, 2)
    col = pa.array([r.tobytes() for r in rows], pa.binary())
    decoded = decode_pixel_column(col, height=4, width=2, channels=3, encoding="raw")
    np.testing.assert_array_equal(decoded.numpy(), expected)
    assert decoded.shape == (5, 3, 4, 2) and decoded.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(decode_pixel_column(col.slice(2, 3), height=4, width=2, channels=3, encoding="raw").numpy(), expected[2:])
    large = pa.array([r.tobytes() for r in rows], pa.large_binary())
    np.testing.assert_array_equal(decode_pixel_column(large, height=4, width=2, channels=3, encoding="raw").numpy(), expected)
    chunked = pa.chunked_array([col.slice(0, 2), col.slice(2, 3)])
    order = np.array([4, 0, 2])
    np.testing.assert_array_equal(
        decode_pixel_column(chunked, height=4, width=2, channels=3, encoding="raw", order=order).numpy(), expected[order]
    )


def test_decode_pixels_raw_rejects_rows_of_the_wrong_size():
    col = pa.array([bytes(24), bytes(24), bytes(8)], pa.binary())
    with pytest.raises(ValueError, match=r"expected 24 bytes per row .* found 8 bytes at row 2"):
        decode_pixel_column(col, height=4, width=2, channels=3, encoding="raw")


# ----------------------------------------------------------------------------- determinism and resume


@pytest.mark.parametrize("reader", READERS)
def test_epochs_are_deterministic_and_resume_yields_the_tail(reader, uneven_dataset):
    cfg = _cfg(uneven_dataset, reader, batch_size=4, rank=1, world_size=2, seed=7, shuffle_window=2)
    with open_loader(cfg) as loader:
        full = _collect(loader, epoch=3)
        again = _collect(loader, epoch=3)
        assert _ids(full) == _ids(again)
        for k in (1, 5, loader.steps_per_epoch - 1, loader.steps_per_epoch):
            tail = _collect(loader, epoch=3, start_step=k)
            assert len(tail) == loader.steps_per_epoch - k
            assert [b.ids for b in tail] == [b.ids for b in full[k:]]
            for a, b in zip(tail, full[k:]):
                assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    with open_loader(cfg) as fresh:  # a restarted process
        assert [b.ids for b in _collect(fresh, epoch=3, start_step=4)] == [b.ids for b in full[4:]]


def test_petastorm_with_more_workers_reads_the_same_rows(uneven_dataset):
    # More petastorm workers: the order may change with thread timing (documented), the rows do not when none
    # are dropped (90 rows, batch 6, one rank).
    got = []
    for workers in (1, 3):
        with open_loader(_cfg(uneven_dataset, ReaderKind.PETASTORM, batch_size=6, petastorm_workers=workers)) as loader:
            got.append(sorted(_ids(_collect(loader, 2))))
    assert got[0] == got[1] and len(got[0]) == 90


@pytest.mark.parametrize("reader", READERS)
def test_epochs_differ_when_shuffled_and_not_when_unshuffled(reader, digits_dataset):
    with open_loader(_cfg(digits_dataset, reader, batch_size=8)) as loader:
        e0, e1 = _ids(_collect(loader, 0)), _ids(_collect(loader, 1))
    assert e0 != e1 and sorted(e0) == sorted(e1)
    with open_loader(_cfg(digits_dataset, reader, batch_size=8, shuffle=False)) as loader:
        assert _ids(_collect(loader, 0)) == _ids(_collect(loader, 1))
    with open_loader(_cfg(digits_dataset, reader, batch_size=8, seed=1)) as loader:
        assert _ids(_collect(loader, 0)) != e0


def test_arrow_ranks_get_different_rows_each_epoch(digits_dataset):
    # Row groups are permuted per epoch before being split between ranks, so a rank's share moves around
    # (petastorm's does not: its shards are fixed by row-group index).
    with open_loader(_cfg(digits_dataset, ReaderKind.ARROW, batch_size=8, world_size=2, rank=0)) as loader:
        shares = [frozenset(_ids(_collect(loader, e))) for e in range(3)]
    assert len(set(shares)) > 1


def test_arrow_shuffles_rows_across_row_groups(digits_dataset):
    truth = _truth(digits_dataset, 32)
    group_of = {i: g for g, ids in enumerate(truth.groups) for i in ids}
    with open_loader(_cfg(digits_dataset, ReaderKind.ARROW, batch_size=8, shuffle_window=3)) as loader:
        first = _collect(loader, 0)[0]
    # 8 rows drawn from a shuffled window of 3 row groups of 16: all from one group has probability ~1e-3.
    assert len({group_of[i] for i in first.ids}) > 1


@pytest.mark.parametrize("reader", READERS)
def test_stopping_mid_epoch_releases_the_reader_threads(reader, uneven_dataset):
    before = set(threading.enumerate())
    with open_loader(_cfg(uneven_dataset, reader, batch_size=4, shuffle_window=1)) as loader:
        it = loader.epoch(0)
        next(it)
        assert set(threading.enumerate()) - before, "expected the reader to run background threads"
        it.close()
    started = set(threading.enumerate()) - before
    for t in started:
        t.join(timeout=10)
    assert [t.name for t in started if t.is_alive()] == []


def test_spark_style_layout_with_several_runs_and_marker_files(digits_dataset, tmp_path):
    # Incremental runs add partitions; Spark leaves _SUCCESS and .crc files next to the parts.
    root = tmp_path / "ds"
    shutil.copytree(digits_dataset, root)
    images = Path(DatasetLayout(str(root)).images)
    (images / "run_id=r1").mkdir()
    shutil.move(images / "run_id=r0" / "part-00001.parquet", images / "run_id=r1" / "part-00000.parquet")
    (images / "run_id=r0" / "_SUCCESS").write_bytes(b"")
    (images / "run_id=r1" / ".part-00000.parquet.crc").write_bytes(b"not parquet")
    manifest = json.loads(Path(DatasetLayout(str(root)).manifest).read_text())
    manifest["files"]["images"][1]["path"] = "images/run_id=r1/part-00000.parquet"
    Path(DatasetLayout(str(root)).manifest).write_text(json.dumps(manifest))
    truth = _truth(digits_dataset, 32)
    for reader in READERS:
        with open_loader(_cfg(root, reader, batch_size=8)) as loader:
            assert loader.num_rows == 96
            assert sorted(_ids(_collect(loader))) == sorted(truth.ids)


def test_pin_memory_without_cuda_is_named():
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA; the error is for hosts without it")
    with pytest.raises(ValueError, match="pin_memory=True needs CUDA"):
        LoaderConfig(data="x", pin_memory=True)


def test_file_uri_is_accepted(digits_dataset):
    with open_loader(_cfg(Path(digits_dataset).resolve().as_uri(), ReaderKind.ARROW, batch_size=32)) as loader:
        assert loader.steps_per_epoch == 3 and loader.manifest.resolution == 32


# ----------------------------------------------------------------------------- errors


def test_missing_manifest_is_named(digits_dataset, tmp_path):
    shutil.copytree(Path(digits_dataset) / "images", tmp_path / "ds" / "images")
    with pytest.raises(FileNotFoundError, match="no manifest"):
        open_loader(LoaderConfig(data=str(tmp_path / "ds")))


def test_wrong_manifest_schema_version_is_named(digits_dataset, tmp_path):
    bad = _rewrite(digits_dataset, tmp_path / "v99", lambda t: t, schema_version=99)
    with pytest.raises(ValueError, match=f"schema_version is 99, this code reads {SCHEMA_VERSION}"):
        open_loader(LoaderConfig(data=str(bad)))


def test_channel_mismatch_is_named(digits_dataset, tmp_path):
    bad = _rewrite(digits_dataset, tmp_path / "grey", lambda t: t, channels=1)
    with pytest.raises(ValueError, match=r"channels mismatch: manifest says 1, .* has channels in \[3, 3\]"):
        open_loader(LoaderConfig(data=str(bad)))


@pytest.mark.parametrize("reader", READERS)
def test_a_pixel_row_of_the_wrong_size_fails_the_epoch_with_its_place(reader, digits_dataset, tmp_path):
    def truncate_row_5(t: pa.Table) -> pa.Table:
        pixels = t.column("pixels").to_pylist()
        pixels[5] = pixels[5][:100]
        i = t.schema.get_field_index("pixels")
        return t.set_column(i, t.schema.field(i), pa.array(pixels, pa.binary()))

    bad = _rewrite(digits_dataset, tmp_path / "short", truncate_row_5)
    with open_loader(_cfg(bad, reader, batch_size=8, shuffle=False)) as loader:  # opening reads metadata only
        with pytest.raises(ValueError, match=r"expected 3072 bytes per row .* found 100 bytes at row 5"):
            _collect(loader)


def test_label_index_outside_the_manifest_classes_is_named(digits_dataset, tmp_path):
    bad = _rewrite(digits_dataset, tmp_path / "fewclasses", lambda t: t, classes=["0", "1", "2", "3", "4"])
    with pytest.raises(ValueError, match=r"label_index out of range: manifest has 5 classes \(0..4\), .* in \[0, 9\]"):
        open_loader(LoaderConfig(data=str(bad)))


def test_wrong_column_type_is_named(digits_dataset, tmp_path):
    def labels_as_strings(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("label_index")
        return t.set_column(i, pa.field("label_index", pa.string()), t.column(i).cast(pa.string()))

    bad = _rewrite(digits_dataset, tmp_path / "strlabels", labels_as_strings)
    with pytest.raises(ValueError, match="column 'label_index' has type string, expected integer"):
        open_loader(LoaderConfig(data=str(bad)))


@pytest.mark.parametrize("reader", READERS)
def test_a_rank_without_steps_is_an_error(reader, digits_dataset):
    with pytest.raises(ValueError, match=r"world_size 8 x batch 64 needs >= 512 rows, dataset has 96"):
        open_loader(_cfg(digits_dataset, reader, batch_size=64, world_size=8, rank=7))


def test_petastorm_names_the_starved_rank(digits_dataset):
    # 6 row groups of 16 rows over 4 ranks: ranks 2 and 3 get one row group (16 rows) each, less than batch 20.
    with pytest.raises(ValueError, match=r"rank 2 of world_size 4 gets 1 row groups with 16 rows, fewer than batch 20"):
        open_loader(_cfg(digits_dataset, ReaderKind.PETASTORM, batch_size=20, world_size=4))
    with open_loader(_cfg(digits_dataset, ReaderKind.ARROW, batch_size=20, world_size=4)) as loader:
        assert loader.steps_per_epoch == 1  # the arrow reader splits row groups, so it still has a step


def test_bad_config_values_are_named(digits_dataset):
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size=2\), got 2"):
        LoaderConfig(data=str(digits_dataset), rank=2, world_size=2)
    with pytest.raises(ValueError, match="start_step must be in"):
        with open_loader(LoaderConfig(data=str(digits_dataset), batch_size=8)) as loader:
            loader.epoch(0, start_step=13)
    assert LoaderConfig(data="x", reader="petastorm").reader is ReaderKind.PETASTORM


# ----------------------------------------------------------------------------- normalisation


def test_to_model_input_maps_uint8_to_minus_one_one():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(2, 3, 1, 1)
    y = to_model_input(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert float(y.min()) == -1.0 and float(y.max()) == 1.0
    np.testing.assert_allclose(y.numpy(), x.numpy().astype(np.float64) / 127.5 - 1.0, atol=1e-6)
    assert torch.equal(from_model_output(y), x)
    assert torch.equal(from_model_output(torch.full((1, 1, 1, 1), 7.0)), torch.full((1, 1, 1, 1), 255, dtype=torch.uint8))


def test_to_model_input_with_mean_and_std_per_channel():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = [0.5, 0.25, 0.75], [0.2, 0.1, 0.3]
    y = to_model_input(x, mean=mean, std=std)
    expected = (x.numpy().astype(np.float64) / 255.0 - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(from_model_output(y, mean=mean, std=std), x)
    with pytest.raises(ValueError, match=r"one value per channel \(3\), got 2 and 2"):
        to_model_input(x, mean=[0.5, 0.5], std=[0.2, 0.2])
    with pytest.raises(ValueError, match="expected uint8 images"):
        to_model_input(x.float())


def test_to_model_input_keeps_channels_last_batches_channels_last():
    hwc = torch.randint(0, 256, (4, 5, 6, 3), dtype=torch.uint8)  # as the loaders store a batch
    x = hwc.permute(0, 3, 1, 2)  # (B, C, H, W) channels_last view, like Batch.images
    expected = hwc.numpy().astype(np.float64).transpose(0, 3, 1, 2) / 127.5 - 1.0
    for y in (to_model_input(x), to_model_input(x, mean=[0.5] * 3, std=[0.5] * 3)):
        assert y.shape == (4, 3, 5, 6) and y.is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_allclose(y.numpy(), expected, atol=1e-6)
    assert torch.equal(from_model_output(to_model_input(x)), x)
