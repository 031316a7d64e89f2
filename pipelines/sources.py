"""Ingest: every input kind -> one DataFrame of SOURCE_ARROW rows (source_uri, rel_path, content, length, source_error, read_uri).

Local (file:) files are listed by Spark and read by the decode stage itself (content null, read_uri set)
unless PreprocessConfig.read_local_in_worker is off; every other scheme carries its bytes in `content`.

Input kinds (classified on the driver, see `classify`):
  FILES     a directory (read recursively), a glob, or a single file: Spark's binaryFile source.
            Spark skips names starting with "_" or "." (its hidden-file rule); everything else is an input.
  URI_LIST  a .txt/.lst/.list/.uris file with one URI or path per line ("#" comments, blank lines
            skipped, relative paths resolved against the list's directory). Listed files are read with
            binaryFile; a listed file that does not exist becomes a read_error reject.
  TAR       a .tar/.tar.gz/.tgz shard, or a directory holding only shards (webdataset-style). Each
            shard is streamed member by member inside a mapInArrow (memory: one member plus one output
            batch), source_uri = "<shard uri>#<member path>". Webdataset sidecar members (.json, .txt,
            .cls, ...) are not images and are skipped (counted in the manifest as tar_sidecars_skipped
            when the job runs). Shards are opened with pyarrow.fs (file:, s3 (s3a: is mapped), hdfs:).
  PARQUET   a Parquet file or dataset directory with an image-bytes column (`image_column`, or the
            first of image/bytes/content/jpg/png/img; a struct {bytes, path} as Hugging Face datasets
            write is understood). source_uri = "<parquet file>#row=<row index in that file>".
"""
from __future__ import annotations

import dataclasses
import enum
import os
import posixpath
import tarfile
from collections import defaultdict
from typing import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from pipelines.config import PreprocessConfig
from pipelines.decode import SOURCE_ARROW
from pipelines.fs import FileSystem, has_scheme, local_path

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


@dataclasses.dataclass(frozen=True)
class InputSpec:
    uri: str              # as given
    kind: InputKind
    root: str             # qualified URI that rel_path is relative to
    paths: tuple[str, ...] = ()  # TAR: the shard URIs


def _is_glob(uri: str) -> bool:
    return any(c in uri for c in GLOB_CHARS)


def classify(spark: SparkSession, uri: str) -> InputSpec:
    """Decide what kind of input `uri` is. Raises FileNotFoundError / ValueError with what was found."""
    fs = FileSystem(spark)
    if _is_glob(uri):
        parts = uri.split("/")
        fixed = []
        for part in parts:
            if _is_glob(part):
                break
            fixed.append(part)
        root = "/".join(fixed) or "."
        return InputSpec(uri, InputKind.FILES, fs.qualify(root))
    if not fs.exists(uri):
        raise FileNotFoundError(f"input {uri!r} does not exist (expected a directory, glob, URI list, tar shard or Parquet dataset)")
    lower = uri.lower().rstrip("/")
    if fs.is_dir(uri):
        entries = [e for e in fs.list(uri) if not posixpath.basename(e.uri).startswith(("_", "."))]
        files = [e for e in entries if not e.is_dir]
        if files and all(e.uri.lower().endswith(TAR_SUFFIXES) for e in files) and not any(e.is_dir for e in entries):
            return InputSpec(uri, InputKind.TAR, fs.qualify(uri), tuple(e.uri for e in files))
        if files and all(e.uri.lower().endswith(PARQUET_SUFFIXES) for e in files):
            return InputSpec(uri, InputKind.PARQUET, fs.qualify(uri))
        return InputSpec(uri, InputKind.FILES, fs.qualify(uri))
    parent = fs.qualify(uri).rsplit("/", 1)[0]
    if lower.endswith(TAR_SUFFIXES):
        return InputSpec(uri, InputKind.TAR, parent, (fs.qualify(uri),))
    if lower.endswith(PARQUET_SUFFIXES):
        return InputSpec(uri, InputKind.PARQUET, parent)
    if lower.endswith(LIST_SUFFIXES):
        return InputSpec(uri, InputKind.URI_LIST, parent)
    return InputSpec(uri, InputKind.FILES, parent)  # a single image file


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


def _spark_path(uri: str) -> str:
    """DataFrame.inputFiles() spells local files file:///x, the binaryFile path column file:/x."""
    return "file:/" + uri[len("file:///"):] if uri.startswith("file:///") else uri


