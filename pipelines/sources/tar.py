"""Tar shards (webdataset-style), listed once and read in parallel.

`tar_frame` runs one task per shard that reads the shard's member index:
  * a local, uncompressed, whole shard (`_index_tar`: headers only, seeking past the data) gives one row per input
    member with its byte range; those rows are spread over every core and each task reads its members' ranges
    (`_read_ranges`), so a shard's bytes are read once, by many tasks, and no member's bytes cross a shuffle;
  * any other shard (compressed, remote, cut short, a header tarfile refuses) is counted by streaming it through
    (`list_tar`) and later expanded by streaming it again (`expand_tar`, one task per shard), exactly as before.
Up to DRIVER_INDEX_MAX_SHARDS local shards are indexed by the driver's own processes instead (no Spark job). Either
way the index is held (a local table, or persisted rows), so the count (the number of inputs, independent of the
decode stage) and the rows the decode stage reads are one listing.
"""
from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import os
import tarfile
from typing import Iterator

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from pipelines.config import PreprocessConfig
from pipelines.fs import os_path
from pipelines.source_rows import SOURCE_ARROW, open_stream, source_error
from pipelines.sources.spec import (
    TAR_OUTPUT_BATCH_BYTES,
    TAR_OUTPUT_BATCH_ROWS,
    WEBDATASET_SIDECARS,
    InputSpec,
)
from schemas.images import RejectReason

# Member kinds that are never read: they name no bytes of their own (links), or reading them means
# touching the machine (devices, FIFOs). Each is one read_error reject; directories are containers, not inputs.
_NOT_READ = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
             tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO", tarfile.CONTTYPE: "a contiguous file"}
_READ_CHUNK = 1024 * 1024  # bytes read at a time when a member is only counted


def unsafe_member_path(name: str) -> str | None:
    """Why a member path may not name an input, or None. Stricter than tarfile's data filter (which
    strips a leading "/" and allows ".." that stays inside): an absolute path or any ".." component is
    refused, so no member path can yield a label or a path outside the shard's root."""
    if name.startswith("/"):
        return "an absolute path"
    if ".." in name.split("/"):
        return 'a ".." component'
    return None


def member_refusal(member: tarfile.TarInfo, max_bytes: int) -> str | None:
    """The source_error of a member that is an input but is not read (decode.py's "<reason>: <detail>"
    form), or None for a regular file within `max_bytes`, which is read."""
    why = unsafe_member_path(member.name)
    if why is not None:
        return source_error(RejectReason.UNSAFE_PATH, f"tar member path {member.name!r} is {why}; it is not read")
    if not member.isfile():
        target = f" to {member.linkname!r}" if member.issym() or member.islnk() else ""
        kind = _NOT_READ.get(member.type, f"of tar type {member.type!r}")
        return f"tar member is {kind}{target}, not a regular file; only regular files are read"
    if member.size > max_bytes:
        return source_error(RejectReason.TOO_LARGE, f"tar member is {member.size} bytes, limit max_file_bytes={max_bytes}; it is not read")
    return None


def _walk_tar(uri: str, max_bytes: int, keep: bool) -> Iterator[tuple[tarfile.TarInfo | None, bytes | None, str | None]]:
    """(member, data, error) for every member that is an input (not a directory), streamed: `error` is the
    member's refusal (it is not read) and data is None then. keep=False reads the accepted members through in
    chunks without keeping them (the count). A shard that cannot be read (or breaks mid-way) ends with one
    (None, None, error). The count and the expansion walk a shard with this one function, reading the same
    bytes, so they cannot disagree on a broken shard. Memory: one member of at most max_bytes (none when
    counting); a refused member is skipped by the stream without being held (a 1 GiB gzip bomb costs CPU only)."""
    try:
        with open_stream(uri) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                refusal = member_refusal(member, max_bytes)
                f = tar.extractfile(member) if member.isfile() else None
                if refusal is None and f is not None and keep:
                    yield member, f.read(), None
                    continue
                if f is not None:
                    # Drained in chunks, not skipped by the stream's own seek: in "r|*" mode that reads 10 KB
                    # blocks and re-joins its inflated buffer each time (measured: 23 s for a 1 GiB member of
                    # zeros, 4 s drained in 1 MiB chunks); memory stays one chunk plus zlib's buffer.
                    while f.read(_READ_CHUNK):
                        pass
                yield member, None, refusal if refusal is not None or f is not None else "tar member unreadable"
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield None, None, f"tar shard unreadable: {type(exc).__name__}: {exc}"


