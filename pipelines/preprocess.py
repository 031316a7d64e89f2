"""The preprocessing job as one function: `run_preprocess(spark, inputs, out, cfg)`.

Its stages are named functions, called in this order by `_run`:
  list_inputs         classify inputs, label resolver, every input kind -> one DataFrame (pipelines/sources/)
  skip_seen           --incremental: drop inputs an earlier run has seen (by source_uri); nothing new -> no write
  decode              mapInArrow over Arrow batches -> ONE staged table with kind = image | reject, written
                      once to OUT/_staging/<run>/decoded (nothing is decoded twice); its tasks count it as
                      they go (rows per kind and reason, the fingerprint's key sum), for the checks to reuse
  check_outcome       no silent failure: every input rejected -> fail naming the top reason and its flag
  dedup               duplicates of images and earlier runs' images (pipelines/dedup/), written as duplicates/
                      under staging; kept = images less them
  compute_stats       classes, label counts, stored channels, channel sums (the decode tasks' sums, less the dropped rows')
  write_tables        images/ (with label_index) and rejects/ under the staging directory
  check_conservation  inputs == written + rejected + duplicates, from the written files (local: their Parquet
                      footers, read on the driver; other schemes: one Spark job per table); mismatch fails
  commit              move the run's partitions into OUT; run_preprocess then replaces manifest.json atomically,
                      listing every data file with its row count (schemas/layout.py): the commit point

One writer at a time (pipelines/lock.py: OUT/_lock, a dead holder's lock is taken over). Before it starts, the
writer removes what interrupted runs left: staging directories and data files the manifest does not list. A
failure or a kill at any point leaves the dataset the manifest describes, old or new, never a mix: readers read
only listed files. `IMAGEGEN_FAULT=<point>` SIGKILLs the job at a named point (FAULT_POINTS), for the tests that
prove this.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import importlib.metadata
import json
import math
import platform
import sys
import contextlib
import os
import signal
import threading
import time
import uuid
from collections import Counter
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.accumulators import AccumulatorParam
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from pipelines import interrupt
from pipelines.config import ChannelMode, LabelMode, PreprocessConfig
from pipelines.dedup import DedupConfig, find_duplicates
from pipelines.dedup.driver import duplicates_frame
from pipelines.decode import KIND_IMAGE, KIND_REJECT, STAGED_ARROW, decode_partition, reduce_to_grey
from pipelines.fs import FileSystem, os_path
from pipelines.lock import dataset_lock
from pipelines.labels import LabelResolver, Sidecar
from pipelines.sources import InputSpec, classify, load_sources
from schemas.images import DUPLICATES_ARROW, IMAGES_ARROW, REJECTS_ARROW, SCHEMA_VERSION, RejectReason, duplicates_spark, images_spark, rejects_spark
from schemas.layout import MARK_NAME, TABLES, DatasetLayout, Manifest, is_run_id, is_run_partition, is_writer_file

EXAMPLES_CAP = 20  # how many unlabeled files / unmatched sidecar keys are listed by name
OPEN_COST_BYTES = 64 * 1024  # Spark's per-file split-packing cost, about one small JPEG


# Where IMAGEGEN_FAULT can kill the job (tests/jobs/test_crash_safety.py): after the staged write, after the first
# and after every partition move of the commit, after the manifest is written (before old files are removed).
FAULT_POINTS = ("staged", "commit:first-move", "commit:moved", "manifest-written")


class InjectedFault(RuntimeError):
    """IMAGEGEN_FAULT=error:<point>: a failure raised on purpose (tests)."""


def _fault_point(name: str) -> None:
    """IMAGEGEN_FAULT=<point>: SIGKILL this process here (a real crash, nothing unwinds).
    IMAGEGEN_FAULT=error:<point>: raise InjectedFault here (a failure the job handles)."""
    fault = os.environ.get("IMAGEGEN_FAULT")
    if fault == name:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == f"error:{name}":
        raise InjectedFault(f"IMAGEGEN_FAULT: injected failure at {name}")


class NotADatasetError(RuntimeError):
    """OUT exists, holds files, and is not an imagegen dataset: writing there could bury someone's data."""


class DatasetExistsError(RuntimeError):
    pass


class ConservationError(RuntimeError):
    pass