def _binary_files(spark: SparkSession, paths: list[str], recursive: bool, exclude: tuple[str, ...] = (),
                  in_worker: bool = False) -> tuple[DataFrame, int]:
    """binaryFile rows (path, content, length, read_uri), zero-length files included, and the number of
    files the file index lists (the independent input count).

    in_worker (local file: paths only): the content column is not read (binaryFile prunes it); read_uri
    tells the decode stage to read the bytes itself.

    Spark's file scan silently drops zero-length files; they are inputs too (empty_file rejects).
    So the scan's paths are checked against the file index's listing (a count, no content read),
    and only when they differ are the missing files added back with empty content."""
    reader = spark.read.format("binaryFile")
    if recursive:
        reader = reader.option("recursiveFileLookup", "true")
    df = reader.load(paths if len(paths) > 1 else paths[0])
    if in_worker:
        df = df.select("path", F.lit(None).cast("binary").alias("content"), "length", F.col("path").alias("read_uri"))
    else:
        df = df.select("path", "content", "length", F.lit(None).cast("string").alias("read_uri"))
    listed = [u for u in (_spark_path(u) for u in df.inputFiles()) if u not in exclude]
    if exclude:
        df = df.where(~F.col("path").isin(list(exclude)))
    if df.select("path").count() == len(listed):
        return df, len(listed)
    listing = spark.createDataFrame([(u,) for u in listed], "path string")
    dropped = listing.join(df.select("path"), "path", "left_anti")
    empty = dropped.select("path", F.lit(bytearray()).alias("content"), F.lit(0).cast("long").alias("length"),
                           F.lit(None).cast("string").alias("read_uri"))
    return df.unionByName(empty), len(listed)


def _files_frame(spark: SparkSession, spec: InputSpec, exclude: tuple[str, ...], in_worker: bool) -> tuple[DataFrame, int]:
    path = spec.uri if has_scheme(spec.uri) or _is_glob(spec.uri) else os.path.abspath(spec.uri)
    df, n = _binary_files(spark, [path], True, exclude, in_worker and spec.root.startswith("file:"))
    return _with_rel_path(df, spec.root), n


def read_uri_list(spark: SparkSession, spec: InputSpec) -> list[str]:
    """The list file's entries, qualified, in order, without duplicates."""
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


def _uri_list_frame(spark: SparkSession, spec: InputSpec, exclude: tuple[str, ...], in_worker: bool) -> tuple[DataFrame, int]:
    fs = FileSystem(spark)
    uris = [u for u in read_uri_list(spark, spec) if u not in exclude]
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
        df, _ = _binary_files(spark, present, False, (), in_worker and all(u.startswith("file:") for u in present))
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


# ----------------------------------------------------------------------------- tar shards
def _open_stream(uri: str):
    """A binary input stream for a shard URI (pyarrow.fs; s3a: is Hadoop's name for s3:)."""
    import pyarrow.fs as pafs

    if uri.startswith("file:"):
        return open(local_path(uri), "rb")
    if uri.startswith("s3a://"):
        uri = "s3://" + uri[len("s3a://"):]
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs.open_input_stream(path)


def _walk_tar(uri: str) -> Iterator[tuple[tarfile.TarInfo | None, bytes | None, str | None]]:
    """(member, data, error) for every file member of one shard, streamed; a shard that cannot be read
    (or breaks mid-way) ends with one (None, None, error). The listing count and the expansion both walk
    a shard with this one function, reading every member's bytes, so they cannot disagree on a broken shard."""
    try:
        with _open_stream(uri) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                f = tar.extractfile(member)
                yield member, (f.read() if f is not None else None), None
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield None, None, f"tar shard unreadable: {type(exc).__name__}: {exc}"


def _is_sidecar(member: tarfile.TarInfo) -> bool:
    return member.name.lower().endswith(WEBDATASET_SIDECARS)


def expand_tar(uri: str) -> Iterator[tuple[str, str | None, bytes | None, int | None, str | None, None]]:
    """Stream one shard -> (source_uri, rel_path, content, length, source_error, read_uri=None) per image member.
    A shard that cannot be read (or breaks mid-way) yields one read_error row naming it."""
    for member, data, error in _walk_tar(uri):
        if member is None:
            yield f"{uri}", None, None, None, error, None
        elif not _is_sidecar(member):
            yield f"{uri}#{member.name}", member.name, data, member.size, None if data is not None else "tar member unreadable", None


def list_tar(uri: str) -> tuple[int, int]:
    """(inputs, skipped sidecar members) of one shard: exactly the rows `expand_tar` will yield (a broken
    shard's error row counts as one input). Reads the shard through, like the expansion."""
    images = sidecars = 0
    for member, _, _ in _walk_tar(uri):
        if member is not None and _is_sidecar(member):
            sidecars += 1
        else:
            images += 1
    return images, sidecars


