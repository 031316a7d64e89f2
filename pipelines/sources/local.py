"""Local FILES inputs and local URI-list entries: our own listing (no binaryFile).

Local files: one spelling from listing to output. A local file's source_uri is schemas.uri.path_to_uri of
the path it was listed under (`file:/data/a b#1.png`, never percent-encoded), whatever its name holds
(spaces, NFC or NFD Unicode, %, #, ?, [, ], *, a newline, a leading -, 255-byte names). binaryFile is not
used for them: Spark reports such names in two spellings (inputFiles() percent-encodes, the path column
does not), which made one file two inputs. The rows carry content=null and read_uri=source_uri; the decode
stage reads the bytes (PreprocessConfig.read_local_in_worker off: a mapInArrow here reads them into content).

How local inputs are listed (`_plan_files`, `_walk_partition`, `_local_frame`):
  * The driver walks each input breadth-first with os.scandir, keeping directories only (it never stats or
    keeps the files), until `partitions` directories wait to be walked or the tree ends. Each directory it
    walked becomes a "files" seed (a task lists the files directly in it); each waiting directory a "tree"
    seed (a task walks its subtree); glob matches and single files "file" seeds; URI-list entries "listed"
    seeds. A DataFrame of the seeds goes through one mapInArrow: each task lists with os.scandir and yields
    rows in batches of at most WALK_BATCH_ROWS. So neither the driver nor a task holds a whole listing.
  * The listing is persisted and counted once (with the number of symlinked rows): input_count is its row
    count, and the decode stage reads the same rows.
  * Symlinks are followed (files and directories). Loops (`up -> ..`, `abs -> ROOT`) end because every
    walker keeps the (st_dev, st_ino) of the directories it visited, starting from the driver's set (the
    directories the driver walked and the ones it handed out), and enters a directory only once. A walker
    lists real directories first and only then the symlinked ones whose target it has not visited.
  * One file, one input: every row carries the (st_dev, st_ino) of the file it names and whether it was
    reached through a symlink. When any such row exists, one Spark step keeps a symlinked row only if no
    real path names the same file, and among symlinked rows naming one file the lexicographically first
    URI (tasks cannot see each other's visited sets; this settles it across them). Files reached without a
    symlink are never merged: two hard links are two names, two inputs (dedup reports the duplicate).
  * Nothing kills the job: a directory that cannot be listed (PermissionError, ...) is one read_error row
    (source_uri = the directory's URI); so is a path that cannot be stat'ed (a dangling symlink), a FIFO or
    other non-regular file, and a name that is not valid UTF-8 (spelled with backslash escapes). Each is
    counted as an input and ends as a reject with its reason.
  * rel_path (labels=dirs) is the path below the input root, the glob's fixed prefix, or the single file's
    directory, as listed (through symlinks, not resolved). A URI-list entry's rel_path is its URI.
  * Globs: expanded with Python's glob on the driver (`*`, `?`, `[...]` within one path segment; Hadoop's
    `{a,b}` alternatives are expanded first). Matching directories are walked, matching files listed. A
    local input that exists as written is never a glob (a folder named `photos [2020]` is that folder).
"""
from __future__ import annotations

import functools
import glob
import os
import stat
from collections import defaultdict, deque
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from pipelines.source_rows import SOURCE_ARROW
from pipelines.sources.spec import (
    InputSpec,
    _is_glob,
)
from schemas.uri import FILE_SCHEME, path_to_uri, uri_to_path


def is_hidden(name: str) -> bool:
    """Spark's hidden-file rule (InMemoryFileIndex.shouldFilterOutPathName), applied at every level below
    an input root: a name starting with "." or "_" (but "_" names holding "=" are partition directories
    and stay), and an in-flight "._COPYING_" upload."""
    return (name.startswith("_") and "=" not in name) or name.startswith(".") or name.endswith("._COPYING_")


def _i64(x: int) -> int:
    """st_dev / st_ino are unsigned 64-bit; Spark longs are signed."""
    return x - (1 << 64) if x >= (1 << 63) else x


