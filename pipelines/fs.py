"""Driver-side filesystem operations for any URI: local files (plain paths and file: URIs) through
os/shutil, every other scheme (hdfs:, s3a:, ...) through Hadoop's FileSystem API in Spark's JVM, so the
job works wherever the cluster's Hadoop configuration does.

Local files never go through Hadoop's Path: it percent-encodes some names (a space, ``%``, ``#``) in
some of its spellings, and refuses others (a ``:`` in a relative name). A local file's URI is spelled
by schemas/uri.py (``file:`` + absolute path, never percent-encoded), the one rule from listing to output."""
from __future__ import annotations

import dataclasses
import os
import shutil
import uuid

from pyspark.sql import SparkSession

from schemas.uri import has_scheme, is_local, path_to_uri, uri_to_path

__all__ = ["Entry", "FileSystem", "has_scheme", "is_local", "local_path", "os_path"]

# The OS path of a local file given as a file: URI (file:/x, file:///x) or a plain path (schemas/uri.py).
local_path = uri_to_path


def os_path(uri: str) -> str | None:
    """The OS path of a local URI (plain path or file: URI); None for any other scheme."""
    return uri_to_path(uri) if is_local(uri) else None


@dataclasses.dataclass(frozen=True)
class Entry:
    uri: str
    is_dir: bool
    length: int


class FileSystem:
    """exists / list / rename / delete / write_text for local paths and Hadoop URIs."""

    def __init__(self, spark: SparkSession):
        self.spark = spark

    # -- Hadoop plumbing
    def _hpath(self, uri: str):
        jvm = self.spark._jvm
        path = jvm.org.apache.hadoop.fs.Path(uri)
        return path, path.getFileSystem(self.spark._jsc.hadoopConfiguration())

    def qualify(self, uri: str) -> str:
        """The fully qualified URI of this path: local files by schemas.uri (/data/x, file:///data/x ->
        file:/data/x), other schemes as Hadoop qualifies them (what Spark reports for them)."""
        local = os_path(uri)
        if local is not None:
            return path_to_uri(local)
        path, fs = self._hpath(uri)
        return fs.makeQualified(path).toString()

    def exists(self, uri: str) -> bool:
        local = os_path(uri)
        if local is not None:
            return os.path.exists(local)
        path, fs = self._hpath(uri)
        return bool(fs.exists(path))

    def is_dir(self, uri: str) -> bool:
        local = os_path(uri)
        if local is not None:
            return os.path.isdir(local)
        path, fs = self._hpath(uri)
        return bool(fs.exists(path) and fs.getFileStatus(path).isDirectory())

    def list(self, uri: str) -> list[Entry]:
        """Direct children, qualified URIs, sorted."""
        local = os_path(uri)
        if local is not None:
            base = os.path.abspath(local)
            out = []
            with os.scandir(base) as it:
                for d in it:
                    is_dir = d.is_dir()
                    try:
                        length = 0 if is_dir else d.stat().st_size
                    except OSError:  # a dangling symlink: listed (the job reports it), no length
                        length = 0
                    out.append(Entry(path_to_uri(os.path.join(base, d.name)), is_dir, length))
            return sorted(out, key=lambda e: e.uri)
        path, fs = self._hpath(uri)
        return sorted(
            (Entry(s.getPath().toString(), bool(s.isDirectory()), int(s.getLen())) for s in fs.listStatus(path)),
            key=lambda e: e.uri,
        )

    def mkdirs(self, uri: str) -> None:
        local = os_path(uri)
        if local is not None:
            os.makedirs(local, exist_ok=True)
            return
        path, fs = self._hpath(uri)
        fs.mkdirs(path)

    def delete(self, uri: str) -> None:
        local = os_path(uri)
        if local is not None:
            if os.path.isdir(local) and not os.path.islink(local):
                shutil.rmtree(local)
            elif os.path.lexists(local):
                os.remove(local)
            return
        path, fs = self._hpath(uri)
        fs.delete(path, True)

    def rename(self, src: str, dst: str) -> None:
        """Move src to dst (dst must not exist); its parent is created."""
        if self.exists(dst):
            raise FileExistsError(f"cannot move {src} to {dst}: the destination exists")
        parent = dst.rstrip("/").rsplit("/", 1)[0]
        self.mkdirs(parent)
        if os_path(src) is not None and os_path(dst) is not None:
            os.rename(os_path(src), os_path(dst))
            return
        s, fs = self._hpath(src)
        d, _ = self._hpath(dst)
        if not fs.rename(s, d):
            raise OSError(f"Hadoop FileSystem.rename({src}, {dst}) returned false")

    def write_text_atomic(self, uri: str, text: str) -> None:
        """Write to a temporary sibling, then rename over: readers see the old file or the whole new one."""
        tmp = f"{uri}.tmp-{uuid.uuid4().hex[:8]}"
        if os_path(uri) is not None:
            with open(os_path(tmp), "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(os_path(tmp), os_path(uri))
            return
        path, fs = self._hpath(tmp)
        stream = fs.create(path, True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        final, _ = self._hpath(uri)
        if fs.exists(final):
            fs.delete(final, False)
        if not fs.rename(path, final):
            raise OSError(f"Hadoop FileSystem.rename({tmp}, {uri}) returned false")

    def create_exclusive(self, uri: str, text: str) -> bool:
        """Create `uri` holding `text` only if it does not exist (atomically: O_EXCL locally, Hadoop's create with
        overwrite=false elsewhere). False if it already exists."""
        local = os_path(uri)
        if local is not None:
            try:
                fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            return True
        path, fs = self._hpath(uri)
        try:
            stream = fs.create(path, False)
        except Exception as exc:  # py4j wraps org.apache.hadoop.fs.FileAlreadyExistsException
            if "FileAlreadyExists" in str(exc) or fs.exists(path):
                return False
            raise
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        return True

    def mtime(self, uri: str) -> float:
        """Seconds since the epoch of the last modification."""
        local = os_path(uri)
        if local is not None:
            return os.stat(local).st_mtime
        path, fs = self._hpath(uri)
        return fs.getFileStatus(path).getModificationTime() / 1000.0

    def read_text(self, uri: str) -> str:
        local = os_path(uri)
        if local is not None:
            with open(local) as f:
                return f.read()
        return "\n".join(r.value for r in self.spark.read.text(uri, wholetext=True).collect())
