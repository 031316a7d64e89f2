"""Driver-side filesystem operations for any URI: plain local paths through os/shutil, anything with a
scheme (file:, hdfs:, s3a:, ...) through Hadoop's FileSystem API in Spark's JVM, so the job works
wherever the cluster's Hadoop configuration does."""
from __future__ import annotations

import dataclasses
import os
import shutil
import uuid

from pyspark.sql import SparkSession


def has_scheme(uri: str) -> bool:
    head = uri.split("/", 1)[0]
    return ":" in head and len(head.split(":", 1)[0]) > 1  # "C:" style drive letters are not schemes


def local_path(uri: str) -> str:
    """The OS path of a local file given as a file: URI (file:/x, file:///x) or a plain path."""
    return "/" + uri[len("file:"):].lstrip("/") if uri.startswith("file:") else uri


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
        """The fully qualified URI Spark reports for this path (e.g. /data/x -> file:/data/x)."""
        if not has_scheme(uri):
            uri = os.path.abspath(uri)
        path, fs = self._hpath(uri)
        return fs.makeQualified(path).toString()

    def exists(self, uri: str) -> bool:
        if not has_scheme(uri):
            return os.path.exists(uri)
        path, fs = self._hpath(uri)
        return bool(fs.exists(path))

    def is_dir(self, uri: str) -> bool:
        if not has_scheme(uri):
            return os.path.isdir(uri)
        path, fs = self._hpath(uri)
        return bool(fs.exists(path) and fs.getFileStatus(path).isDirectory())

    def list(self, uri: str) -> list[Entry]:
        """Direct children, qualified URIs, sorted."""
        if not has_scheme(uri):
            base = os.path.abspath(uri)
            prefix = self.qualify(base).rstrip("/")  # one JVM call; children are prefix/name
            out = []
            with os.scandir(base) as it:
                for d in it:
                    is_dir = d.is_dir()
                    out.append(Entry(f"{prefix}/{d.name}", is_dir, 0 if is_dir else d.stat().st_size))
            return sorted(out, key=lambda e: e.uri)
        path, fs = self._hpath(uri)
        return sorted(
            (Entry(s.getPath().toString(), bool(s.isDirectory()), int(s.getLen())) for s in fs.listStatus(path)),
            key=lambda e: e.uri,
        )

    def mkdirs(self, uri: str) -> None:
        if not has_scheme(uri):
            os.makedirs(uri, exist_ok=True)
            return
        path, fs = self._hpath(uri)
        fs.mkdirs(path)

    def delete(self, uri: str) -> None:
        if not has_scheme(uri):
            if os.path.isdir(uri):
                shutil.rmtree(uri)
            elif os.path.exists(uri):
                os.remove(uri)
            return
        path, fs = self._hpath(uri)
        fs.delete(path, True)

    def rename(self, src: str, dst: str) -> None:
        """Move src to dst (dst must not exist); its parent is created."""
        if self.exists(dst):
            raise FileExistsError(f"cannot move {src} to {dst}: the destination exists")
        parent = dst.rstrip("/").rsplit("/", 1)[0]
        self.mkdirs(parent)
        if not has_scheme(src):
            os.rename(src, dst)
            return
        s, fs = self._hpath(src)
        d, _ = self._hpath(dst)
        if not fs.rename(s, d):
            raise OSError(f"Hadoop FileSystem.rename({src}, {dst}) returned false")

    def write_text_atomic(self, uri: str, text: str) -> None:
        """Write to a temporary sibling, then rename over: readers see the old file or the whole new one."""
        tmp = f"{uri}.tmp-{uuid.uuid4().hex[:8]}"
        if not has_scheme(uri):
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, uri)
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

    def read_text(self, uri: str) -> str:
        if not has_scheme(uri):
            with open(uri) as f:
                return f.read()
        return "\n".join(r.value for r in self.spark.read.text(uri, wholetext=True).collect())