def _list_tars(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        counts = [list_tar(u) for u in batch.column("shard").to_pylist()]
        yield pa.RecordBatch.from_pydict({"members": [c[0] for c in counts], "sidecars": [c[1] for c in counts]})


def count_tar_members(spark: SparkSession, shards: list[str]) -> tuple[int, int]:
    """(image members, skipped sidecars) over all shards: a distributed header-only pass."""
    df = spark.createDataFrame([(p,) for p in shards], "shard string").repartition(max(1, len(shards)))
    row = df.mapInArrow(_list_tars, "members long, sidecars long").agg(F.sum("members"), F.sum("sidecars")).collect()[0]
    return int(row[0] or 0), int(row[1] or 0)


def _expand_tars(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    rows: list[tuple] = []
    size = 0
    for batch in batches:
        for uri in batch.column("shard").to_pylist():
            for row in expand_tar(uri):
                rows.append(row)
                size += row[3] or 0
                # bounded output batches: at most N members or B bytes
                if len(rows) >= TAR_OUTPUT_BATCH_ROWS or size >= TAR_OUTPUT_BATCH_BYTES:
                    yield _rows_to_batch(rows)
                    rows, size = [], 0
    if rows:
        yield _rows_to_batch(rows)


def _rows_to_batch(rows: list[tuple]) -> pa.RecordBatch:
    cols = list(zip(*rows))
    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, SOURCE_ARROW)], schema=SOURCE_ARROW)


def _tar_frame(spark: SparkSession, spec: InputSpec, partitions: int) -> DataFrame:
    shards = spark.createDataFrame([(p,) for p in spec.paths], "shard string").repartition(max(1, len(spec.paths)))
    members = shards.mapInArrow(_expand_tars, from_arrow_schema(SOURCE_ARROW))
    # A shard is expanded by one task; spread its members so every core decodes.
    return members.repartition(partitions)


# ----------------------------------------------------------------------------- parquet
def _parquet_frame(spark: SparkSession, spec: InputSpec, cfg: PreprocessConfig) -> DataFrame:
    df = spark.read.parquet(spec.uri)
    names = {f.name.lower(): f for f in df.schema.fields}
    if cfg.image_column:
        if cfg.image_column.lower() not in names:
            raise ValueError(f"{spec.uri}: image_column {cfg.image_column!r} not found; columns: {df.columns}")
        field = names[cfg.image_column.lower()]
    else:
        field = next((names[n] for n in IMAGE_COLUMN_GUESSES if n in names), None)
        if field is None:
            raise ValueError(f"{spec.uri}: no image column found (tried {IMAGE_COLUMN_GUESSES}); pass --image-column; columns: {df.columns}")
    col = F.col(f"`{field.name}`")
    type_name = field.dataType.typeName()
    if type_name == "struct":
        sub = {f.name for f in field.dataType.fields}
        if "bytes" not in sub:
            raise ValueError(f"{spec.uri}: struct column {field.name!r} has no 'bytes' field; fields: {sorted(sub)}")
        content = col.getField("bytes")
        rel = col.getField("path") if "path" in sub else F.lit(None).cast("string")
    elif type_name == "binary":
        content, rel = col, F.lit(None).cast("string")
    else:
        raise ValueError(f"{spec.uri}: image column {field.name!r} must be binary or struct{{bytes, path}}, found {field.dataType.simpleString()}")
    uri = F.concat(F.col("_metadata.file_path"), F.lit("#row="), F.col("_metadata.row_index").cast("string"))
    return df.select(
        uri.alias("source_uri"),
        rel.alias("rel_path"),
        content.alias("content"),
        F.length(content).cast("long").alias("length"),
        F.when(content.isNull(), F.lit("null image bytes in the Parquet row")).alias("source_error"),
        F.lit(None).cast("string").alias("read_uri"),
    )


@dataclasses.dataclass(frozen=True)
class Sources:
    df: DataFrame           # SOURCE_ARROW columns, one row per input
    input_count: int        # counted independently of df's rows: file listings, Parquet metadata, tar headers
    tar_sidecars: int       # webdataset sidecar members skipped (not inputs)


def load_sources(spark: SparkSession, specs: list[InputSpec], cfg: PreprocessConfig, partitions: int,
                 exclude: tuple[str, ...] = ()) -> Sources:
    """All inputs as one DataFrame with SOURCE_ARROW columns. `exclude`: qualified URIs that are not inputs (the sidecar)."""
    frames, count, sidecars = [], 0, 0
    for spec in specs:
        if spec.kind == InputKind.FILES:
            df, n = _files_frame(spark, spec, exclude, cfg.read_local_in_worker)
        elif spec.kind == InputKind.URI_LIST:
            df, n = _uri_list_frame(spark, spec, exclude, cfg.read_local_in_worker)
        elif spec.kind == InputKind.TAR:
            df = _tar_frame(spark, spec, partitions)
            n, skipped = count_tar_members(spark, list(spec.paths))
            sidecars += skipped
        elif spec.kind == InputKind.PARQUET:
            df = _parquet_frame(spark, spec, cfg)
            n = df.count()  # from the Parquet footers
        else:
            raise ValueError(f"unknown input kind {spec.kind!r}")
        frames.append(df)
        count += n
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return Sources(out, count, sidecars)