class NothingWrittenError(RuntimeError):
    """A run that would write a dataset nobody can use (no image, or no label where labels were asked for)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What --dry-run reports: nothing is written."""

    inputs: list[dict[str, Any]]
    input_count: int
    partitions: int
    config: dict[str, Any]
    out: str

    def render(self) -> str:
        lines = [f"plan (dry run, nothing written) -> {self.out}"]
        for s in self.inputs:
            lines.append(f"  input {s['uri']}: {s['kind']}")
        lines.append(f"  files to decode: {self.input_count}, decode partitions: {self.partitions}")
        lines.append("  stages: sources -> decode+validate (mapInArrow) -> stage Parquet -> [dedup] -> write images/rejects -> conservation -> commit")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class PreprocessResult:
    manifest: Manifest
    out: str
    summary: str


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def software_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("imagegen", "pyspark", "pyarrow", "pillow", "numpy", "scipy", "imagehash", "pandas"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class Progress:
    """What the user sees while a job runs: the stage, and images counted, images/s and an ETA.

    Images listed are said once the listing ends. Decoded images are counted by a Spark accumulator the decode
    tasks add to (it reaches the driver as each task ends, so the count moves task by task). Dedup and write have
    no per-image hook: their count is estimated from the status tracker, the images of the stage times the share
    of the running Spark stage's tasks that finished (shown with `~`), and each stage ends with its exact counts.
    At a terminal the count is a tqdm bar; elsewhere (logs, nightly, CI) a plain timestamped line every
    `interval` seconds. Each stage boundary is also where a Ctrl-C or SIGTERM is honoured (pipelines/interrupt.py)."""

    def __init__(self, spark: SparkSession, interval: float, stream=sys.stderr):
        self.tracker = spark.sparkContext.statusTracker()
        self.interval = interval
        self.stream = stream
        self.phase = "starting"
        self.t0 = time.monotonic()
        self.counted: tuple[str, Any, int, float] | None = None  # (what, accumulator, total, started)
        self._bar: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imagegen-progress", daemon=True)

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.interval)
        self._close_bar()

    def _line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[preprocess {stamp} {time.monotonic() - self.t0:6.1f}s] {text}", file=self.stream, flush=True)

    def set_phase(self, phase: str, note: str = "") -> None:
        interrupt.enter(phase)
        self._close_bar()
        self.counted = None
        self.phase = phase
        self._line(phase + (f": {note}" if note else ""))

    def say(self, text: str) -> None:
        """One line about the current stage (what it counted once it ended)."""
        self._line(f"{self.phase}: {text}")

    def count(self, what: str, accumulator: Any | None, total: int) -> None:
        """Count `accumulator` against `total` images for the rest of this stage; with no accumulator, estimate the
        count from the running Spark stage's finished tasks."""
        self.counted = (what, accumulator, total, time.monotonic())
        if _at_terminal(self.stream) and total > 0:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=f"{self.phase}", unit="img", file=self.stream, dynamic_ncols=True,
                             mininterval=0.5, leave=False)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _run(self) -> None:
        tick = min(self.interval, 0.5)
        last = time.monotonic()
        while not self._stop.wait(tick):
            counted, bar = self.counted, self._bar
            if counted is not None and bar is not None:
                bar.n = self._done(counted)
                bar.refresh()
                continue
            if time.monotonic() - last < self.interval:
                continue
            last = time.monotonic()
            self._line(f"{self.phase}: {self._status(counted)}")

    def _status(self, counted: tuple[str, Any, int, float] | None) -> str:
        if counted is not None:
            what, acc, total, started = counted
            done = self._done(counted)
            rate = done / max(time.monotonic() - started, 1e-9)
            eta = f", ETA {(total - done) / rate:.0f}s" if 0 < done < total else ""
            about = "" if acc is not None else "~"
            return (f"{about}{done:,} of {total:,} images {what} ({100 * done / max(total, 1):.0f}%), "
                    f"{rate:.0f} images/s{eta}")
        parts = [f"{done}/{n} tasks" for done, n in self._stages()]
        return "; ".join(parts) or "working"

    def _stages(self) -> list[tuple[int, int]]:
        """(finished, all) tasks of each running Spark stage."""
        infos = (self.tracker.getStageInfo(sid) for sid in self.tracker.getActiveStageIds())
        return [(i.numCompletedTasks, i.numTasks) for i in infos if i is not None]

    def _done(self, counted: tuple[str, Any, int, float]) -> int:
        _, acc, total, _ = counted
        if acc is not None:
            return min(int(acc.value), total)
        finished, tasks = max(self._stages(), key=lambda st: st[1], default=(0, 1))  # the widest running stage
        return int(total * finished / max(tasks, 1))


def _at_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _timed(timings: dict[str, float], name: str, progress: Progress | None = None):
    class _T:
        def __enter__(self):
            if progress is not None:
                progress.set_phase(name)
            else:
                interrupt.enter(name)
            self.t = time.monotonic()

        def __exit__(self, *exc):
            timings[name] = round(time.monotonic() - self.t, 3)

    return _T()


def _label_resolver(spark: SparkSession, cfg: PreprocessConfig, specs: list[InputSpec]) -> LabelResolver | None:
    if cfg.labels == LabelMode.NONE:
        return None
    if cfg.labels == LabelMode.DIRS:
        return LabelResolver(LabelMode.DIRS)
    # Parsed and checked in a Spark task (pipelines/labels.py): the driver never holds the entries.
    sidecar = Sidecar.load(spark, FileSystem(spark).qualify(cfg.labels_path), cfg.labels_path, tuple(s.root for s in specs))
    return LabelResolver(LabelMode.SIDECAR, sidecar)


@contextlib.contextmanager
def _arrow_conf(spark: SparkSession, cfg: PreprocessConfig, partitions: int) -> Iterator[None]:
    """The decode stage's Arrow batch and file-split settings, set on the session for the stage only: the
    caller's values (a notebook's, a test's) are restored afterwards, and unset keys unset again."""
    settings = {
        # Rows AND bytes bound each Arrow batch: 10k large images never form a 2 GB batch.
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_batch_rows),
        "spark.sql.execution.arrow.maxBytesPerBatch": str(cfg.arrow_batch_bytes),
        # binaryFile splits: about `partitions` splits, sized by bytes. Spark charges every file an "open cost"
        # (default 4 MB) when packing splits, which for 64 KB images means ~31 images per task; each Python
        # task costs ~0.15 s of fixed CPU in the worker (PySpark re-reads its zip imports and runs
        # gc.collect between tasks), more than decoding 31 images. So the open cost is set near an image's size.
        "spark.sql.files.minPartitionNum": str(partitions),
        "spark.sql.files.openCostInBytes": str(OPEN_COST_BYTES),
    }
    before = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


def _non_null(df: DataFrame, arrow_schema) -> DataFrame:
    """Select `arrow_schema`'s columns in order; columns the schema declares non-null become non-null in
    Spark too (coalesce with a typed literal; the decode stage never leaves them empty on these rows)."""
    defaults = {"string": "", "int64": 0, "int32": 0, "float": 0.0, "binary": b""}
    spark_types = {f.name: f.dataType for f in from_arrow_schema(arrow_schema).fields}
    cols = []
    for f in arrow_schema:
        col = F.col(f.name).cast(spark_types[f.name])
        if not f.nullable:
            default = defaults[str(f.type)]
            lit = F.lit(bytearray(default)) if isinstance(default, bytes) else F.lit(default)
            col = F.coalesce(col, lit.cast(spark_types[f.name]))
        cols.append(col.alias(f.name))
    return df.select(*cols)


@dataclasses.dataclass(frozen=True)
class Staged:
    """The staged table and what its decode tasks counted as they wrote it: rows per (kind, reject reason), the
    order-independent key sum behind the input fingerprint, and per label the valid images' counts and channel
    sums. Every later check reads these, not the table."""

    table: DataFrame
    rows: int
    valid: int
    rejected: dict[str, int]      # reject reason -> rows
    key_sum: str                  # str(sum of _row_key over the rows); "None" when no rows
    by_label: dict[str | None, list[int]] = dataclasses.field(default_factory=dict)  # label -> LABEL_STATS values