def _spelled(path: str) -> tuple[str, bool]:
    """(URI, representable): a name that is not valid UTF-8 (Linux allows any bytes) cannot be a string
    column value; it gets an escaped spelling and becomes a read_error row instead of failing the job."""
    uri = path_to_uri(path)
    try:
        uri.encode("utf-8")
        return uri, True
    except UnicodeEncodeError:
        return os.fsencode(uri).decode("utf-8", "backslashreplace"), False


def _oserror(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc.strerror or exc}"


DATASET_MARK = "_imagegen.json"  # schemas.layout.MARK_NAME: a directory holding it is a dataset, never an input


class _Walker:
    """Lists one input spec's files (in a Spark task, or partly on the driver) as LISTING_ARROW rows.

    root: OS path rel_path is relative to (None: rel_path = the URI, as for URI-list entries).
    visited: (st_dev, st_ino) of every directory already walked or handed to some walker, for loop detection."""

    def __init__(self, root: str | None, visited: set[tuple[int, int]], exclude: frozenset[str]):
        self.root_prefix = None if root is None else (root.rstrip("/") + "/")
        self.visited = visited
        self.exclude = exclude

    # -- rows: (source_uri, rel_path, content, length, source_error, read_uri, _dev, _ino, _aliased)
    def _rel(self, uri: str) -> str | None:
        if self.root_prefix is None:
            return uri
        prefix = FILE_SCHEME + self.root_prefix
        return uri[len(prefix):] if uri.startswith(prefix) else None

    def file_row(self, path: str, st: os.stat_result, aliased: bool, rel: str | None = "") -> tuple:
        uri, ok = _spelled(path)
        rel = self._rel(uri) if rel == "" else rel
        key = (_i64(st.st_dev), _i64(st.st_ino))
        if not ok:
            return (uri, rel, None, None, "file name is not valid UTF-8 (it has no string spelling)", None, *key, aliased)
        return (uri, rel, None, st.st_size, None, uri, *key, aliased)

    def error_row(self, path: str, error: str, key: tuple[int, int] | None = None, aliased: bool = False,
                  rel: str | None = "") -> tuple:
        uri, _ = _spelled(path)
        rel = self._rel(uri) if rel == "" else rel
        dev, ino = key if key is not None else (None, None)
        return (uri, rel, None, None, error, None, dev, ino, aliased and key is not None)

    def stat_row(self, path: str, aliased: bool, rel: str | None = "", missing: str | None = None) -> tuple | None:
        """The row of one named path (a single-file input, a glob match, a URI-list entry); None if excluded."""
        if path_to_uri(path) in self.exclude:
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError as exc:
            return self.error_row(path, missing or f"cannot stat: {_oserror(exc)}", rel=rel)
        except OSError as exc:
            return self.error_row(path, f"cannot stat: {_oserror(exc)}", rel=rel)
        if stat.S_ISREG(st.st_mode):
            return self.file_row(path, st, aliased, rel)
        if stat.S_ISDIR(st.st_mode) and missing:
            return self.error_row(path, missing, rel=rel)
        return self.error_row(path, "not a regular file", rel=rel)

    # -- one directory
    def scan(self, path: str, via_link: bool, key: tuple[int, int] | None, files_only: bool,
             dirs: list, links: list) -> Iterator[tuple]:
        """Rows of the non-directory entries of `path`; unless files_only, its subdirectories go to
        `dirs` (real ones, not yet visited: marked visited now) and `links` (symlinked ones, decided later).
        A directory that cannot be listed is one read_error row."""
        try:
            it = os.scandir(path)
        except OSError as exc:
            yield self.error_row(path, f"cannot list directory: {_oserror(exc)}", key, via_link)
            return
        with it:
            try:
                for entry in it:
                    name = entry.name
                    if is_hidden(name):
                        continue
                    child = path.rstrip("/") + "/" + name
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    if is_dir:
                        if not files_only:
                            exc = self._subdir(entry, child, via_link, dirs, links)
                            if exc is not None:  # a directory that cannot be stat'ed cannot be walked
                                yield self.error_row(child, f"cannot stat directory: {_oserror(exc)}")
                        continue
                    if self.exclude and path_to_uri(child) in self.exclude:
                        continue
                    aliased = via_link or entry.is_symlink()
                    try:
                        st = entry.stat()
                    except OSError as exc:
                        yield self.error_row(child, f"cannot stat: {_oserror(exc)}")
                        continue
                    if stat.S_ISREG(st.st_mode):
                        yield self.file_row(child, st, aliased)
                    else:
                        yield self.error_row(child, "not a regular file or directory", (_i64(st.st_dev), _i64(st.st_ino)), aliased)
            except OSError as exc:  # the listing broke off part-way
                yield self.error_row(path, f"listing the directory broke off: {_oserror(exc)}", key, via_link)

    def subdirs(self, path: str, via_link: bool, dirs: list, links: list, failed: list) -> bool:
        """The driver's pass over one directory: its subdirectories only (no stat of its files, no rows);
        `failed`: subdirectories that cannot be stat'ed. False (and nothing recorded) when it cannot be listed."""
        found: list = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if is_hidden(entry.name):
                        continue
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        continue
                    if is_dir:
                        child = path.rstrip("/") + "/" + entry.name
                        if self._subdir(entry, child, via_link, found, links) is not None:
                            failed.append(child)
        except OSError:
            for _, _, key in found:
                self.visited.discard(key)
            return False
        dirs.extend(found)
        return True

    def _subdir(self, entry: os.DirEntry, child: str, via_link: bool, dirs: list, links: list) -> OSError | None:
        try:
            st = entry.stat()
        except OSError as exc:
            return exc
        key = (_i64(st.st_dev), _i64(st.st_ino))
        if os.path.isfile(os.path.join(child, DATASET_MARK)):  # an imagegen dataset (OUT inside INPUT): not input
            return None
        if entry.is_symlink():
            links.append((child, key))
        elif key not in self.visited:  # a real directory seen twice: a bind mount loop
            self.visited.add(key)
            dirs.append((child, via_link, key))
        return None

    # -- a whole subtree (a Spark task)
    def walk(self, trees: list[tuple[str, bool, tuple]], links: list[tuple[str, tuple]]) -> Iterator[tuple]:
        """Depth-first over `trees` (real directories, already marked visited), then over the symlinked
        directories (`links` and those found on the way) whose target no walker has visited yet. Real
        directories first, so a directory reachable both ways is listed under its real path."""
        stack = list(reversed(trees))
        deferred = deque(sorted(links))
        while True:
            while stack:
                path, via_link, key = stack.pop()
                dirs: list = []
                found: list = []
                yield from self.scan(path, via_link, key, False, dirs, found)
                stack.extend(sorted(dirs, reverse=True))
                deferred.extend(sorted(found))
            if not deferred:
                return
            path, key = deferred.popleft()
            if key not in self.visited:
                self.visited.add(key)
                stack.append((path, True, key))


