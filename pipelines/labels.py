"""Labels: from directory names, from a CSV/JSON sidecar (path -> label), or none.

dirs: the label is the name of the file's parent directory, below the input root
      (`ROOT/cat/001.jpg` -> "cat"; `ROOT/a/b/002.jpg` -> "b"; a file directly in ROOT has no
      label). Tar members use the member path (`shard.tar#cat/001.jpg` -> "cat"); URI-list
      entries use the parent directory of the URI.
sidecar: a CSV with header columns `path,label` (`file`/`filename`/`uri` accepted for path) or a
      JSON object {path: label} or a JSON list of {"path": ..., "label": ...}, in UTF-8 (a BOM is
      accepted). An entry matches a file when its key equals, tried in this order: the full source URI
      (`file:/data/x.jpg`, or `file:/data/s.tar#m.jpg`), the path relative to the input root
      (`cat/001.jpg`; for a tar member the member path), or the basename of that relative path (`001.jpg`).
      Keys are literal strings: `hash#1.png` is the file of that name, never a fragment. They are compared
      after stripping whitespace and a leading "./"; a local absolute key (`/data/x.jpg`, `file:///data/x.jpg`)
      is compared in the one local spelling (`file:/data/x.jpg`).
      A sidecar is refused with one line naming the file, the line and the fix (SidecarError) when it is not
      UTF-8, has a quoted CSV field that never closes, is not valid JSON, gives one key twice, or has a key
      outside the inputs (an absolute key below no input root that names no input, or a relative key that
      climbs out with "..").
Every label is Unicode NFC, so a folder `café` spelled NFC and one spelled NFD are one class.
The class -> index map is the sorted list of distinct labels of the written images.

Scale: the sidecar is parsed in a Spark task (streamed line by line for CSV) into a DataFrame of
(key, label, line), checked with Spark aggregates, and joined to the source rows on the candidate keys
(broadcast when it has at most BROADCAST_MAX_ENTRIES entries). The driver never holds the entries, and
no task closure carries them.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import posixpath
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from pipelines.config import LabelMode
from pipelines.source_rows import open_stream
from schemas.uri import has_scheme, is_local, path_to_uri, uri_to_path

_PATH_COLUMNS = ("path", "file", "filename", "uri", "source_uri")
# Up to this many entries the sidecar is broadcast to the join (~100 bytes each: ~20 MB); above it, a shuffle join.
BROADCAST_MAX_ENTRIES = 200_000
SIDECAR_ARROW = pa.schema([pa.field("key", pa.string()), pa.field("label", pa.string()), pa.field("line", pa.int64()),
                           pa.field("error", pa.string())])


class SidecarError(ValueError):
    """A sidecar that cannot be used, in one line: `<file>: line N: what is wrong; how to fix it`."""


def nfc(label: str | None) -> str | None:
    return None if label is None else unicodedata.normalize("NFC", label)


def label_from_dirs(rel_path: str | None) -> str | None:
    """Parent directory name of a root-relative path (NFC), or None for a file at the root."""
    if not rel_path:
        return None
    parent = posixpath.dirname(rel_path.rstrip("/"))
    name = posixpath.basename(parent)
    return nfc(name) or None


def _norm_key(key: str) -> str:
    key = key.strip()
    while key.startswith("./"):
        key = key[2:]
    if key.startswith("/") or (is_local(key) and has_scheme(key)):
        key = path_to_uri(posixpath.normpath(uri_to_path(key)))  # one local spelling: file:/abs/path
    return key


# ----------------------------------------------------------------------------- parsing (pure, streamed)
def _decoded_lines(lines: Iterable[bytes], name: str) -> Iterator[str]:
    """UTF-8 text lines (a BOM at the start dropped) from raw lines; a line that is not UTF-8 -> SidecarError."""
    for n, raw in enumerate(lines, 1):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SidecarError(f"{name}: line {n}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                               "save the file as UTF-8") from None


def _csv_entries(lines: Iterable[bytes], name: str) -> Iterator[tuple[int, str, str]]:
    reader = csv.reader(_decoded_lines(lines, name), strict=True)
    last = 0
    try:
        header = next(reader, None)
        fields = [f.strip().lower() for f in header or []]
        path_col = next((c for c in _PATH_COLUMNS if c in fields), None)
        if path_col is None or "label" not in fields:
            raise SidecarError(f"{name}: line 1: expected CSV header columns 'path' (or {', '.join(_PATH_COLUMNS[1:])}) "
                               f"and 'label', found {fields}; add that header line")
        pi, li = fields.index(path_col), fields.index("label")
        last = reader.line_num
        for row in reader:
            if len(row) > max(pi, li):
                yield last + 1, row[pi], row[li]
            elif any(cell.strip() for cell in row):
                raise SidecarError(f"{name}: line {last + 1}: expected {len(fields)} columns, found {len(row)}; "
                                   "quote values holding a comma")
            last = reader.line_num
    except csv.Error as exc:
        if "end of data" in str(exc):
            raise SidecarError(f"{name}: line {last + 1}: a quoted field opened on this line is never closed (the rest "
                               "of the file would be one value); close the quote or double it (\"\") inside the value") from None
        raise SidecarError(f"{name}: line {reader.line_num}: {exc}; quote the whole value and double any quote inside it") from None


def _json_entries(data: bytes, name: str) -> Iterator[tuple[int, str, Any]]:
    """(line, key, label) of a JSON object {path: label} or list [{path, label}], in file order (duplicates kept,
    so they can be reported with their lines)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SidecarError(f"{name}: line {line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None
    decoder = json.JSONDecoder()

    def fail(exc: json.JSONDecodeError) -> SidecarError:
        return SidecarError(f"{name}: line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); fix the JSON")

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    pos = skip(0)
    try:
        if text.startswith("{", pos):  # walked pair by pair: json.loads would keep only the last of two equal keys
            pos = skip(pos + 1)
            if text.startswith("}", pos):
                return
            while True:
                if not text.startswith('"', pos):
                    raise json.JSONDecodeError("expected a string key", text, pos)
                key, end = json.decoder.scanstring(text, pos + 1)
                line = line_of(pos)
                pos = skip(end)
                if not text.startswith(":", pos):
                    raise json.JSONDecodeError("expected ':'", text, pos)
                value, pos = decoder.raw_decode(text, skip(pos + 1))
                yield line, key, value
                pos = skip(pos)
                if text.startswith(",", pos):
                    pos = skip(pos + 1)
                elif text.startswith("}", pos):
                    break
                else:
                    raise json.JSONDecodeError("expected ',' or '}'", text, pos)
        elif text.startswith("[", pos):
            pos = skip(pos + 1)
            while not text.startswith("]", pos):
                line = line_of(pos)
                item, pos = decoder.raw_decode(text, pos)
                if not isinstance(item, dict) or "path" not in item or "label" not in item:
                    raise SidecarError(f"{name}: line {line}: a JSON list must hold objects with 'path' and 'label'; "
                                       f"found {json.dumps(item)[:60]}")
                yield line, item["path"], item["label"]
                pos = skip(pos)
                if text.startswith(",", pos):
                    pos = skip(pos + 1)
                elif not text.startswith("]", pos):
                    raise json.JSONDecodeError("expected ',' or ']'", text, pos)
        else:
            value, _ = decoder.raw_decode(text, pos)
            raise SidecarError(f"{name}: line {line_of(pos)}: expected a JSON object {{path: label}} or a list of "
                               f"{{path, label}}, found {type(value).__name__}; wrap the entries in {{}} or []")
        if skip(pos + 1) < len(text):
            raise json.JSONDecodeError("extra data after the JSON value", text, skip(pos + 1))
    except json.JSONDecodeError as exc:
        raise fail(exc) from None


def sidecar_entries(lines: Iterable[bytes], name: str) -> Iterator[tuple[int, str, str]]:
    """(line, key, label) of every labelled entry of a sidecar given as raw lines, keys normalised and labels NFC.
    Entries without a label label nothing and are dropped. Raises SidecarError (one line) on a broken file."""
    lower = name.lower()
    if lower.endswith(".json"):
        items: Iterable[tuple[int, str, Any]] = _json_entries(b"".join(lines), name)
    elif lower.endswith(".csv"):
        items = _csv_entries(lines, name)
    else:
        raise SidecarError(f"{name}: expected a .csv or .json sidecar; rename it or convert it")
    for line, key, label in items:
        if key is None or label is None or str(label).strip() == "":
            continue
        yield line, _norm_key(str(key)), nfc(str(label).strip())


def parse_sidecar(text: str | bytes, name: str) -> dict[str, str]:
    """The whole sidecar as {key: label} (small files, tests). Duplicate keys -> SidecarError."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    mapping: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line, key, label in sidecar_entries(data.splitlines(keepends=True), name):
        if key in mapping:
            raise _duplicate(name, key, lines[key], line)
        mapping[key], lines[key] = label, line
    return mapping


def _duplicate(name: str, key: str, first: int, again: int) -> SidecarError:
    return SidecarError(f"{name}: line {again}: key {key!r} is already given on line {first}; keep one entry per path")


def key_outside(key: str, roots: tuple[str, ...]) -> bool:
    """A relative key climbing out with "..", or an absolute key below none of `roots` (qualified URIs)."""
    if not (has_scheme(key) or key.startswith("/")):
        norm = posixpath.normpath(key)
        return norm == ".." or norm.startswith("../")
    return not any(key == r.rstrip("/") or key.startswith(r.rstrip("/") + "/") for r in roots)


def _parse_task(batches: Iterator[pa.RecordBatch], name: str, roots: tuple[str, ...]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: the one sidecar URI in, SIDECAR_ARROW rows out in bounded batches. A broken file ends
    with one row holding the error (tasks return data; an exception would reach the user as a trace)."""
    for batch in batches:
        for uri in batch.column("uri").to_pylist():
            rows: list[dict[str, Any]] = []
            try:
                with open_stream(uri) as raw:
                    for line, key, label in sidecar_entries(_lines(raw), name):
                        outside = key_outside(key, roots)
                        rows.append({"key": key, "label": label, "line": line,
                                     "error": f"outside:{line}" if outside else None})
                        if len(rows) >= 4096:
                            yield pa.RecordBatch.from_pylist(rows, schema=SIDECAR_ARROW)
                            rows = []
            except SidecarError as exc:
                rows.append({"key": None, "label": None, "line": None, "error": str(exc)})
            except OSError as exc:
                rows.append({"key": None, "label": None, "line": None, "error": f"{name}: cannot be read: {exc}"})
            yield pa.RecordBatch.from_pylist(rows, schema=SIDECAR_ARROW)


def _lines(stream) -> Iterator[bytes]:
    """Raw lines of a binary stream (local file or pyarrow stream), 1 MiB reads."""
    rest = b""
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            break
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for p in parts:
            yield p + b"\n"
    if rest:
        yield rest


# ----------------------------------------------------------------------------- the sidecar as a DataFrame
class Sidecar:
    """A checked sidecar as a DataFrame of (key, label). Driver-side only (never pickled into a task)."""

    def __init__(self, spark, uri: str, name: str, df, entries: int):
        self.spark, self.uri, self.name, self.df, self.entries = spark, uri, name, df, entries

    @classmethod
    def load(cls, spark, uri: str, name: str, roots: tuple[str, ...]) -> Sidecar:
        """Parse `uri` in one task and check its text and keys (duplicates); keys outside `roots` are marked and
        checked against the inputs by `attach` (a URI list names files anywhere)."""
        from pyspark import StorageLevel
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_schema

        seed = spark.createDataFrame([(uri,)], "uri string")
        fn = functools.partial(_parse_task, name=name, roots=roots)
        df = seed.mapInArrow(fn, from_arrow_schema(SIDECAR_ARROW)).persist(StorageLevel.MEMORY_AND_DISK)
        broken = df.where(F.col("key").isNull()).select("error").limit(1).collect()
        if broken:
            raise SidecarError(broken[0]["error"])
        dup = (df.groupBy("key").agg(F.count(F.lit(1)).alias("n"), F.sort_array(F.collect_list("line")).alias("lines"))
               .where("n > 1").orderBy(F.col("lines")[1]).limit(1).collect())
        if dup:
            raise _duplicate(name, dup[0]["key"], dup[0]["lines"][0], dup[0]["lines"][1])
        return cls(spark, uri, name, df, df.count())

    def check_outside(self, sources) -> None:
        """A key outside the input roots is an error: a relative key climbing out with "..", or an absolute key
        below no input root that names no input (`sources`' source_uri: a URI-list entry may lie anywhere).
        The inputs are scanned only when such an absolute key exists."""
        from pyspark.sql import functions as F

        outside = self.df.where(F.col("error").isNotNull())
        if not outside.limit(1).count():
            return
        absolute = F.col("key").rlike("^(/|[A-Za-z][A-Za-z0-9+.-]*:)")
        named = outside.where(absolute).join(sources.select(F.col("source_uri").alias("key")), "key", "left_anti")
        row = outside.where(~absolute).unionByName(named).orderBy("line").limit(1).collect()
        if row:
            raise SidecarError(f"{self.name}: line {row[0]['line']}: key {row[0]['key']!r} is outside the inputs; keys are "
                               "source URIs or paths below an input root, or relative paths without '..'")

    def attach(self, sources, partitions: int):
        """The source rows with `label` and `label_key` (the sidecar key that matched) columns: three left
        joins on the candidate keys (source URI, normalised relative path, basename), first match wins."""
        from pyspark.sql import functions as F

        self.check_outside(sources)
        side = self.df.select("key", "label")
        big = self.entries > BROADCAST_MAX_ENTRIES
        rel = F.regexp_replace(F.regexp_replace(F.col("rel_path"), r"^\s+|\s+$", ""), r"^(\./)+", "")
        df = sources.withColumns({"_k0": F.col("source_uri"), "_k1": rel,
                                  "_k2": F.regexp_extract(F.col("rel_path"), r"[^/]*$", 0)})
        for i in range(3):
            part = side.select(F.col("key").alias(f"_k{i}"), F.col("label").alias(f"_l{i}"))
            df = df.join(part if big else F.broadcast(part), f"_k{i}", "left")
        first = F.coalesce(*[F.when(F.col(f"_l{i}").isNotNull(), F.struct(F.col(f"_l{i}").alias("l"), F.col(f"_k{i}").alias("k")))
                             for i in range(3)])
        df = df.withColumn("_m", first).withColumns({"label": F.col("_m.l"), "label_key": F.col("_m.k")})
        df = df.drop("_m", *[f"_k{i}" for i in range(3)], *[f"_l{i}" for i in range(3)])
        return df.repartition(partitions) if big else df  # a shuffle join leaves shuffle-sized partitions

    def report(self, staged, cap: int) -> dict[str, Any]:
        """Entries, and entries that match no input file (images and rejects alike) with the first `cap` keys."""
        from pyspark.sql import functions as F

        matched = staged.where(F.col("label_key").isNotNull()).select(F.col("label_key").alias("key")).distinct()
        unmatched = self.df.select("key").join(matched, "key", "left_anti")
        n = unmatched.count()
        examples = [r["key"] for r in unmatched.orderBy("key").limit(cap).collect()] if n else []
        return {"sidecar_entries": self.entries, "sidecar_unmatched": n, "sidecar_unmatched_examples": examples}


@dataclasses.dataclass(frozen=True)
class LabelResolver:
    """What the decode stage needs to label a row. `sidecar` stays on the driver: a pickled resolver (a task's
    closure) holds only the mode, since sidecar labels reach the tasks as columns (Sidecar.attach)."""

    mode: LabelMode
    sidecar: Sidecar | None = None

    def __reduce__(self):
        return (LabelResolver, (self.mode,))

    def resolve(self, rel_path: str | None, source_uri: str) -> tuple[str | None, str | None]:
        """dirs mode -> (label or None, None). Sidecar labels come from the attached columns."""
        if self.mode == LabelMode.DIRS:
            return label_from_dirs(rel_path), None
        return None, None
