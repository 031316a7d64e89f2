"""Where things live in a preprocessed dataset, and what manifest.json holds.

    OUT/
      images/run_id=<run>/part-*.parquet       IMAGES_ARROW rows (one partition per run)
      rejects/run_id=<run>/part-*.parquet      REJECTS_ARROW rows
      duplicates/run_id=<run>/part-*.parquet   DUPLICATES_ARROW rows
      manifest.json                            written last: its presence means "complete"
      _staging/<run>/                          a run in progress (removed on commit)

A run writes under _staging/ and moves its partitions into place only at the end, so a
failed job leaves no manifest.json and nothing that looks complete.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from schemas.images import SCHEMA_VERSION
from schemas.uri import uri_to_path


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

    def staging(self, run_id: str) -> str:
        return self._join("_staging", run_id)


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
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def class_to_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    @property
    def manifest_id(self) -> str:
        """Identifies the exact dataset content a checkpoint was trained on."""
        return hashlib.sha256(json.dumps([self.run_id, self.input_fingerprint, self.counts], sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"manifest schema_version is {d.get('schema_version')!r}, this code reads {SCHEMA_VERSION}")
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
            raise FileNotFoundError(f"{path} not found: {dataset_root} is not a complete imagegen dataset (no manifest)")
        with open(path) as f:
            return cls.from_dict(json.load(f))