def _expand_braces(pattern: str) -> list[str]:
    """Hadoop glob alternatives: "a{b,c{d,e}}" -> ["ab", "acd", "ace"]. An unbalanced brace is literal."""
    start = pattern.find("{")
    while start != -1:
        depth, parts, last = 0, [], start + 1
        for i in range(start, len(pattern)):
            c = pattern[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    parts.append(pattern[last:i])
                    head, tail = pattern[:start], pattern[i + 1:]
                    return [x for p in parts for x in _expand_braces(head + p + tail)]
            elif c == "," and depth == 1:
                parts.append(pattern[last:i])
                last = i + 1
        start = pattern.find("{", start + 1)
    return [pattern]


def _glob(pattern: str, root: str) -> list[str]:
    """Local glob matches, sorted: `*`, `?`, `[...]` within one path segment (Python's glob, recursive off:
    `**` is `*`) and Hadoop's `{a,b}` alternatives. A name matched by a wildcard segment follows the hidden
    rule (literal segments are taken as written)."""
    prefix = root.rstrip("/") + "/"
    found: set[str] = set()
    for alt in _expand_braces(pattern):
        pats = alt[len(prefix):].split("/") if alt.startswith(prefix) else None
        for match in glob.glob(alt):
            match = os.path.normpath(match)
            if pats is not None and match.startswith(prefix):
                names = match[len(prefix):].split("/")
                if any(glob.has_magic(p) and is_hidden(n) for n, p in zip(names, pats)):
                    continue
            found.add(match)
    return sorted(found)


def _local_glob(uri: str) -> bool:
    """A local input is a glob only if it has glob characters and does not exist as written."""
    return _is_glob(uri) and not os.path.lexists(uri_to_path(uri))


def _plan_files(index: int, spec: InputSpec, exclude: frozenset[str], target: int) -> tuple[list[tuple], frozenset]:
    """Seeds for one local FILES input, walking directories breadth-first on the driver until `target`
    directories wait to be walked (or the tree ends). The driver keeps directories only: every directory it
    walked becomes a "files" seed (a task lists its files), the rest become "tree" / "link" seeds (a task walks
    the subtree). Returns (seeds, visited directory keys)."""
    root = uri_to_path(spec.root)
    path = uri_to_path(spec.uri)
    seeds: list[tuple] = []
    visited: set[tuple[int, int]] = set()
    queue: deque = deque()
    deferred: deque = deque()

    def seed(mode: str, p: str, via_link: bool = False, key: tuple | None = None) -> None:
        dev, ino = key if key is not None else (None, None)
        seeds.append((index, mode, root, p, via_link, dev, ino, None))

    def start_dir(p: str, is_link: bool) -> None:
        try:
            st = os.stat(p)
        except OSError:
            seed("tree", p)  # the task reports why it cannot be read
            return
        key = (_i64(st.st_dev), _i64(st.st_ino))
        if is_link:
            deferred.append((p, key))
        elif key not in visited:
            visited.add(key)
            queue.append((p, False, key))

    if _local_glob(spec.uri):
        matches = _glob(os.path.abspath(path), root)
        if not matches:
            raise FileNotFoundError(f"input glob {spec.uri!r} matches no file or directory")
        for match in matches:
            if os.path.isdir(match):
                start_dir(match, os.path.islink(match))
            else:
                seed("file", match, os.path.islink(match))
    elif os.path.isdir(path):
        start_dir(os.path.abspath(path), False)  # the input root itself counts as real, even if a symlink
    else:
        seed("file", os.path.abspath(path))

    walker = _Walker(root, visited, exclude)
    while True:
        if not queue:
            while deferred and not queue:
                p, key = deferred.popleft()
                if key not in visited:
                    visited.add(key)
                    queue.append((p, True, key))
            if not queue:
                break
        if len(queue) + len(deferred) >= target:
            break
        p, via_link, key = queue.popleft()
        dirs: list = []
        links: list = []
        failed: list = []
        if not walker.subdirs(p, via_link, dirs, links, failed):
            seed("tree", p, via_link, key)  # cannot be listed here: a task tries again and reports why
            continue
        for f in failed:
            seed("tree", f, via_link)  # cannot be stat'ed here: the task reports why (or walks it)
        seed("files", p, via_link, key)
        queue.extend(sorted(dirs))
        deferred.extend(sorted(links))
    for p, via_link, key in queue:
        seed("tree", p, via_link, key)
    for p, key in deferred:
        seed("link", p, True, key)
    return seeds, frozenset(visited)


# One row per thing a task lists: "tree" (walk the directory recursively), "link" (a symlinked directory:
# walked like a tree unless its target was visited), "files" (only the files directly in the directory: the
# driver walked it and handed out its subdirectories), "file" (one named path), "listed" (a URI-list entry;
# note = the list). spec indexes the visited sets; root is the OS path rel_path is relative to.
SEED_DDL = "spec int, mode string, root string, path string, via_link boolean, dev long, ino long, note string"
# The listing rows: SOURCE_ARROW plus the file's (st_dev, st_ino) and whether it was reached through a symlink.
LISTING_ARROW = pa.schema([*SOURCE_ARROW, pa.field("_dev", pa.int64()), pa.field("_ino", pa.int64()),
                           pa.field("_aliased", pa.bool_(), nullable=False)])
WALK_BATCH_ROWS = 4096
SOURCE_COLUMNS = [f.name for f in SOURCE_ARROW]


def _walk_partition(batches: Iterator[pa.RecordBatch], visited_by_spec: list[frozenset],
                    exclude: frozenset[str]) -> Iterator[pa.RecordBatch]:
    """The mapInArrow body of the listing: seeds in, LISTING_ARROW rows out, in batches of at most
    WALK_BATCH_ROWS (a task never holds a whole subtree's rows). Each task has its own visited set,
    starting from the driver's."""
    seeds = [s for b in batches for s in b.to_pylist()]
    by_spec: dict[int, list[dict]] = defaultdict(list)
    for s in seeds:
        by_spec[s["spec"]].append(s)
    rows: list[tuple] = []
    for spec, group in sorted(by_spec.items()):
        root = group[0]["root"]
        walker = _Walker(root, set(visited_by_spec[spec]), exclude)
        trees, links = [], []
        for s in group:
            key = (s["dev"], s["ino"]) if s["ino"] is not None else None
            mode, path = s["mode"], s["path"]
            if mode == "file":
                produced: Iterator[tuple] = iter([walker.stat_row(path, s["via_link"])])
            elif mode == "listed":
                uri, _ = _spelled(path)
                produced = iter([walker.stat_row(path, False, rel=uri,
                                                 missing=f"listed in {s['note']} but not found (or a directory)")])
            elif mode == "files":
                produced = walker.scan(path, s["via_link"], key, True, [], [])
            elif mode == "tree":
                trees.append((path, s["via_link"], key))
                continue
            else:  # link
                links.append((path, key))
                continue
            for row in produced:
                if row is not None:
                    rows.append(row)
                    if len(rows) >= WALK_BATCH_ROWS:
                        yield _listing_batch(rows)
                        rows = []
        for row in walker.walk(trees, links):
            rows.append(row)
            if len(rows) >= WALK_BATCH_ROWS:
                yield _listing_batch(rows)
                rows = []
    if rows:
        yield _listing_batch(rows)


def _listing_batch(rows: list[tuple]) -> pa.RecordBatch:
    cols = list(zip(*rows))
    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, LISTING_ARROW)], schema=LISTING_ARROW)


