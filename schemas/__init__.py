"""The contract between `pipelines` (writers) and `training` (readers).

Defined once, here: the Parquet schemas (Spark StructType and pyarrow twin, side by side),
their version, the reject-reason vocabulary and the manifest layout. Imports neither
`pipelines` nor `training` (tests/test_layering.py enforces it).
"""
from schemas.images import (
    DUPLICATES_ARROW,
    DuplicateKind,
    IMAGES_ARROW,
    REJECTS_ARROW,
    RejectReason,
    SCHEMA_VERSION,
    duplicates_spark,
    images_spark,
    rejects_spark,
)
from schemas.layout import TABLES, DatasetDamagedError, DatasetLayout, Manifest, listed_files

__all__ = [
    "DUPLICATES_ARROW",
    "DatasetDamagedError",
    "DatasetLayout",
    "DuplicateKind",
    "IMAGES_ARROW",
    "Manifest",
    "REJECTS_ARROW",
    "RejectReason",
    "SCHEMA_VERSION",
    "TABLES",
    "duplicates_spark",
    "images_spark",
    "listed_files",
    "rejects_spark",
]