def _is_sidecar(member: tarfile.TarInfo) -> bool:
    """A webdataset metadata member (skipped, not an input). An unsafe path is never one: it is rejected."""
    return member.isfile() and unsafe_member_path(member.name) is None and member.name.lower().endswith(WEBDATASET_SIDECARS)


def expand_tar(uri: str, max_bytes: int = PreprocessConfig.max_file_bytes
               ) -> Iterator[tuple[str, str | None, bytes | None, int | None, str | None, None]]:
    """Stream one shard -> (source_uri, rel_path, content, length, source_error, read_uri=None) per input member.
    A shard that cannot be read (or breaks mid-way) yields one read_error row naming it. A refused member
    (unsafe path, not a regular file, above max_bytes) is a row with its refusal and no bytes; its rel_path
    is None when its path is unsafe, so no label comes from it."""
    for member, data, error in _walk_tar(uri, max_bytes, keep=True):
        if member is None:
            yield f"{uri}", None, None, None, error, None
        elif not _is_sidecar(member):
            rel = None if unsafe_member_path(member.name) else member.name
            yield f"{uri}#{member.name}", rel, data, member.size, error, None


def list_tar(uri: str, max_bytes: int = PreprocessConfig.max_file_bytes) -> tuple[int, int]:
    """(inputs, skipped sidecar members) of one shard: exactly the rows `expand_tar` will yield (a broken
    shard's error row counts as one input). A local uncompressed shard is counted from its member headers
    alone (`_index_tar`); any other, or one whose index does not prove it whole, is read through like the
    expansion, keeping nothing."""
    indexed = _index_tar(uri)
    members = indexed if indexed is not None else (m for m, _, _ in _walk_tar(uri, max_bytes, keep=False))
    images = sidecars = 0
    for member in members:
        if member is not None and _is_sidecar(member):
            sidecars += 1
        else:
            images += 1
    return images, sidecars


def _index_tar(uri: str) -> list[tarfile.TarInfo] | None:
    """The non-directory members of a local, uncompressed shard, read from its headers by seeking past each
    member's data (a 70 MB shard of 5,000 members costs 5,000 reads of 512 bytes, not 70 MB), or None when
    the streaming count must decide: a compressed or remote shard, a header tarfile refuses, or data that
    ends before a member's declared size (the streaming expansion would end that shard with an error row).
    Headers are parsed by the same tarfile code in both modes, so a whole shard lists the same members."""
    path = os_path(uri)
    if path is None or not uri.lower().endswith(".tar"):
        return None
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if f.read(262)[257:262] != b"ustar":  # no POSIX/GNU header (compressed, v7, not a tar): the stream decides
                return None
            f.seek(0)
            with tarfile.open(fileobj=f, mode="r:") as tar:
                members = [m for m in tar if not m.isdir()]
    except (tarfile.TarError, OSError, EOFError):
        return None
    end = max((m.offset_data + (m.size if m.isreg() else 0) for m in members), default=0)
    return members if end <= size else None


def _expand_tars(batches: Iterator[pa.RecordBatch], max_bytes: int) -> Iterator[pa.RecordBatch]:
    rows: list[tuple] = []
    size = 0
    for batch in batches:
        for uri in batch.column("shard").to_pylist():
            for row in expand_tar(uri, max_bytes):
                rows.append(row)
                size += len(row[2]) if row[2] is not None else 0  # bytes held, not declared sizes
                # bounded output batches: at most N members or B bytes
                if len(rows) >= TAR_OUTPUT_BATCH_ROWS or size >= TAR_OUTPUT_BATCH_BYTES:
                    yield _rows_to_batch(rows)
                    rows, size = [], 0
    if rows:
        yield _rows_to_batch(rows)