class _SumsParam(AccumulatorParam):
    """Adds decode-task summaries, {key: [int, ...]}, element by element. Spark merges a result task's accumulator
    updates once per partition, from the attempt that succeeded, so a retried or speculative task is not counted twice."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, a: dict, b: dict) -> dict:
        for key, values in b.items():
            have = a.get(key)
            if have is None:
                a[key] = list(values)
            else:
                for i, v in enumerate(values):
                    have[i] += v
        return a


# What the stats stage needs of each label's valid images, in this order: count, colour (not grey) images, and the
# exact channel sums behind pixel_mean/std.
PIXEL_SUMS = ("sum_r", "sum_g", "sum_b", "sumsq_r", "sumsq_g", "sumsq_b", "n_pixels", "sum_l", "sumsq_l")
LABEL_STATS = ("n", "colour", *PIXEL_SUMS)


def _row_key(uri: str, sha256: str | None, reason: str | None, detail: str | None) -> int:
    """A row's 64-bit key for the order-independent key sum: (source_uri, sha256 or the reject's reason:detail)."""
    second = sha256 if sha256 is not None else f"{reason or ''}:{detail or ''}"
    text = f"{uri}\0{second}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def summarise_batch(batch: pa.RecordBatch) -> dict[tuple[str, str | None], list[int]]:
    """One staged batch's rows and key sum per (kind, reject reason)."""
    out: dict[tuple[str, str | None], list[int]] = {}
    cols = [batch.column(c).to_pylist() for c in ("kind", "reason", "source_uri", "sha256", "detail")]
    for kind, reason, uri, sha, detail in zip(*cols):
        have = out.setdefault((kind, reason), [0, 0])
        have[0] += 1
        have[1] += _row_key(uri, sha, reason, detail)
    return out


def label_stats_batch(batch: pa.RecordBatch) -> dict[str | None, list[int]]:
    """One staged batch's valid images per label: LABEL_STATS values (a null label is the key None)."""
    table = pa.Table.from_batches([batch]).select(["kind", "label", "is_grey", *PIXEL_SUMS])
    table = table.filter(pc.equal(table.column("kind"), KIND_IMAGE))
    if not table.num_rows:
        return {}
    table = table.append_column("colour", pc.cast(pc.invert(pc.fill_null(table.column("is_grey"), False)), pa.int64()))
    grouped = table.group_by("label", use_threads=False).aggregate([([], "count_all"), ("colour", "sum")] + [(c, "sum") for c in PIXEL_SUMS])
    cols = [grouped.column(c).to_pylist() for c in ["count_all", "colour_sum", *(f"{c}_sum" for c in PIXEL_SUMS)]]
    return {label: [int(v or 0) for v in values] for label, *values in zip(grouped.column("label").to_pylist(), *cols)}


def summarise(groups: dict[tuple[str, str | None], list[int]]) -> tuple[int, int, dict[str, int], str]:
    """(rows, valid images, rejects per reason, key sum) from the decode tasks' summaries: no Spark job."""
    rows = sum(n for n, _ in groups.values())
    valid = sum(n for (kind, _), (n, _) in groups.items() if kind == KIND_IMAGE)
    rejected = {reason: n for (kind, reason), (n, _) in groups.items() if kind == KIND_REJECT}
    key_sum = str(sum(total for _, total in groups.values())) if groups else "None"
    return rows, valid, rejected, key_sum


def input_fingerprint(decoded: Staged, specs: list[InputSpec]) -> str:
    """Order-independent digest of (source_uri, sha256 or reject detail) over all inputs, plus the input specs."""
    text = json.dumps([[s.uri, s.kind.value] for s in specs] + [decoded.rows, decoded.key_sum])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def plan_preprocess(spark: SparkSession, inputs: list[str], out: str, cfg: PreprocessConfig) -> Plan:
    """--dry-run: classify and count the inputs (a listing, no decode), write nothing."""
    specs = [classify(spark, u, url_tables=cfg.url_column is not None) for u in inputs]
    partitions = cfg.partitions or 3 * spark.sparkContext.defaultParallelism
    with _arrow_conf(spark, cfg, partitions):
        count = load_sources(spark, specs, cfg, partitions).input_count
    return Plan([{"uri": s.uri, "kind": s.kind.value} for s in specs], count, partitions, cfg.to_dict(), out)


def run_preprocess(spark: SparkSession, inputs: list[str], out: str, cfg: PreprocessConfig,
                   log: Callable[[str], None] = print) -> PreprocessResult:
    """Preprocess `inputs` into the dataset at `out`. Raises on failure, leaving no manifest."""
    if not inputs:
        raise ValueError("expected at least one INPUT")
    cfg.check_job()
    t_start = time.monotonic()
    fs = FileSystem(spark)
    layout = DatasetLayout(out)
    _check_out(fs, layout)
    existed = fs.exists(layout.root)
    fs.mkdirs(layout.root)
    marked = write_mark(fs, layout)
    try:
        with dataset_lock(fs, layout.lock, log):
            return _run_locked(spark, inputs, out, cfg, fs, layout, t_start, log)
    except BaseException:
        if marked and not fs.exists(layout.manifest):  # this run made OUT ours and left no dataset: leave OUT as it was
            fs.delete(layout.mark)
            if not existed:
                _remove_if_empty(fs, layout.root)
        raise


