"""What a dataset holds, from metadata only: the manifest, and the row groups of the data files it lists.

A reader sees exactly the files the manifest lists (schemas/layout.py), each checked against its listed row count;
a file that is not listed does not exist for it.
"""
from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import SCHEMA_VERSION, DatasetLayout, Manifest, listed_files
from schemas.layout import check_file_rows
from schemas.pixels import PixelEncoding
from schemas.uri import uri_to_path


@dataclasses.dataclass(frozen=True)
class RowGroup:
    path: str        # local path of the Parquet file
    index: int       # row group index within the file
    num_rows: int


_REQUIRED_TYPES = {
    "image_id": (pa.types.is_string, pa.types.is_large_string),
    "pixels": (pa.types.is_binary, pa.types.is_large_binary),
    "label_index": (pa.types.is_integer,),
}


# Footer keys petastorm unpickles (petastorm.etl.dataset_metadata.UNISCHEMA_KEY and its kin). We never write them, and
# a dataset that carries them was not written by us: refused, so no reader ever hands them to an unpickler.
_FOREIGN_PICKLED_KEY_PREFIX = b"dataset-toolkit."


def _check_file_schema(path: str, schema: pa.Schema) -> None:
    meta = schema.metadata or {}
    foreign = sorted(k.decode(errors="replace") for k in meta if k.startswith(_FOREIGN_PICKLED_KEY_PREFIX))
    if foreign:
        raise ValueError(
            f"{path}: footer metadata carries {foreign}, pickled objects imagegen never writes; refusing to read a file "
            "whose metadata would be unpickled (rewrite the dataset with `imagegen preprocess`)"
        )
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
class DatasetInfo:
    root: str
    images_dir: str
    manifest: Manifest
    encoding: PixelEncoding
    files: tuple[str, ...]            # local paths of the listed image files, in listed order
    row_groups: tuple[RowGroup, ...]  # files in listed order, row groups in file order, empty ones left out
    has_labels: bool

    @property
    def num_rows(self) -> int:
        return sum(g.num_rows for g in self.row_groups)


def inspect_dataset(data: str) -> DatasetInfo:
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
    # Exactly the files the manifest lists, each checked to exist and to hold its listed rows (footer only): a file
    # a crashed or concurrent run left under images/ does not exist for a reader.
    # Existence checked here; the row counts below, from the one footer read each file gets.
    files = listed_files(root, manifest, "images", check_rows=False)
    if not files:
        raise ValueError(f"{DatasetLayout(root).manifest} lists no image files: the dataset has no rows")
    groups: list[RowGroup] = []
    for path, (_, listed_rows) in zip(files, manifest.data_files("images")):
        pf = pq.ParquetFile(path)
        check_file_rows(path, pf.metadata.num_rows, listed_rows, DatasetLayout(root).manifest)
        _check_file_schema(path, pf.schema_arrow)
        _check_stats(path, pf.metadata, manifest)
        for i in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(i).num_rows
            if n > 0:
                groups.append(RowGroup(path=path, index=i, num_rows=n))
    return DatasetInfo(
        root=root,
        images_dir=images_dir,
        manifest=manifest,
        encoding=encoding,
        files=tuple(files),
        row_groups=tuple(groups),
        has_labels=bool(manifest.classes),
    )