def _rows_to_batch(rows: list[tuple]) -> pa.RecordBatch:
    cols = list(zip(*rows))
    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, SOURCE_ARROW)], schema=SOURCE_ARROW)


# One task's index of its shards: a row per input member of an indexed shard (its byte range; source_error = its
# refusal, and then it is not read), and one summary row per shard (member_uri null).
INDEX_ARROW = pa.schema([
    pa.field("shard", pa.string(), nullable=False),
    pa.field("member_uri", pa.string()),
    pa.field("rel_path", pa.string()),
    pa.field("offset", pa.int64()),
    pa.field("length", pa.int64()),
    pa.field("source_error", pa.string()),
    pa.field("streamed", pa.bool_()),     # summary rows: the shard is counted and expanded by streaming
    pa.field("members", pa.int64()),      # summary rows: its inputs
    pa.field("sidecars", pa.int64()),     # summary rows: its skipped webdataset sidecars
])
RANGE_BATCH_ROWS = 64  # members read per output batch (about 1 MB of 14 KB JPEGs)


def index_shard(uri: str, max_bytes: int) -> tuple[list[tuple], int, int, bool]:
    """(member rows, inputs, sidecars, streamed) of one shard: the rows `expand_tar` would yield, as byte ranges,
    when `_index_tar` proves the shard whole; else no rows and the streaming count (streamed=True)."""
    members = _index_tar(uri)
    if members is None:
        inputs, sidecars = list_tar(uri, max_bytes)
        return [], inputs, sidecars, True
    rows, sidecars = [], 0
    for m in members:
        if _is_sidecar(m):
            sidecars += 1
            continue
        refusal = member_refusal(m, max_bytes)
        rel = None if unsafe_member_path(m.name) else m.name
        rows.append((uri, f"{uri}#{m.name}", rel, m.offset_data, m.size, refusal))
    return rows, len(rows), sidecars, False


def _index_shards(batches: Iterator[pa.RecordBatch], max_bytes: int) -> Iterator[pa.RecordBatch]:
    names = INDEX_ARROW.names
    for batch in batches:
        for uri in batch.column("shard").to_pylist():
            rows, inputs, sidecars, streamed = index_shard(uri, max_bytes)
            records = [dict(zip(names, (*row, None, None, None))) for row in rows]
            records.append(dict(zip(names, (uri, None, None, None, None, None, streamed, inputs, sidecars))))
            yield pa.RecordBatch.from_pylist(records, schema=INDEX_ARROW)