def _run_locked(spark: SparkSession, inputs: list[str], out: str, cfg: PreprocessConfig, fs: FileSystem,
                layout: DatasetLayout, t_start: float, log: Callable[[str], None]) -> PreprocessResult:
    current = _read_manifest(fs, layout)
    removed = remove_unlisted(fs, layout, current)
    if removed:
        shown = ", ".join(removed[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5 else "")
        log(f"imagegen preprocess: removed {len(removed)} leftover(s) of interrupted runs that {layout.manifest} "
            f"does not list: {shown}")
    if current is not None and not cfg.incremental and not cfg.overwrite:
        raise DatasetExistsError(
            f"{out} already holds a complete dataset ({layout.manifest} exists); "
            "pass --incremental to add new files to it or --overwrite to replace it"
        )
    prior = None
    if current is not None and cfg.incremental:
        prior = current
        _check_compatible(prior, cfg)
    run_id = new_run_id()
    staging = layout.staging(run_id)
    timings: dict[str, float] = {}
    try:
        with Progress(spark, cfg.progress_interval_s) as progress:
            job = _Job(spark, cfg, out, run_id, staging, layout, fs, prior, log)
            result = _run(job, inputs, timings, progress)
        timings["total"] = round(time.monotonic() - t_start, 3)
        if result is not None:
            manifest = dataclasses.replace(result, timings=timings)
            fs.write_text_atomic(layout.manifest, manifest.to_json())  # the commit point
            _fault_point("manifest-written")
    except BaseException:
        # Nothing half-written stays behind: this run's partitions (if the commit had started moving
        # them) and its staging go; the files the manifest lists are untouched.
        for table in TABLES:
            fs.delete(f"{layout.table(table)}/run_id={run_id}")
            _remove_if_empty(fs, layout.table(table))
        fs.delete(staging)
        _remove_if_empty(fs, layout.root.rstrip("/") + "/_staging")
        raise
    if result is None:  # incremental, and every input was seen by an earlier run: nothing new is written
        fs.delete(staging)
        _remove_if_empty(fs, layout.root.rstrip("/") + "/_staging")
        assert prior is not None
        summary = f"imagegen preprocess: nothing new in {len(inputs)} input(s); {out} is unchanged (run {prior.run_id})"
        log(summary)
        return PreprocessResult(prior, out, summary)
    # The new manifest is in place: what it does not list (an --overwrite's replaced runs) goes now.
    remove_unlisted(fs, layout, manifest)
    summary = render_summary(manifest)
    log(summary)
    return PreprocessResult(manifest, out, summary)


def _read_manifest(fs: FileSystem, layout: DatasetLayout) -> Manifest | None:
    if not fs.exists(layout.manifest):
        return None
    return Manifest.from_dict(json.loads(fs.read_text(layout.manifest)))


def _check_out(fs: FileSystem, layout: DatasetLayout) -> None:
    """OUT must be absent, empty, or carry imagegen's mark (schemas/layout.py): folder names prove nothing, a user's
    folder may well hold images/ or rejects/ of its own."""
    if not fs.exists(layout.root):
        return
    if not fs.is_dir(layout.root):
        raise NotADatasetError(f"{layout.root} exists and is not a directory; choose another --output")
    names = sorted(e.uri.rstrip("/").rsplit("/", 1)[-1] for e in fs.list(layout.root))
    if names and not _is_marked(fs, layout):
        raise NotADatasetError(
            f"{layout.root} is not empty and is not an imagegen dataset (it holds {', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}, and no {MARK_NAME}); nothing there was changed: choose an empty or new --output"
        )


def _is_marked(fs: FileSystem, layout: DatasetLayout) -> bool:
    """OUT holds our mark, or is a dataset written before the mark existed (a manifest.json this code reads)."""
    if fs.exists(layout.mark):
        return True
    if not fs.exists(layout.manifest):
        return False
    try:
        Manifest.from_dict(json.loads(fs.read_text(layout.manifest)))
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def write_mark(fs: FileSystem, layout: DatasetLayout) -> bool:
    """Mark OUT as imagegen's before anything else is written into it (create-if-absent: two racing writers agree).
    True when this call made the mark."""
    return fs.create_exclusive(layout.mark, json.dumps({"tool": "imagegen", "layout": "dataset",
                                                 "created": dt.datetime.now(dt.timezone.utc).isoformat()}) + "\n")


def remove_unlisted(fs: FileSystem, layout: DatasetLayout, manifest: Manifest | None) -> list[str]:
    """Remove what our own runs left that `manifest` does not list (a crashed run's staging and orphans, a replaced
    run's files); return what was removed, relative to OUT. Only names of our own making are candidates
    (`_staging/<run id>`, `<table>/run_id=<run id>/<Spark writer file>`): anything else, a user's file under
    images/ included, is left as it is. Only the lock holder calls this."""
    listed = {rel for t in TABLES for rel, _ in (manifest.data_files(t) if manifest is not None else [])}
    removed: list[str] = []
    staging_root = layout.root.rstrip("/") + "/_staging"
    if fs.is_dir(staging_root):
        for entry in fs.list(staging_root):
            name = entry.uri.rstrip("/").rsplit("/", 1)[-1]
            if entry.is_dir and is_run_id(name):
                removed.append(f"_staging/{name}")
                fs.delete(entry.uri)
        _remove_if_empty(fs, staging_root)
    for table in TABLES:
        table_dir = layout.table(table)
        if not fs.is_dir(table_dir):
            continue
        for run_dir in fs.list(table_dir):
            run_name = run_dir.uri.rstrip("/").rsplit("/", 1)[-1]
            if not (run_dir.is_dir and is_run_partition(run_name)):
                continue
            for entry in fs.list(run_dir.uri):
                name = entry.uri.rstrip("/").rsplit("/", 1)[-1]
                rel = f"{table}/{run_name}/{name}"
                # a listed file's checksum sibling (.part-....parquet.crc, Hadoop's local FS) stays with it
                crc_of = f"{table}/{run_name}/{name[1:-4]}" if name.startswith(".") and name.endswith(".crc") else None
                if entry.is_dir or not is_writer_file(name) or rel in listed or crc_of in listed:
                    continue
                removed.append(rel)
                fs.delete(entry.uri)
            _remove_if_empty(fs, run_dir.uri)
        _remove_if_empty(fs, table_dir)
    return removed


def read_listed(spark: SparkSession, layout: DatasetLayout, manifest: Manifest | None, table: str, schema) -> DataFrame:
    """The rows of `table` in exactly the files `manifest` lists (with run_id from the partition path)."""
    files = [layout.resolve(rel) for rel, _ in manifest.data_files(table)] if manifest is not None else []
    if not files:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).option("basePath", layout.table(table)).parquet(*files)


def _check_compatible(prior: Manifest, cfg: PreprocessConfig) -> None:
    """An incremental run must write rows a reader can mix with the earlier ones."""
    mine = {"resolution": cfg.resolution, "pixel_encoding": cfg.pixel_encoding.value, "fit": cfg.fit.value, "labels": cfg.labels.value}
    theirs = {k: prior.config.get(k) for k in mine}
    if mine != theirs:
        raise ValueError(f"incremental run settings {mine} differ from the dataset's {theirs}; use the same settings or a new OUT")


def _seen_uris(spark: SparkSession, layout: DatasetLayout, manifest: Manifest) -> DataFrame:
    """source_uri of every input an earlier run wrote, rejected or recorded as a duplicate: from the files the
    manifest lists only, so an interrupted run's orphans are not "seen" and their inputs are processed again."""
    frames = [
        read_listed(spark, layout, manifest, table, schema).select("source_uri")
        for table, schema in (("images", images_spark()), ("rejects", rejects_spark()), ("duplicates", duplicates_spark()))
    ]
    return functools.reduce(DataFrame.unionByName, frames).distinct()


