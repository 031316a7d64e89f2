"""What an input is: its kind (FILES, URI_LIST, TAR, PARQUET, URL_TABLE, see pipelines/sources/__init__.py) and the
suffixes that decide it.
"""
from __future__ import annotations

import dataclasses
import enum

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LIST_SUFFIXES = (".txt", ".lst", ".list", ".uris")
PARQUET_SUFFIXES = (".parquet", ".pq")
GLOB_CHARS = "*?[{"
# webdataset keeps per-sample metadata next to the image under the same key; these are not images.
WEBDATASET_SIDECARS = (".json", ".txt", ".cls", ".cls2", ".xml", ".npy", ".pyd", ".pickle", ".pth", ".id", ".key", ".caption", ".idx")
IMAGE_COLUMN_GUESSES = ("image", "bytes", "content", "jpg", "jpeg", "png", "img")
TAR_OUTPUT_BATCH_ROWS = 32
TAR_OUTPUT_BATCH_BYTES = 64 * 1024 * 1024


class InputKind(str, enum.Enum):
    FILES = "files"
    URI_LIST = "uri_list"
    TAR = "tar"
    PARQUET = "parquet"
    URL_TABLE = "url_table"  # with url_column: a table of URLs the decode stage fetches (sources/urls.py)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    uri: str              # as given
    kind: InputKind
    root: str             # qualified URI that rel_path is relative to
    paths: tuple[str, ...] = ()  # TAR: the shard URIs


def _is_glob(uri: str) -> bool:
    return any(c in uri for c in GLOB_CHARS)