def _read_ranges(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Index rows in, SOURCE_ARROW rows out: each accepted member's bytes read from its range of the shard (one open
    file per shard at a time). A range that cannot be read whole (the shard changed since it was indexed) is a
    read_error row naming it; nothing is dropped."""
    for batch in batches:
        d = batch.to_pydict()
        content: list[bytes | None] = []
        errors = list(d["source_error"])
        handle, open_uri = None, None
        try:
            for i, (shard, offset, length) in enumerate(zip(d["shard"], d["offset"], d["length"])):
                if errors[i] is not None:
                    content.append(None)
                    continue
                try:
                    if shard != open_uri:
                        if handle is not None:
                            handle.close()
                        handle, open_uri = None, shard
                        handle = open(os_path(shard), "rb")
                    handle.seek(offset)
                    data = handle.read(length)
                    if len(data) != length:
                        raise EOFError(f"read {len(data)} of the member's {length} bytes at offset {offset}")
                    content.append(data)
                except (OSError, EOFError) as exc:
                    content.append(None)
                    errors[i] = f"tar shard unreadable: {type(exc).__name__}: {exc}"
        finally:
            if handle is not None:
                handle.close()
        yield pa.RecordBatch.from_pydict({"source_uri": d["member_uri"], "rel_path": d["rel_path"], "content": content,
                                          "length": d["length"], "source_error": errors,
                                          "read_uri": [None] * len(content)}, schema=SOURCE_ARROW)


DRIVER_INDEX_MAX_SHARDS = 64  # local shards indexed by the driver's own processes; more are indexed by Spark tasks


def _index_rows_table(rows: list[tuple]) -> pa.Table:
    cols = list(zip(*rows)) if rows else [[] for _ in range(6)]
    names = ["shard", "member_uri", "rel_path", "offset", "length", "source_error"]
    return pa.table({n: pa.array(c, type=INDEX_ARROW.field(n).type) for n, c in zip(names, cols)})


def _index_on_driver(shards: list[str], max_bytes: int) -> list[tuple[str, list[tuple], int, int, bool]]:
    """index_shard of every shard, in up to one forked process per core (header parsing is Python, so threads
    would share one core): (shard, rows, inputs, sidecars, streamed)."""
    workers = min(len(shards), os.cpu_count() or 1)
    if workers <= 1:
        return [(u, *index_shard(u, max_bytes)) for u in shards]
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return [(u, *r) for u, r in zip(shards, pool.map(functools.partial(index_shard, max_bytes=max_bytes), shards))]


def tar_frame(spark: SparkSession, spec: InputSpec, partitions: int, max_bytes: int) -> tuple[DataFrame, int, int]:
    """(SOURCE_ARROW rows of every input member, inputs, skipped sidecars) of a TAR input; see the module docstring.
    Up to DRIVER_INDEX_MAX_SHARDS local shards are indexed by the driver (no Spark job: 20 shards of 5,000 members
    take ~2 s on 2 cores, a Spark job and its cache ~6 s more); more, or remote ones, by one Spark task each."""
    paths = list(spec.paths)
    if len(paths) <= DRIVER_INDEX_MAX_SHARDS and all(os_path(u) is not None for u in paths):
        indexed = _index_on_driver(paths, max_bytes)
        inputs = sum(r[2] for r in indexed)
        sidecars = sum(r[3] for r in indexed)
        streamed = sorted(r[0] for r in indexed if r[4])
        rows = [row for r in indexed for row in r[1]]
        ranges = spark.createDataFrame(_index_rows_table(rows)) if rows else None
    else:
        shards = spark.createDataFrame([(p,) for p in paths], "shard string").repartition(max(1, len(paths)))
        index = (shards.mapInArrow(functools.partial(_index_shards, max_bytes=max_bytes), from_arrow_schema(INDEX_ARROW))
                 .persist(StorageLevel.MEMORY_AND_DISK))  # paths and ranges only, no member bytes
        summary = index.where(F.col("member_uri").isNull()).select("shard", "streamed", "members", "sidecars").collect()
        inputs = sum(int(r["members"]) for r in summary)
        sidecars = sum(int(r["sidecars"]) for r in summary)
        streamed = sorted(r["shard"] for r in summary if r["streamed"])
        ranges = index.where(F.col("member_uri").isNotNull()) if len(streamed) < len(summary) else None
    frames = []
    if ranges is not None:
        frames.append(ranges.repartition(partitions).mapInArrow(_read_ranges, from_arrow_schema(SOURCE_ARROW)))
    if streamed:
        frames.append(_streamed_frame(spark, streamed, partitions, max_bytes))
    if not frames:
        return spark.createDataFrame([], from_arrow_schema(SOURCE_ARROW)), 0, sidecars
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out, inputs, sidecars


def _streamed_frame(spark: SparkSession, shards: list[str], partitions: int, max_bytes: int) -> DataFrame:
    """The shards that are streamed (module docstring): one task expands each, its members spread over every core."""
    df = spark.createDataFrame([(p,) for p in shards], "shard string").repartition(max(1, len(shards)))
    members = df.mapInArrow(functools.partial(_expand_tars, max_bytes=max_bytes), from_arrow_schema(SOURCE_ARROW))
    return members.repartition(partitions)