def _accumulate(prior: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Counts summed key by key, recursing into nested dicts (rejected by reason, duplicates by kind)."""
    out = dict(prior)
    for key, value in new.items():
        if isinstance(value, dict):
            out[key] = _accumulate(prior.get(key, {}), value)
        elif isinstance(value, (int, float)):
            out[key] = prior.get(key, 0) + value
        else:
            out[key] = value
    return out


def _remove_if_empty(fs: FileSystem, uri: str) -> None:
    try:
        if fs.is_dir(uri) and not fs.list(uri):
            fs.delete(uri)
    except OSError:
        pass


@dataclasses.dataclass(frozen=True)
class _Job:
    """What every stage of one run reads: set once in run_preprocess, never changed."""

    spark: SparkSession
    cfg: PreprocessConfig
    out: str
    run_id: str
    staging: str                  # OUT/_staging/<run>: everything this run writes before the commit
    layout: DatasetLayout
    fs: FileSystem
    prior: Manifest | None        # the dataset's manifest when this run is --incremental
    log: Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class _Inputs:
    specs: list[InputSpec]
    resolver: LabelResolver | None
    sources: DataFrame            # SOURCE_ARROW rows, one per input
    count: int                    # inputs, counted from the listing (not from `sources`' rows)
    tar_sidecars: int
    repeated: int                 # local files named by more than one INPUT, listed once (manifest: repeated_inputs)
    partitions: int


@dataclasses.dataclass(frozen=True)
class _Stats:
    classes: list[str]
    label_counts: dict[str, int]
    unlabeled: int
    written: int                  # images kept (to be written)
    channels: int
    totals: dict[str, int]        # exact integer channel sums behind pixel_mean/std
    label_report: dict[str, Any]
    fingerprint: str


def _run(job: _Job, inputs: list[str], timings: dict[str, float], progress: Progress) -> Manifest | None:
    with _timed(timings, "list_inputs", progress):
        src = list_inputs(job, inputs)
        progress.say(f"{src.count:,} inputs listed")
    if job.prior is not None:
        with _timed(timings, "skip_seen", progress):
            src = skip_seen(job, src)
        if src.count == 0:
            return None
    with _timed(timings, "decode", progress):
        decoded = decode(job, src, progress)
        check_outcome(job, decoded)
    staged = decoded.table
    images = staged.where(F.col("kind") == KIND_IMAGE)
    rejects = staged.where(F.col("kind") == KIND_REJECT)
    kept, duplicates, dropped = images, None, {}
    if job.cfg.dedup:
        with _timed(timings, "dedup", progress):
            progress.count("deduplicated", None, decoded.valid)
            kept, duplicates, dropped = dedup(job, images, src.partitions, decoded.valid)
    with _timed(timings, "stats", progress):
        stats = compute_stats(job, src, decoded, kept, duplicates, dropped)
    with _timed(timings, "write", progress):
        progress.count("written", None, stats.written)
        write_tables(job, stats, kept, rejects if sum(decoded.rejected.values()) else None)
    with _timed(timings, "verify", progress):
        counts, files = check_conservation(job, src, decoded, stats, with_duplicates=duplicates is not None)
        progress.say(f"{counts['written']:,} images written, {sum(counts['rejected'].values()):,} rejected, "
                     f"{sum(counts['duplicates'].values()):,} duplicates, of {src.count:,} inputs")
    _fault_point("staged")
    with _timed(timings, "commit", progress):
        commit(job)
    return build_manifest(job, inputs, src, stats, counts, files, timings)


# ----------------------------------------------------------------------------- stages
def list_inputs(job: _Job, inputs: list[str]) -> _Inputs:
    """Classify the inputs, build the label resolver and one DataFrame of source rows."""
    spark, cfg = job.spark, job.cfg
    specs = [classify(spark, u, url_tables=cfg.url_column is not None) for u in inputs]
    resolver = _label_resolver(spark, cfg, specs)
    partitions = cfg.partitions or 3 * spark.sparkContext.defaultParallelism
    exclude = (job.fs.qualify(cfg.labels_path),) if cfg.labels == LabelMode.SIDECAR else ()
    loaded = load_sources(spark, specs, cfg, partitions, exclude=exclude)
    sources = resolver.sidecar.attach(loaded.df, partitions) if resolver is not None and resolver.sidecar is not None else loaded.df
    return _Inputs(specs, resolver, sources, loaded.input_count, loaded.tar_sidecars, loaded.repeated, partitions)


def skip_seen(job: _Job, src: _Inputs) -> _Inputs:
    """--incremental: only inputs no earlier run has seen (by source URI). New URIs holding bytes an earlier
    run kept become exact duplicates in `dedup`, where earlier images are the `previous` index."""
    # No broadcast hint: the seen set grows with the dataset; AQE broadcasts it while it is small.
    sources = src.sources.join(_seen_uris(job.spark, job.layout, job.prior), "source_uri", "left_anti")
    return dataclasses.replace(src, sources=sources, count=sources.count())


def decode(job: _Job, src: _Inputs, progress: Progress | None = None) -> Staged:
    """Decode every input once (mapInArrow) into ONE staged table of image and reject rows, persisted under
    staging: every later stage reads it, nothing is decoded twice; counted by its own tasks (summarise_batch)."""
    staged_path = f"{job.staging}/decoded"
    decoded = job.spark.sparkContext.accumulator(0)
    summary = job.spark.sparkContext.accumulator({}, _SumsParam())
    by_label = job.spark.sparkContext.accumulator({}, _SumsParam())
    if progress is not None:
        progress.count("decoded", decoded, src.count)
    fn = functools.partial(_counted, fn=functools.partial(decode_partition, cfg=job.cfg, run_id=job.run_id,
                                                          labels=src.resolver), counter=decoded, summary=summary, by_label=by_label)
    with _arrow_conf(job.spark, job.cfg, src.partitions):
        # The staged table is temporary (deleted at commit) and mostly raw pixels, which snappy shrinks by ~3%
        # (measured: 25.2 vs 24.4 MB for 2000 images at 64 px) while costing the JVM ~0.1-0.15 ms/image to
        # compress here and again to decompress in the stages that re-read it: so it is stored uncompressed.
        (src.sources.mapInArrow(fn, from_arrow_schema(STAGED_ARROW)).write.mode("error")
         .option("compression", "none").parquet(staged_path))
    staged = job.spark.read.parquet(staged_path)
    return Staged(staged, *summarise(summary.value), by_label=by_label.value)


def _counted(batches: Iterator[pa.RecordBatch], fn: Callable, counter: Any, summary: Any, by_label: Any) -> Iterator[pa.RecordBatch]:
    """`fn` over `batches`, adding each input batch's rows to `counter` (the progress line's accumulator) and each
    output batch's summaries to `summary` and `by_label` (the decode stage's counts and the stats stage's sums, so no
    Spark job re-reads the staged table for them)."""
    def rows(batches):
        for batch in batches:
            yield batch
            counter.add(batch.num_rows)
    for out in fn(rows(batches)):
        summary.add(summarise_batch(out))
        by_label.add(label_stats_batch(out))
        yield out


def check_outcome(job: _Job, decoded: Staged) -> None:
    """No silent failure: a fresh run where every input was rejected fails with the top reason and the flag
    that changes it; a run rejecting more than half of its inputs warns the same way."""
    total, valid = decoded.rows, decoded.valid
    reasons = sorted(((n, reason) for reason, n in decoded.rejected.items()), reverse=True)
    if not reasons or valid * 2 >= total:
        return
    n, reason = reasons[0]
    message = (f"{total - valid} of {total} inputs rejected, most as {reason} ({n}); {reject_hint(job.cfg, reason)} "
               f"(the rejects/ rows say why for each file)")
    if valid == 0 and job.prior is None:
        raise NothingWrittenError(f"no image was written: {message}")
    # An incremental run commits its rejects even when nothing is valid, so a nightly run does not retry
    # the same broken files forever.
    job.log(f"imagegen preprocess: warning: {message}")


def reject_hint(cfg: PreprocessConfig, reason: str) -> str:
    """The setting that decides a reject reason, with its current value."""
    hints = {
        RejectReason.TOO_SMALL.value: f"images with a short side below --min-size {cfg.min_size} px are rejected; lower --min-size",
        RejectReason.TOO_LARGE.value: f"the limits are --max-pixels {cfg.max_pixels} and max_file_bytes {cfg.max_file_bytes}",
        RejectReason.BAD_ASPECT.value: f"images longer than --max-aspect {cfg.max_aspect} times their width are rejected; raise --max-aspect",
        RejectReason.BLANK.value: f"images whose grey std is below --min-std {cfg.min_std} are rejected as blank; lower --min-std",
        RejectReason.NOT_AN_IMAGE.value: "the inputs are not image files; check the INPUT paths",
        RejectReason.EMPTY_FILE.value: "the inputs are 0-byte files; check the INPUT paths",
        RejectReason.READ_ERROR.value: "the files could not be read; check permissions and the INPUT paths",
    }
    return hints.get(reason, "no setting accepts these files; repair or remove them")


def dedup(job: _Job, images: DataFrame, partitions: int, rows: int) -> tuple[DataFrame, DataFrame | None, dict | None]:
    """(kept, duplicates, dropped): exact (bytes or pixels) and near (pHash + pixel test) duplicates, within this run
    and against earlier runs' images. The duplicates rows are written here, once, as the run's duplicates/ table
    under staging (by pyarrow on the driver when the driver decided them and OUT is local), and `kept` is this
    run's images less the written rows, so stats and write agree and nothing re-runs the dedup plan.
    duplicates is None when there are none. dropped: the dropped images' LABEL_STATS per label when the driver
    decided (it carried their columns), else None."""
    cfg = job.cfg
    previous = read_listed(job.spark, job.layout, job.prior, "images", images_spark()) if job.prior is not None else None
    dedup_cfg = DedupConfig(near_distance=cfg.near_dup_distance, partitions=partitions,
                            **({"min_similarity": cfg.min_similarity} if cfg.min_similarity is not None else {}))
    found = find_duplicates(job.spark, images, previous, dedup_cfg, rows=rows, carry=("label", "is_grey", *PIXEL_SUMS))
    if isinstance(found, pa.Table) and found.num_rows == 0:
        return images, None, {}
    table_dir = f"{job.staging}/duplicates"
    local = os_path(f"{table_dir}/run_id={job.run_id}")
    dropped = None
    if isinstance(found, pa.Table):
        dropped = _label_stats(found.to_pandas())
        found = found.select(DUPLICATES_ARROW.names[:-1])
    if isinstance(found, pa.Table) and local is not None:
        os.makedirs(local)
        schema = pa.schema([f for f in DUPLICATES_ARROW if f.name != "run_id"], metadata=DUPLICATES_ARROW.metadata)
        # Spark's part-file name, so the dataset's file rules (schemas/layout.is_writer_file) hold for it
        pq.write_table(found.cast(schema), os.path.join(local, f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"))
    else:
        dups = duplicates_frame(job.spark, found) if isinstance(found, pa.Table) else found
        _non_null(dups.withColumn("run_id", F.lit(job.run_id)), DUPLICATES_ARROW).write.partitionBy("run_id").parquet(table_dir)
    duplicates = job.spark.read.schema(duplicates_spark()).parquet(table_dir)
    return images.join(duplicates.select("source_uri"), "source_uri", "left_anti"), duplicates, dropped


def _label_stats(rows) -> dict[str | None, list[int]]:
    """LABEL_STATS per label of some image rows (a pandas frame with label, is_grey and PIXEL_SUMS)."""
    rows = rows.assign(n=1, colour=~rows["is_grey"].fillna(False).astype(bool), label=rows["label"].astype(object))
    sums = rows.groupby("label", dropna=False)[list(LABEL_STATS)].sum()
    return {None if isinstance(label, float) and math.isnan(label) else label: [int(v) for v in values]
            for label, values in zip(sums.index, sums.to_numpy())}


def compute_stats(job: _Job, src: _Inputs, decoded: Staged, kept: DataFrame, duplicates: DataFrame | None,
                  dropped: dict | None) -> _Stats:
    """Classes, label counts, the stored channel count and the channel sums of the kept images: the decode tasks'
    per-label sums (Staged.by_label) less those of the dropped duplicates, which `dedup` gives when the driver decided,
    else one aggregation over only the dropped rows (no Spark job either way when nothing was dropped)."""
    cfg, prior = job.cfg, job.prior
    by_label = {label: list(values) for label, values in decoded.by_label.items()}
    if dropped is None and duplicates is not None:
        rows = decoded.table.where(F.col("kind") == KIND_IMAGE).join(duplicates.select("source_uri"), "source_uri", "left_semi")
        dropped = {r["label"]: [int(r[c] or 0) for c in LABEL_STATS] for r in rows.groupBy("label").agg(
            F.count(F.lit(1)).alias("n"), F.sum((~F.col("is_grey")).cast("long")).alias("colour"),
            *[F.sum(c).alias(c) for c in PIXEL_SUMS]).collect()}
    for label, values in (dropped or {}).items():
        have = by_label[label]
        for i, v in enumerate(values):
            have[i] -= v
    by_label = {label: dict(zip(LABEL_STATS, values)) for label, values in by_label.items() if values[0] > 0}
    new_classes = sorted(label for label in by_label if label is not None)
    # Earlier runs' label_index values stay valid: new classes are appended after the known ones.
    known = prior.classes if prior is not None else []
    classes = known + [c for c in new_classes if c not in known]
    label_counts = {label: v["n"] for label, v in by_label.items() if label is not None}
    unlabeled = by_label[None]["n"] if None in by_label and cfg.labels != LabelMode.NONE else 0
    written = sum(v["n"] for v in by_label.values())
    if cfg.labels != LabelMode.NONE and written and not label_counts and not classes:
        how = "below a class folder (ROOT/<class>/<file>)" if cfg.labels == LabelMode.DIRS else f"matched by a key of {cfg.labels_path}"
        raise NothingWrittenError(f"labels={cfg.labels.value} was asked for, but none of the {written} images got a label: "
                                  f"no file is {how}; fix the layout or pass --labels none")
    all_grey = all(v["colour"] == 0 for v in by_label.values())
    channels = _channels(cfg, prior, all_grey, written)
    totals = {c: sum(v[c] for v in by_label.values()) for c in PIXEL_SUMS}
    return _Stats(classes, label_counts, unlabeled, written, channels, totals,
                  _label_report(cfg, src.resolver, kept, decoded.table, unlabeled), input_fingerprint(decoded, src.specs))


def _channels(cfg: PreprocessConfig, prior: Manifest | None, all_grey: bool, written: int) -> int:
    """Stored channels: the dataset's for an incremental run (rows of one dataset agree), else --channels,
    where auto means 1 when every written image is grey."""
    if prior is not None:
        return prior.channels
    if cfg.channels is ChannelMode.AUTO:
        return 1 if written and all_grey else 3
    return int(cfg.channels.value)


def write_tables(job: _Job, stats: _Stats, kept: DataFrame, rejects: DataFrame | None) -> None:
    """images/ (with label_index, in the stored channels) and rejects/ under the staging directory (`dedup` wrote
    duplicates/). rejects is None when the decode stage's counts say there are none: no job scans the staged table for them."""
    staging = job.staging
    index = F.create_map(*[x for i, c in enumerate(stats.classes) for x in (F.lit(c), F.lit(i))]) if stats.classes else None
    labelled = kept.withColumn("label_index", index[F.col("label")] if index is not None else F.lit(None).cast("int"))
    rows = _non_null(labelled, IMAGES_ARROW)
    if stats.channels == 1:
        rows = rows.mapInArrow(reduce_to_grey, rows.schema)
    rows.write.partitionBy("run_id").parquet(f"{staging}/images")
    if rejects is not None:
        _non_null(rejects, REJECTS_ARROW).write.partitionBy("run_id").parquet(f"{staging}/rejects")


