"""A dataset is exactly the files its manifest lists (schemas/layout.py): both readers read those files and no others,
check their row counts, and never hand dataset metadata to an unpickler."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas import DatasetDamagedError, DatasetLayout
from training.data import LoaderConfig, ReaderKind, open_loader

READERS = [ReaderKind.ARROW, ReaderKind.PETASTORM]


def _copy(digits_dataset, tmp_path) -> tuple[Path, DatasetLayout]:
    root = tmp_path / "ds"
    shutil.copytree(digits_dataset, root)
    return root, DatasetLayout(str(root))


def _ids(root: Path, reader: ReaderKind) -> list[str]:
    with open_loader(LoaderConfig(data=str(root), reader=reader, batch_size=8, with_ids=True, shuffle=False)) as loader:
        return [i for b in loader.epoch(0) for i in b.ids]


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.value)
def test_a_file_the_manifest_does_not_list_does_not_exist_for_readers(digits_dataset, tmp_path, reader):
    root, layout = _copy(digits_dataset, tmp_path)
    before = _ids(root, reader)
    # an orphan of a crashed run: a whole extra partition, and an extra part file inside a listed partition
    orphan_dir = Path(layout.images) / "run_id=crashed"
    orphan_dir.mkdir()
    shutil.copy(Path(layout.images) / "run_id=r0" / "part-00000.parquet", orphan_dir / "part-00000.parquet")
    shutil.copy(Path(layout.images) / "run_id=r0" / "part-00000.parquet", Path(layout.images) / "run_id=r0" / "part-09999.parquet")
    after = _ids(root, reader)
    assert sorted(after) == sorted(before) and len(after) == len(set(after))


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.value)
def test_a_listed_file_that_is_missing_is_named(digits_dataset, tmp_path, reader):
    root, layout = _copy(digits_dataset, tmp_path)
    gone = Path(layout.images) / "run_id=r0" / "part-00001.parquet"
    gone.unlink()
    with pytest.raises(DatasetDamagedError, match=r"part-00001\.parquet: listed in .*manifest\.json with \d+ rows but missing"):
        open_loader(LoaderConfig(data=str(root), reader=reader, batch_size=8))


def test_a_listed_file_with_other_rows_is_named(digits_dataset, tmp_path):
    root, layout = _copy(digits_dataset, tmp_path)
    part = Path(layout.images) / "run_id=r0" / "part-00000.parquet"
    table = pq.read_table(part)
    pq.write_table(table.slice(0, table.num_rows - 3), part)
    with pytest.raises(DatasetDamagedError, match=rf"part-00000\.parquet: holds {table.num_rows - 3} rows, .* lists {table.num_rows}"):
        open_loader(LoaderConfig(data=str(root), batch_size=8))


def test_a_manifest_entry_outside_the_tables_is_refused(digits_dataset, tmp_path):
    root, layout = _copy(digits_dataset, tmp_path)
    m = json.loads(Path(layout.manifest).read_text())
    m["files"]["images"][0]["path"] = "images/../../outside.parquet"
    Path(layout.manifest).write_text(json.dumps(m))
    with pytest.raises(DatasetDamagedError, match="is not a path under images/"):
        open_loader(LoaderConfig(data=str(root), batch_size=8))


class _Payload:
    """Unpickling this calls builtins.exec, as a crafted petastorm unischema would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_petastorm_reader_never_unpickles_planted_common_metadata(digits_dataset, tmp_path):
    """The payload of the 7/9 report: `_common_metadata` whose `dataset-toolkit.unischema.v1` key is a pickle that
    runs exec. petastorm's own reader, given the images/ directory, runs it (checked first, so the test can fail);
    ours, given the manifest's file list, never reads that file."""
    root, layout = _copy(digits_dataset, tmp_path)
    marker = tmp_path / "pwned"
    schema = pq.ParquetFile(next(Path(layout.images).rglob("part-*.parquet"))).schema_arrow
    evil = schema.with_metadata({**(schema.metadata or {}), b"dataset-toolkit.unischema.v1": pickle.dumps(_Payload(marker))})
    pq.write_metadata(evil, Path(layout.images) / "_common_metadata")

    from petastorm.etl.dataset_metadata import get_schema_from_dataset_url

    get_schema_from_dataset_url("file://" + layout.images)  # what petastorm does with the directory: unpickle -> exec
    assert marker.read_text() == "pwned"
    marker.unlink()

    ids = _ids(root, ReaderKind.PETASTORM)
    assert len(ids) == 96
    assert not marker.exists()


def test_a_file_carrying_petastorm_pickled_keys_is_refused(digits_dataset, tmp_path):
    root, layout = _copy(digits_dataset, tmp_path)
    marker = tmp_path / "pwned"
    part = Path(layout.images) / "run_id=r0" / "part-00000.parquet"
    table = pq.read_table(part)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"dataset-toolkit.unischema.v1": pickle.dumps(_Payload(marker))})
    pq.write_table(table, part)
    for reader in READERS:
        with pytest.raises(ValueError, match=r"footer metadata carries \['dataset-toolkit.unischema.v1'\]"):
            open_loader(LoaderConfig(data=str(root), reader=reader, batch_size=8))
    assert not marker.exists()