def _read_contents(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """read_local_in_worker off: the listing's files read here, their bytes carried in `content`."""
    for batch in batches:
        d = batch.to_pydict()
        for i, read in enumerate(d["read_uri"]):
            if read is None:
                continue
            try:
                d["content"][i] = _read_file(read)
            except OSError as exc:
                d["source_error"][i] = f"reading {read}: {_oserror(exc)}"
            d["read_uri"][i] = None
        yield pa.RecordBatch.from_pydict(d, schema=SOURCE_ARROW)


def _read_file(uri: str) -> bytes:
    with open(uri_to_path(uri), "rb") as f:
        return f.read()


LISTING_ON_DRIVER_MAX_ROWS = 200_000  # files the driver lists itself (~200 bytes each); a larger tree is listed by tasks
_SEED_NAMES = [c.split()[0] for c in SEED_DDL.split(", ")]


def _walk_on_driver(seeds: list[tuple], walk) -> pa.Table | None:
    """The listing of `seeds` walked in this process, as one task would walk them all (`walk` is the mapInArrow
    body); None once it passes LISTING_ON_DRIVER_MAX_ROWS, and the tasks list it instead."""
    batch = pa.RecordBatch.from_pylist([dict(zip(_SEED_NAMES, s)) for s in seeds])
    out, rows = [], 0
    for b in walk(iter([batch])):
        out.append(b)
        rows += b.num_rows
        if rows > LISTING_ON_DRIVER_MAX_ROWS:
            return None
    return pa.Table.from_batches(out, schema=LISTING_ARROW)


def _local_frame(spark: SparkSession, specs: list[InputSpec], uri_lists: list[tuple[InputSpec, list[str]]],
                 exclude: tuple[str, ...], partitions: int, in_worker: bool) -> tuple[DataFrame, int]:
    """All local FILES inputs and local URI-list entries as one listing (see the module docstring):
    seeds planned on the driver, listed by a mapInArrow, persisted, counted once."""
    excluded = frozenset(exclude)
    seeds: list[tuple] = []
    visited_by_spec: list[frozenset] = []
    for spec in specs:
        s, visited = _plan_files(len(visited_by_spec), spec, excluded, partitions)
        seeds += s
        visited_by_spec.append(visited)
    for spec, uris in uri_lists:
        index = len(visited_by_spec)
        visited_by_spec.append(frozenset())
        seeds += [(index, "listed", None, uri_to_path(u), False, None, None, spec.uri) for u in uris if u not in excluded]
    if not seeds:
        return spark.createDataFrame([], from_arrow_schema(SOURCE_ARROW)), 0, 0
    fn = functools.partial(_walk_partition, visited_by_spec=visited_by_spec, exclude=excluded)
    listed = _walk_on_driver(seeds, fn)
    repeated = 0
    if listed is not None:  # a small tree: walked here, no Spark job (a listing task costs more than its stats)
        # one row per source_uri: a folder given with its subfolder, a file named twice, a glob over a folder
        # one file reached from two INPUTs (a symlinked folder given beside its target): the same (st_dev, st_ino)
        several = len(specs) + len(uri_lists) > 1
        keys = zip(listed["source_uri"].to_pylist(), listed["_dev"].to_pylist(), listed["_ino"].to_pylist())
        seen: set = set()
        first = [not (k in seen or seen.add(k)) for k in ((d, i) if several and i is not None else u for u, d, i in keys)]
        repeated = len(first) - sum(first)
        listed = listed.filter(pa.array(first)) if repeated else listed
        raw = spark.createDataFrame(listed)
        total = listed.num_rows
        n_aliased = pc.sum(pc.and_(listed["_aliased"], pc.is_valid(listed["_ino"])).cast(pa.int64())).as_py()
    else:
        seed_df = spark.createDataFrame(spark.sparkContext.parallelize(seeds, max(1, min(len(seeds), partitions))), SEED_DDL)
        # Persisted: the count below and the decode stage see one listing (a file created in between is not
        # an input of this run rather than a conservation failure). Cached rows are paths only, no bytes.
        raw = seed_df.mapInArrow(fn, from_arrow_schema(LISTING_ARROW)).persist(StorageLevel.MEMORY_AND_DISK)
    aliased = F.col("_aliased") & F.col("_ino").isNotNull()
    if listed is None:
        total, n_aliased = raw.agg(F.count(F.lit(1)), F.sum(aliased.cast("long"))).collect()[0]
    if not n_aliased:
        out = raw.select(*SOURCE_COLUMNS)
    else:
        # A file reached through a symlink is an input only if no real path reaches it; among several
        # symlinked paths, the lexicographically first URI is kept (min over a struct led by source_uri).
        real = raw.where(~aliased)
        keys = real.where(F.col("_ino").isNotNull()).select("_dev", "_ino").distinct()
        first = (raw.where(aliased).join(keys, ["_dev", "_ino"], "left_anti")
                 .groupBy("_dev", "_ino").agg(F.min(F.struct(*SOURCE_COLUMNS)).alias("r")).select("r.*"))
        out = real.select(*SOURCE_COLUMNS).unionByName(first)
        total = out.count()
    if listed is None and len(specs) + len(uri_lists) > 1:  # inputs that may overlap, listed by tasks
        unique = out.dropDuplicates(["source_uri"])
        n_unique = unique.count()
        repeated, total, out = int(total or 0) - n_unique, n_unique, unique
    out = out.repartition(partitions)
    if not in_worker:
        out = out.mapInArrow(_read_contents, from_arrow_schema(SOURCE_ARROW))
    return out, int(total or 0), repeated