def _file_rows(job: _Job, table: str, schema, by: str | None = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The staged files of `table` with their row counts (the manifest's `files` entries, at their committed paths),
    and the row count per value of column `by`: one pass over the written data."""
    staged_dir = f"{job.staging}/{table}"
    part = f"run_id={job.run_id}"
    if not job.fs.exists(f"{staged_dir}/{part}"):
        return [], {}
    names = [e.uri.rstrip("/").rsplit("/", 1)[-1] for e in job.fs.list(f"{staged_dir}/{part}") if not e.is_dir]
    data = sorted(n for n in names if n.endswith(".parquet") and not n.startswith((".", "_")))
    local = os_path(f"{staged_dir}/{part}")
    per_file: dict[str, int] = {}
    per_value: dict[str, int] = {}
    if local is not None:  # the footers' row counts and the one column, read on the driver: no Spark job
        for name in data:
            pf = pq.ParquetFile(os.path.join(local, name))
            per_file[name] = pf.metadata.num_rows
            if by:
                for value, n in Counter(pf.read(columns=[by]).column(by).to_pylist()).items():
                    per_value[value] = per_value.get(value, 0) + n
        return [{"path": f"{table}/{part}/{n}", "rows": per_file[n]} for n in data], per_value
    df = job.spark.read.schema(schema).parquet(staged_dir)
    keys = [F.col("_metadata.file_name").alias("file")] + ([F.col(by)] if by else [])
    for r in df.groupBy(*keys).count().collect():  # O(files x values) rows on the driver, never O(images)
        per_file[r["file"]] = per_file.get(r["file"], 0) + int(r["count"])
        if by:
            per_value[r[by]] = per_value.get(r[by], 0) + int(r["count"])
    unknown = sorted(set(per_file) - set(data))
    if unknown:
        raise ConservationError(f"rows read from {unknown}, which are not Parquet files of {staged_dir}/{part}")
    return [{"path": f"{table}/{part}/{n}", "rows": per_file.get(n, 0)} for n in data], per_value


def check_conservation(job: _Job, src: _Inputs, decoded: Staged, stats: _Stats,
                       with_duplicates: bool) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """inputs == staged rows == written + rejected + duplicates, counted from what was written; else fail. Also
    returns the written files with their row counts (the manifest's `files` for this run)."""
    # explicit schemas: a kind with no rows is written as no files, which Spark cannot infer a schema from
    image_files, _ = _file_rows(job, "images", images_spark())
    reject_files, by_reason = _file_rows(job, "rejects", rejects_spark(), by="reason")
    files = {"images": image_files, "rejects": reject_files, "duplicates": []}
    written = sum(f["rows"] for f in image_files)
    rejected = {r.value: 0 for r in RejectReason}
    rejected.update(by_reason)
    dup_counts = {"exact": 0, "near": 0}
    if with_duplicates:
        files["duplicates"], by_kind = _file_rows(job, "duplicates", duplicates_spark(), by="kind")
        dup_counts.update(by_kind)
    staged_rows = decoded.rows
    accounted = written + sum(rejected.values()) + sum(dup_counts.values())
    if not (src.count == staged_rows == accounted):
        raise ConservationError(
            f"conservation failed: inputs={src.count}, decoded rows={staged_rows}, "
            f"written={written} + rejected={sum(rejected.values())} + duplicates={sum(dup_counts.values())} = {accounted}"
        )
    counts = {"inputs": src.count, "written": written, "rejected": rejected, "duplicates": dup_counts,
              "unlabeled": stats.unlabeled, "tar_sidecars_skipped": src.tar_sidecars,
              "repeated_inputs": src.repeated}
    return counts, files


def commit(job: _Job) -> None:
    """Move the run's partitions into OUT. They are orphans, read by nobody, until run_preprocess replaces
    manifest.json with one that lists them; an --overwrite's old manifest stays in place until then."""
    fs, layout, run_id = job.fs, job.layout, job.run_id
    for name in TABLES:
        src = f"{job.staging}/{name}/run_id={run_id}"
        if fs.exists(src):
            fs.rename(src, f"{layout.table(name)}/run_id={run_id}")
            _fault_point("commit:first-move")
    _fault_point("commit:moved")


def build_manifest(job: _Job, inputs: list[str], src: _Inputs, stats: _Stats, counts: dict[str, Any],
                   files: dict[str, list[dict[str, Any]]], timings: dict[str, float]) -> Manifest:
    """The manifest of the whole dataset: this run, plus the earlier runs of an incremental dataset."""
    prior = job.prior
    run = {"run_id": job.run_id, "inputs": list(inputs), "counts": counts}
    label_counts, totals, fingerprint, runs = stats.label_counts, stats.totals, stats.fingerprint, [run]
    if prior is not None:
        counts = _accumulate(prior.counts, counts)
        label_counts = _accumulate(prior.label_counts, label_counts)
        totals = _accumulate(prior.extra.get("pixel_sums", {}), totals)
        fingerprint = hashlib.sha256(f"{prior.input_fingerprint}+{fingerprint}".encode()).hexdigest()[:32]
        runs = prior.runs + runs
        files = {t: prior.files.get(t, []) + files.get(t, []) for t in TABLES}
    pixel_mean, pixel_std = _mean_std(totals, stats.channels)
    return Manifest(
        schema_version=SCHEMA_VERSION,
        run_id=job.run_id,
        resolution=job.cfg.resolution,
        channels=stats.channels,
        pixel_encoding=job.cfg.pixel_encoding.value,
        classes=stats.classes,
        counts=counts,
        label_counts=label_counts,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
        config=job.cfg.to_dict(),
        input_fingerprint=fingerprint,
        timings=timings,
        versions=software_versions(),
        files=files,
        runs=runs,
        extra={
            "inputs": [{"uri": s.uri, "kind": s.kind.value} for s in src.specs],
            "partitions": src.partitions,
            "labels": stats.label_report,
            "class_to_index": {c: i for i, c in enumerate(stats.classes)},
            "pixel_sums": totals,  # exact integer sums behind pixel_mean/std, so incremental runs can add to them
        },
    )


def _mean_std(totals: dict[str, int], channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the stored pixels scaled to [0, 1], from exact integer sums (1 channel: the luma sums)."""
    names = "l" if channels == 1 else "rgb"
    n = totals.get("n_pixels", 0)
    if n == 0:
        return [0.0] * channels, [0.0] * channels
    means, stds = [], []
    for c in names:
        mean = totals[f"sum_{c}"] / n / 255.0
        var = totals[f"sumsq_{c}"] / n / 255.0**2 - mean * mean
        means.append(round(mean, 6))
        stds.append(round(math.sqrt(max(var, 0.0)), 6))
    return means, stds


def _label_report(cfg: PreprocessConfig, resolver: LabelResolver | None, kept: DataFrame, staged: DataFrame,
                  unlabeled: int) -> dict[str, Any]:
    """Unlabeled written images, and sidecar entries that match no input file (images and rejects alike)."""
    report: dict[str, Any] = {"mode": cfg.labels.value, "sidecar": cfg.labels_path, "unlabeled": unlabeled, "unlabeled_examples": []}
    if cfg.labels == LabelMode.NONE:
        return report
    if unlabeled:
        rows = kept.where(F.col("label").isNull()).select("source_uri").orderBy("source_uri").limit(EXAMPLES_CAP).collect()
        report["unlabeled_examples"] = [r["source_uri"] for r in rows]
    if resolver is not None and resolver.sidecar is not None:  # Spark joins: no per-file collect on the driver
        report.update(resolver.sidecar.report(staged, EXAMPLES_CAP))
    return report


def render_summary(m: Manifest) -> str:
    c = m.counts
    lines = [
        f"imagegen preprocess: run {m.run_id}",
        f"  {'inputs':<28}{c['inputs']:>10}",
        f"  {'written':<28}{c['written']:>10}",
    ]
    for reason, n in sorted(c["rejected"].items()):
        if n:
            lines.append(f"  {'rejected: ' + reason:<28}{n:>10}")
    lines.append(f"  {'rejected (total)':<28}{sum(c['rejected'].values()):>10}")
    for kind, n in c["duplicates"].items():
        lines.append(f"  {'duplicates: ' + kind:<28}{n:>10}")
    labels = m.extra.get("labels", {})
    if labels.get("mode") != "none":
        lines.append(f"  {'classes':<28}{len(m.classes):>10}")
        for label, n in sorted(m.label_counts.items()):
            lines.append(f"    {label:<26}{n:>10}")
        lines.append(f"  {'unlabeled':<28}{labels.get('unlabeled', 0):>10}")
        if "sidecar_unmatched" in labels:
            lines.append(f"  {'sidecar entries unmatched':<28}{labels['sidecar_unmatched']:>10}")
    lines.append(f"  pixel mean {m.pixel_mean}  std {m.pixel_std}  ({m.resolution}x{m.resolution}x{m.channels}, {m.pixel_encoding})")
    timing = "  ".join(f"{k}={v:.1f}s" for k, v in m.timings.items())
    lines.append(f"  timings: {timing}")
    return "\n".join(lines)
