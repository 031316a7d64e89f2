"""Inputs on other schemes (hdfs:, s3a:, ...): Spark's binaryFile source, and URI lists.
"""
from __future__ import annotations

from collections import defaultdict
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from pipelines.fs import FileSystem, has_scheme
from pipelines.source_rows import SOURCE_ARROW
from pipelines.sources.spec import (
    InputSpec,
)
from schemas.uri import FILE_SCHEME


def _with_rel_path(df: DataFrame, root: str) -> DataFrame:
    prefix = root.rstrip("/") + "/"
    rel = F.when(F.col("path").startswith(prefix), F.expr(f"substring(path, {len(prefix) + 1})"))
    return df.select(
        F.col("path").alias("source_uri"),
        rel.alias("rel_path"),
        F.col("content"),
        F.col("length"),
        F.lit(None).cast("string").alias("source_error"),
        F.col("read_uri"),
    )


def hadoop_spelling(uri: str) -> str:
    """DataFrame.inputFiles() spells a file as Hadoop's Path.toUri().toString(): percent-encoded
    (`s3a://b/a%20b.png`, `file:///x`); binaryFile's path column as Path.toString(): decoded
    (`s3a://b/a b.png`, `file:/x`). This maps the first spelling to the second (java.net.URI's decoding of
    the path: %XX escapes, UTF-8), so the two can be compared."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return unquote(uri)
    authority, slash, path = rest.partition("/")
    if scheme == "file" and not authority:
        return FILE_SCHEME + "/" + unquote(path)
    return f"{scheme}://{authority}{slash}{unquote(path)}"


def _binary_files(spark: SparkSession, paths: list[str], recursive: bool, exclude: tuple[str, ...] = ()) -> tuple[DataFrame, int]:
    """binaryFile rows (path, content, length, read_uri=null), zero-length files included, and the number of
    files the file index lists (the independent input count). For schemes other than file:.

    Spark's file scan silently drops zero-length files; they are inputs too (empty_file rejects).
    So the scan's paths are checked against the file index's listing (a count, no content read), both in
    the path column's spelling (`hadoop_spelling`), and only when they differ are the missing files added
    back with empty content."""
    reader = spark.read.format("binaryFile")
    if recursive:
        reader = reader.option("recursiveFileLookup", "true")
    df = reader.load(paths if len(paths) > 1 else paths[0])
    df = df.select("path", "content", "length", F.lit(None).cast("string").alias("read_uri"))
    listed = [u for u in (hadoop_spelling(u) for u in df.inputFiles()) if u not in exclude]
    if exclude:
        df = df.where(~F.col("path").isin(list(exclude)))
    if df.select("path").count() == len(listed):
        return df, len(listed)
    listing = spark.createDataFrame([(u,) for u in listed], "path string")
    dropped = listing.join(df.select("path"), "path", "left_anti")
    empty = dropped.select("path", F.lit(bytearray()).alias("content"), F.lit(0).cast("long").alias("length"),
                           F.lit(None).cast("string").alias("read_uri"))
    return df.unionByName(empty), len(listed)


def _files_frame(spark: SparkSession, spec: InputSpec, exclude: tuple[str, ...]) -> tuple[DataFrame, int]:
    df, n = _binary_files(spark, [spec.uri], True, exclude)
    return _with_rel_path(df, spec.root), n


def read_uri_list(spark: SparkSession, spec: InputSpec) -> list[str]:
    """The list file's entries, qualified, in order, without duplicates. Entries are literal paths, not
    globs: `a[1].png` is the file named so."""
    fs = FileSystem(spark)
    text = fs.read_text(spec.uri)
    seen: dict[str, None] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not has_scheme(line) and not line.startswith("/"):
            line = spec.root.rstrip("/") + "/" + line
        seen.setdefault(fs.qualify(line), None)
    return list(seen)


def _uri_list_frame(spark: SparkSession, spec: InputSpec, uris: list[str]) -> tuple[DataFrame, int]:
    """The list's non-local entries (local ones are listed with the local files)."""
    fs = FileSystem(spark)
    # Existence by listing each parent directory once (not one request per file).
    by_parent: dict[str, list[str]] = defaultdict(list)
    for u in uris:
        by_parent[u.rsplit("/", 1)[0]].append(u)
    present, missing = [], []
    for parent, children in by_parent.items():
        listed = {e.uri: e for e in fs.list(parent)} if fs.is_dir(parent) else {}
        for u in children:
            entry = listed.get(u)
            if entry is not None and not entry.is_dir:
                present.append(u)
            else:
                missing.append((u, u, None, None, f"listed in {spec.uri} but not found (or a directory)", None))
    schema = from_arrow_schema(SOURCE_ARROW)
    frames = []
    if present:
        df, _ = _binary_files(spark, present, False, ())
        frames.append(df.select(F.col("path").alias("source_uri"), F.col("path").alias("rel_path"), "content", "length",
                                F.lit(None).cast("string").alias("source_error"), "read_uri"))
    if missing:
        frames.append(spark.createDataFrame(missing, schema))
    if not frames:
        return spark.createDataFrame([], schema), 0
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out, len(uris)
