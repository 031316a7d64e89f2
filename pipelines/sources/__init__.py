"""Ingest: every input kind -> one DataFrame of SOURCE_ARROW rows (source_uri, rel_path, content, length, source_error, read_uri).

Input kinds (classified on the driver, see `classify`):
  FILES     a directory (read recursively), a glob, or a single file. Local ones (plain paths, file:) are
            listed by this module (below); other schemes (hdfs:, s3a:, ...) by Spark's binaryFile source.
            Names starting with "_" or "." are skipped at every level below the input (Spark's hidden-file
            rule, kept for local files too: `is_hidden`; as in Spark, "_" names holding "=" and names
            ending "._COPYING_" follow its exceptions); the input itself is taken as named. Everything
            else is an input, zero-byte files included (the decode stage rejects them as empty_file).
  URI_LIST  a .txt/.lst/.list/.uris file with one URI or path per line ("#" comments, blank lines
            skipped, relative paths resolved against the list's directory). Entries are literal paths, not
            globs (`a[1].png` is the file of that name). A listed file that does not exist becomes a
            read_error reject.
  TAR       a .tar/.tar.gz/.tgz shard, or a directory holding only shards (webdataset-style),
            source_uri = "<shard uri>#<member path>". One task per shard reads its member index: a local,
            uncompressed, whole shard from its headers alone, its members then read by byte range on every core;
            any other shard is streamed member by member (memory: one member plus one output batch), as
            pipelines/sources/tar.py says. Webdataset sidecar members (.json, .txt, .cls, ...) are not images
            and are skipped (counted in the manifest as tar_sidecars_skipped when the job runs). Shards are
            opened with pyarrow.fs (file:, s3 (s3a: is mapped), hdfs:).
  PARQUET   a Parquet file or dataset directory with an image-bytes column (`image_column`, or the
            first of image/bytes/content/jpg/png/img; a struct {bytes, path} as Hugging Face datasets
            write is understood). source_uri = "<parquet file>#row=<row index in that file>".
  URL_TABLE with `url_column`: a Parquet, CSV, TSV, JSONL or text table of image URLs, read by Spark (urls.py);
            source_uri = the URL, fetched by the decode stage (pipelines/fetch.py). Repeated URLs are one input.

One module per input kind: local.py (the local walk), hadoop.py (binaryFile, URI lists), tar.py, parquet.py, urls.py;
spec.py names the kinds. This module classifies an input and joins the kinds' rows into one DataFrame.
"""
from __future__ import annotations

import dataclasses
import posixpath

from pyspark.sql import DataFrame, SparkSession

from pipelines.config import PreprocessConfig
from pipelines.fs import FileSystem
from pipelines.sources.hadoop import _files_frame, _uri_list_frame, read_uri_list
from pipelines.sources.local import _local_frame, _local_glob
from pipelines.sources.parquet import UnreadableInputError, _parquet_frame, _unreadable_parquet
from pipelines.sources.spec import LIST_SUFFIXES, PARQUET_SUFFIXES, TAR_SUFFIXES, InputKind, InputSpec, _is_glob
from pipelines.sources.tar import tar_frame
from pipelines.sources.urls import table_format, url_table_frame
from schemas.uri import is_local

__all__ = ["InputKind", "InputSpec", "Sources", "UnreadableInputError", "classify", "load_sources"]


def classify(spark: SparkSession, uri: str, url_tables: bool = False) -> InputSpec:
    """Decide what kind of input `uri` is; with `url_tables` (a url_column was given), a Parquet, CSV, TSV, JSONL
    or text file, or a folder of Parquet files, is a URL table. Raises FileNotFoundError / ValueError with what was
    found."""
    fs = FileSystem(spark)
    if url_tables and table_format(uri) is not None and fs.exists(uri):
        return InputSpec(uri, InputKind.URL_TABLE, fs.qualify(uri).rsplit("/", 1)[0])
    if (_local_glob(uri) if is_local(uri) else _is_glob(uri)):
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



@dataclasses.dataclass(frozen=True)
class Sources:
    df: DataFrame           # SOURCE_ARROW columns, one row per input
    input_count: int        # counted independently of df's rows: file listings, Parquet metadata, tar headers
    tar_sidecars: int       # webdataset sidecar members skipped (not inputs)
    repeated: int = 0       # local files reached by more than one INPUT (or twice by one): listed once


def load_sources(spark: SparkSession, specs: list[InputSpec], cfg: PreprocessConfig, partitions: int,
                 exclude: tuple[str, ...] = ()) -> Sources:
    """All inputs as one DataFrame with SOURCE_ARROW columns. `exclude`: qualified URIs that are not inputs (the sidecar)."""
    frames, count, sidecars, repeated = [], 0, 0, 0
    local_files: list[InputSpec] = []
    local_lists: list[tuple[InputSpec, list[str]]] = []
    for spec in specs:
        if spec.kind == InputKind.FILES and is_local(spec.uri):
            local_files.append(spec)
            continue
        if spec.kind == InputKind.FILES:
            df, n = _files_frame(spark, spec, exclude)
        elif spec.kind == InputKind.URI_LIST:
            uris = [u for u in read_uri_list(spark, spec) if u not in exclude]
            local_lists.append((spec, [u for u in uris if is_local(u)]))
            df, n = _uri_list_frame(spark, spec, [u for u in uris if not is_local(u)])
        elif spec.kind == InputKind.TAR:
            df, n, skipped = tar_frame(spark, spec, partitions, cfg.max_file_bytes)
            sidecars += skipped
        elif spec.kind == InputKind.URL_TABLE:
            with _unreadable_parquet(spec):
                df, n, repeats = url_table_frame(spark, spec, cfg)
            repeated += repeats
        elif spec.kind == InputKind.PARQUET:
            with _unreadable_parquet(spec):
                df = _parquet_frame(spark, spec, cfg)
                n = df.count()  # from the Parquet footers
        else:
            raise ValueError(f"unknown input kind {spec.kind!r}")
        frames.append(df)
        count += n
    if local_files or any(uris for _, uris in local_lists):
        df, n, local_repeats = _local_frame(spark, local_files, local_lists, exclude, partitions, cfg.read_local_in_worker)
        repeated += local_repeats
        frames.append(df)
        count += n
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return Sources(out, count, sidecars, repeated)
