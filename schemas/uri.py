"""The one spelling of a local file's URI, from listing to output.

A local file's `source_uri` is ``file:`` followed by its absolute path, byte for byte: no
percent-encoding, no ``//`` authority (``file:/data/a b#1.png``). That is how Hadoop's
``Path.toString()`` spells a local file, so URIs we build and URIs Spark reports agree, and a
name with a space, ``%``, ``#``, ``?``, ``[`` or a newline keeps exactly one spelling. Readers map
it back with `uri_to_path`. Both halves (pipelines and training) use these two functions.
"""
from __future__ import annotations

import os

FILE_SCHEME = "file:"


def has_scheme(uri: str) -> bool:
    """True for ``file:/x``, ``hdfs://nn/x``, ``s3a://b/x``; False for plain paths and ``C:\\`` drive letters."""
    head = uri.split("/", 1)[0]
    return ":" in head and len(head.split(":", 1)[0]) > 1


def is_local(uri: str) -> bool:
    """A plain path or a file: URI."""
    return uri.startswith(FILE_SCHEME) or not has_scheme(uri)


def path_to_uri(path: str | os.PathLike[str]) -> str:
    """An OS path -> its file: URI (absolute, not resolved through symlinks, never percent-encoded)."""
    return FILE_SCHEME + os.path.abspath(os.fspath(path))


def uri_to_path(uri: str) -> str:
    """A file: URI (``file:/x``, ``file:///x``) or a plain path -> the OS path. Other schemes are refused."""
    if uri.startswith(FILE_SCHEME):
        return "/" + uri[len(FILE_SCHEME):].lstrip("/")
    if has_scheme(uri):
        raise ValueError(f"expected a local path or file: URI, got {uri!r}")
    return uri
