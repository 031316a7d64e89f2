"""Where things live in a preprocessed dataset, and what manifest.json holds.

    OUT/
      images/run_id=<run>/part-*.parquet       IMAGES_ARROW rows (one partition per run)
      rejects/run_id=<run>/part-*.parquet      REJECTS_ARROW rows
      duplicates/run_id=<run>/part-*.parquet   DUPLICATES_ARROW rows
      manifest.json                            written last, atomically: the commit point
      _staging/<run>/                          a run in progress (removed on commit)
      _lock                                    held by the one writer (pid, host, start time)
      _imagegen.json                           the mark: written first, into an absent or empty OUT

Only what carries imagegen's mark is ever removed. OUT itself is ours when it holds `_imagegen.json` (or, for a
dataset written before the mark existed, a manifest.json this code reads); inside it, only names of our own
making are leftovers a writer may remove: `_staging/<run id>`, `<table>/run_id=<run id>/` and the files Spark
writes there (part-*, _SUCCESS, their .crc siblings). A user's file anywhere else is never touched.

The manifest defines the dataset: it lists every data file with its row count (`files`), and
readers read exactly those files, checking the counts (`listed_files`). A file under images/,
rejects/ or duplicates/ that the manifest does not list does not exist for any reader; the next
writer removes it. A run writes under _staging/, moves its files into their partitions, and
then replaces manifest.json atomically: a crash before that leaves the old dataset (plus
orphans nobody reads), a crash after it leaves the new one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any

import pyarrow.parquet as pq

from schemas.images import SCHEMA_VERSION
from schemas.uri import uri_to_path

TABLES = ("images", "rejects", "duplicates")
MARK_NAME = "_imagegen.json"
# new_run_id(): UTC second, then 6 hex digits (20260101T000000Z-0a1b2c)
RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
# what Spark's Parquet writer leaves in a partition: data files, the commit marker, Hadoop's local-FS checksums
_WRITER_FILE_RE = re.compile(r"^\.?(part-[0-9]{5}-[0-9a-f-]{36}(-c[0-9]{3})?(\.[a-z0-9]+)*\.parquet|_SUCCESS)(\.crc)?$")


def is_run_id(name: str) -> bool:
    return RUN_ID_RE.match(name) is not None


def is_run_partition(name: str) -> bool:
    """`run_id=<run id>`: a partition directory a run of ours wrote."""
    return name.startswith("run_id=") and is_run_id(name[len("run_id="):])


def is_writer_file(name: str) -> bool:
    """A file name Spark's Parquet writer makes inside a partition (and nothing a person would name a file)."""
    return _WRITER_FILE_RE.match(name) is not None


class DatasetDamagedError(ValueError):
    """A data file the manifest lists is missing or does not hold the rows the manifest says."""


@dataclasses.dataclass(frozen=True)
class DatasetLayout:
    root: str  # a local path or a URI (file:, hdfs:, s3a:)

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    @property
    def images(self) -> str:
        return self._join("images")

    @property
    def rejects(self) -> str:
        return self._join("rejects")

    @property
    def duplicates(self) -> str:
        return self._join("duplicates")

    @property
    def manifest(self) -> str:
        return self._join("manifest.json")

    @property
    def mark(self) -> str:
        return self._join(MARK_NAME)

    @property
    def lock(self) -> str:
        return self._join("_lock")

    def staging(self, run_id: str) -> str:
        return self._join("_staging", run_id)

    def table(self, name: str) -> str:
        if name not in TABLES:
            raise ValueError(f"unknown table {name!r}; expected one of {TABLES}")
        return self._join(name)

    def resolve(self, relpath: str) -> str:
        """A manifest `files` path (relative to the root, '/'-separated) -> path or URI under the root."""
        parts = relpath.split("/")
        if relpath.startswith("/") or ".." in parts or parts[0] not in TABLES:
            raise DatasetDamagedError(f"{self.manifest}: file entry {relpath!r} is not a path under {'/, '.join(TABLES)}/")
        return self._join(*parts)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """manifest.json. Counts are cumulative over all runs of the dataset; `runs` keeps each run's own."""

    schema_version: int
    run_id: str                        # the newest run
    resolution: int                    # width == height == resolution
    channels: int
    pixel_encoding: str                # "raw" | "png"
    classes: list[str]                 # label_index -> label
    counts: dict[str, Any]             # inputs, written, rejected{reason: n}, duplicates{exact, near}
    label_counts: dict[str, int]
    pixel_mean: list[float]            # per channel, of the written pixels scaled to [0, 1]
    pixel_std: list[float]
    config: dict[str, Any]
    input_fingerprint: str
    timings: dict[str, float]          # seconds per stage
    versions: dict[str, str]           # software that wrote it
    # table -> [{"path": "images/run_id=<run>/part-....parquet", "rows": n}]: THE data files of the dataset, paths
    # relative to the root. Nothing else under images/, rejects/, duplicates/ is part of it.
    files: dict[str, list[dict[str, Any]]]
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def class_to_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def data_files(self, table: str) -> list[tuple[str, int]]:
        """(path relative to the root, rows) of each listed file of `table`, in listed order."""
        return [(str(f["path"]), int(f["rows"])) for f in self.files.get(table, [])]

    def rows(self, table: str) -> int:
        return sum(n for _, n in self.data_files(table))

    @property
    def manifest_id(self) -> str:
        """Identifies the exact dataset content a checkpoint was trained on."""
        return hashlib.sha256(json.dumps([self.run_id, self.input_fingerprint, self.counts], sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"manifest schema_version is {d.get('schema_version')!r}, this code reads {SCHEMA_VERSION} "
                "(re-run `imagegen preprocess --overwrite` to rewrite the dataset)"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in d and n not in ("runs", "extra"))
        if missing:
            raise ValueError(f"manifest is missing fields {missing}; present: {sorted(d)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def read(cls, dataset_root: str) -> "Manifest":
        """Read OUT/manifest.json from a local path (or file: URI)."""
        path = uri_to_path(DatasetLayout(dataset_root).manifest)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: {dataset_root} is not a complete imagegen dataset (no manifest); "
                                    f"make one with `imagegen preprocess INPUT --output {dataset_root}`")
        with open(path) as f:
            return cls.from_dict(json.load(f))


def listed_files(dataset_root: str, manifest: Manifest, table: str, check_rows: bool = True) -> list[str]:
    """Local paths of the files `manifest` lists for `table`, after checking that each exists and (check_rows, from
    the Parquet footer only) holds exactly the rows the manifest says. Raises DatasetDamagedError otherwise."""
    layout = DatasetLayout(uri_to_path(dataset_root))
    paths = []
    for rel, rows in manifest.data_files(table):
        path = layout.resolve(rel)
        if not os.path.isfile(path):
            raise DatasetDamagedError(
                f"{path}: listed in {layout.manifest} with {rows} rows but missing; the dataset is damaged "
                "(re-run `imagegen preprocess --overwrite`)"
            )
        if check_rows:
            check_file_rows(path, pq.ParquetFile(path).metadata.num_rows, rows, layout.manifest)
        paths.append(path)
    return paths


def check_file_rows(path: str, found: int, listed: int, manifest_path: str) -> None:
    """A listed file must hold exactly the rows its manifest entry says (readers that open the footer anyway call this
    instead of having listed_files open it a second time)."""
    if found != listed:
        raise DatasetDamagedError(
            f"{path}: holds {found} rows, {manifest_path} lists {listed}; the dataset is damaged "
            "(re-run `imagegen preprocess --overwrite`)"
        )
