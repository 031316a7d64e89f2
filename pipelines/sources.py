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
  TAR       a .tar/.tar.gz/.tgz shard, or a directory holding only shards (webdataset-style). Each
            shard is streamed member by member inside a mapInArrow (memory: one member plus one output
            batch), source_uri = "<shard uri>#<member path>". Webdataset sidecar members (.json, .txt,
            .cls, ...) are not images and are skipped (counted in the manifest as tar_sidecars_skipped
            when the job runs). Shards are opened with pyarrow.fs (file:, s3 (s3a: is mapped), hdfs:).
  PARQUET   a Parquet file or dataset directory with an image-bytes column (`image_column`, or the
            first of image/bytes/content/jpg/png/img; a struct {bytes, path} as Hugging Face datasets
            write is understood). source_uri = "<parquet file>#row=<row index in that file>".

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

import contextlib
import dataclasses
import enum
import functools
import glob
import os
import posixpath
import re
import stat
import tarfile
from collections import defaultdict, deque
from typing import Iterator
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from pipelines.config import PreprocessConfig
from pipelines.decode import SOURCE_ARROW, source_error
from pipelines.fs import FileSystem, has_scheme, local_path
from schemas.images import RejectReason
from schemas.uri import FILE_SCHEME, is_local, path_to_uri, uri_to_path

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


# ----------------------------------------------------------------------------- local files: our own listing
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


# ----------------------------------------------------------------------------- other schemes: binaryFile
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
        with _open_stream(uri) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
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
    shard's error row counts as one input). Reads the shard through, like the expansion, keeping nothing."""
    images = sidecars = 0
    for member, _, _ in _walk_tar(uri, max_bytes, keep=False):
        if member is not None and _is_sidecar(member):
            sidecars += 1
        else:
            images += 1
    return images, sidecars


def _list_tars(batches: Iterator[pa.RecordBatch], max_bytes: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        counts = [list_tar(u, max_bytes) for u in batch.column("shard").to_pylist()]
        yield pa.RecordBatch.from_pydict({"members": [c[0] for c in counts], "sidecars": [c[1] for c in counts]})


def count_tar_members(spark: SparkSession, shards: list[str], max_bytes: int = PreprocessConfig.max_file_bytes) -> tuple[int, int]:
    """(input members, skipped sidecars) over all shards: a distributed pass that keeps no member."""
    df = spark.createDataFrame([(p,) for p in shards], "shard string").repartition(max(1, len(shards)))
    row = df.mapInArrow(functools.partial(_list_tars, max_bytes=max_bytes), "members long, sidecars long").agg(F.sum("members"), F.sum("sidecars")).collect()[0]
    return int(row[0] or 0), int(row[1] or 0)


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


def _tar_frame(spark: SparkSession, spec: InputSpec, partitions: int, max_bytes: int) -> DataFrame:
    shards = spark.createDataFrame([(p,) for p in spec.paths], "shard string").repartition(max(1, len(spec.paths)))
    members = shards.mapInArrow(functools.partial(_expand_tars, max_bytes=max_bytes), from_arrow_schema(SOURCE_ARROW))
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


class UnreadableInputError(ValueError):
    """An input the job cannot read at all (a corrupt Parquet file), in one line naming it."""


@contextlib.contextmanager
def _unreadable_parquet(spec: InputSpec) -> Iterator[None]:
    """Spark's footer and scan failures (CANNOT_READ_FILE_FOOTER, FAILED_READ_FILE, ...) reach Python as a
    Py4J error with a JVM trace; this turns them into one line naming the file Spark names."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        yield
    except (Py4JJavaError, PySparkException) as exc:
        text = str(exc)
        found = re.search(r"\bfile:? +(\S+?)\.?(?:\s|$)", text)
        name = hadoop_spelling(found.group(1)) if found else spec.uri
        kind = re.search(r"\[([A-Z][A-Z_.]+)\]", text)
        raise UnreadableInputError(f"{name}: not a readable Parquet file ({kind.group(1) if kind else type(exc).__name__}, "
                                   f"input {spec.uri}); repair or remove it") from None


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
            df = _tar_frame(spark, spec, partitions, cfg.max_file_bytes)
            n, skipped = count_tar_members(spark, list(spec.paths), cfg.max_file_bytes)
            sidecars += skipped
        elif spec.kind == InputKind.PARQUET:
            with _unreadable_parquet(spec):
                df = _parquet_frame(spark, spec, cfg)
                n = df.count()  # from the Parquet footers
        else:
            raise ValueError(f"unknown input kind {spec.kind!r}")
        frames.append(df)
        count += n
    if local_files or any(uris for _, uris in local_lists):
        df, n, repeated = _local_frame(spark, local_files, local_lists, exclude, partitions, cfg.read_local_in_worker)
        frames.append(df)
        count += n
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return Sources(out, count, sidecars, repeated)
