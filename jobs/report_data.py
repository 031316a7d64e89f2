"""What `imagegen report` shows, gathered: jobs/report.py renders it through jobs/templates/.

`dataset(root, cfg)` and `run(run, cfg)` read a dataset OUT (manifest, bounded Parquet reads) or a training RUN
(config.json, metrics.jsonl, evaluation JSONs, sample grids), within ReportConfig's bounds, into the dataclasses
below: plain values, tables as lists of rows, pictures (charts drawn with matplotlib, thumbnails with Pillow) as
PNG data: URIs. Nothing here is HTML; every string from the data stays as it is, for the templates to escape.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.layout import Manifest, listed_files
from schemas.pixels import decode_pixels
from schemas.uri import uri_to_path

SOURCE_THUMB_MAX_BYTES = 64 * 1024 * 1024   # a dropped duplicate's source file larger than this is not opened
SAMPLE_GRID_MAX_BYTES = 1_500_000           # a sample grid PNG larger than this is downscaled before embedding
SAMPLE_GRID_MAX_SIDE = 1024


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """`imagegen report`'s options (jobs/report.py): the PATH, the page, and how much of PATH is read."""

    path: str                          # a dataset OUT or a training RUN directory
    out: str | None = None             # the HTML file (default PATH/report.html)
    max_rows: int = 100_000            # rows read (3 small columns) for the size / aspect distributions
    grid_images: int = 64              # stored images shown in the grid
    grid_scan_rows: int = 512          # head rows of images/ the grid picks from (round robin over labels)
    duplicate_rows: int = 5_000        # head rows of duplicates/ grouped into clusters
    clusters: int = 12                 # near-duplicate clusters shown (largest first)
    cluster_members: int = 8           # dropped images shown per cluster
    max_scan_rows: int = 2_000_000     # rows of images/ (source_uri only) searched for the clusters' kept images
    max_sample_grids: int = 16         # sample grids shown per kind, evenly spaced over the run, last included

    def __post_init__(self) -> None:
        for name in ("max_rows", "grid_images", "grid_scan_rows", "duplicate_rows", "clusters", "cluster_members",
                     "max_scan_rows", "max_sample_grids"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# ----------------------------------------------------------------------------- what the pages hold
@dataclasses.dataclass(frozen=True)
class Table:
    """A table: a cell that is a number is shown right-aligned, any other as text."""

    headers: list[str]
    rows: list[list[Any]]


@dataclasses.dataclass(frozen=True)
class Thumb:
    """A picture (`uri`, a data: URI) or, where there is none, the reason (`why`) a placeholder shows."""

    uri: str | None
    alt: str
    title: str
    why: str = ""


@dataclasses.dataclass(frozen=True)
class Counts:
    inputs: int
    written: int
    rejected: int
    duplicates: int
    duplicate_kinds: str           # "2 exact, 4 near"; "" when the manifest counts none
    table: Table
    timings: Table | None
    config: Table | None

    @property
    def off_by(self) -> int:
        """inputs - (written + rejected + duplicates): 0 when the conservation line holds."""
        return self.inputs - self.written - self.rejected - self.duplicates


@dataclasses.dataclass(frozen=True)
class Rejects:
    reasons: Table
    chart: str
    examples: Table | None         # the first rejects/ rows


@dataclasses.dataclass(frozen=True)
class Labels:
    chart: str                     # the largest `shown` classes
    shown: int
    classes: int
    table: Table                   # every class


@dataclasses.dataclass(frozen=True)
class Sizes:
    rows: int                      # rows read
    total: int                     # rows in all the files
    chart: str
    stats: Table


@dataclasses.dataclass(frozen=True)
class Channels:
    table: Table
    swatch: tuple[int, int, int] | None   # the mean colour, 0-255, for 3 or more channels


@dataclasses.dataclass(frozen=True)
class Tile:
    thumb: Thumb
    label: str                     # "" when unlabelled


@dataclasses.dataclass(frozen=True)
class Grid:
    tiles: list[Tile]
    resolution: int
    channels: int
    head_rows: int                 # rows of images/ the tiles were picked from


@dataclasses.dataclass(frozen=True)
class Member:
    """A dropped duplicate in a cluster strip."""

    thumb: Thumb
    kind: str
    distance: int
    similarity: str                # "0.950", or "-"
    short: str


@dataclasses.dataclass(frozen=True)
class Strip:
    kept: Thumb
    kept_short: str
    members: list[Member]
    more: int                      # dropped images not shown


@dataclasses.dataclass(frozen=True)
class Duplicates:
    rows: int                      # duplicates/ rows read
    kinds: str                     # "2 exact, 4 near"
    clusters: int
    strips: list[Strip]


@dataclasses.dataclass(frozen=True)
class DatasetReport:
    title: str
    subtitle: str
    counts: Counts
    rejects: Rejects | None        # None: nothing was rejected (and so on for the other sections)
    labels: Labels | None
    sizes: Sizes | None
    channels: Channels
    grid: Grid | None
    duplicates: Duplicates | None


@dataclasses.dataclass(frozen=True)
class Curves:
    rows: int
    bad: int                       # metrics.jsonl lines skipped
    training: str | None           # chart of the losses and training statistics
    throughput: str | None


@dataclasses.dataclass(frozen=True)
class Evaluations:
    count: int
    chart: str
    table: Table


@dataclasses.dataclass(frozen=True)
class SampleFigure:
    thumb: Thumb
    step: int


@dataclasses.dataclass(frozen=True)
class SampleKind:
    prefix: str                    # samples | recon
    title: str
    total: int                     # grids of this kind in the run
    figures: list[SampleFigure]


@dataclasses.dataclass(frozen=True)
class RunReport:
    title: str
    subtitle: str
    summary: Table
    curves: Curves | None
    evaluations: Evaluations | None
    samples: list[SampleKind]
    config: Table | None


# ----------------------------------------------------------------------------- pictures
def data_uri(data: bytes, mime: str = "image/png") -> str:
    """`data` as a data: URI (base64: nothing in it needs escaping)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png(arr: np.ndarray) -> bytes:
    """A uint8 HxW, HxWx1, HxWx3 or HxWx4 array as PNG bytes."""
    from PIL import Image

    a = np.ascontiguousarray(arr, dtype=np.uint8)
    img = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _figure(w: float, h: float):
    """A matplotlib figure of w x h inches at 100 dpi."""
    from matplotlib.figure import (
        Figure,  # object API: no pyplot state, no display backend
    )

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _chart(fig) -> str:
    """The figure as a PNG data: URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return data_uri(buf.getvalue())


def _bar_chart(labels: list[str], values: list[int], title: str, colour: str = "#4c72b0") -> str:
    """A bar chart of file counts -> data: URI."""
    fig = _figure(max(4.0, min(12.0, 0.45 * len(labels) + 2)), 3.0)
    ax = fig.add_subplot()
    ax.bar(range(len(values)), values, color=colour)
    ax.set_xticks(range(len(labels)), labels, rotation=45 if max((len(s) for s in labels), default=0) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.set_title(title)
    ax.set_ylabel("files")
    ax.yaxis.get_major_locator().set_params(integer=True)  # counts: no 0.2 ticks
    return _chart(fig)


def _subplots(n: int):
    """A figure of n small charts, 3 a row -> (figure, n axes); the spare axes of the last row hidden."""
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig = _figure(3.8 * cols, 2.6 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _source_thumb(uri: str, side: int = 96) -> tuple[str | None, str]:
    """A dropped duplicate's thumbnail decoded from its source file -> (data URI or None, why not)."""
    from PIL import Image

    try:
        path = uri_to_path(uri)
    except ValueError:
        return None, "not a local file"
    if "#" in uri and not os.path.isfile(path):  # a tar member or Parquet row: no file of its own
        return None, "inside an archive"
    try:
        if not os.path.isfile(path):
            return None, "source gone"
        if os.path.getsize(path) > SOURCE_THUMB_MAX_BYTES:
            return None, "source too large"
        with Image.open(path) as img:  # Pillow's decompression-bomb limit applies
            img.thumbnail((side, side))
            rgb = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            buf = io.BytesIO()
            rgb.save(buf, "PNG")
            return data_uri(buf.getvalue()), ""
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None, "source unreadable"


def _stored_uri(r: dict[str, Any]) -> str:
    """An images/ row's stored pixels as a PNG data: URI."""
    return data_uri(png(decode_pixels(r["pixels"], r["height"], r["width"], r["channels"], r["pixel_encoding"])))


# ----------------------------------------------------------------------------- bounded Parquet reads
def _empty(paths: list[str], columns: list[str]) -> pa.Table:
    """An empty table of `columns` (typed from the first file when there is one)."""
    if paths:
        schema = pq.ParquetFile(paths[0]).schema_arrow
        return pa.schema([schema.field(c) for c in columns if c in schema.names]).empty_table()
    return pa.table({c: pa.array([], pa.null()) for c in columns})


def read_head(paths: list[str], columns: list[str], limit: int) -> pa.Table:
    """The first `limit` rows of the files, in listed order, only `columns`: row group by row group, stopping early."""
    batches: list[pa.RecordBatch] = []
    n = 0
    for path in paths:
        pf = pq.ParquetFile(path)
        cols = [c for c in columns if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=max(1, min(limit - n, 1024)), columns=cols):
            batches.append(batch.slice(0, limit - n))
            n += batches[-1].num_rows
            if n >= limit:
                break
        if n >= limit:
            break
    return pa.Table.from_batches(batches) if batches else _empty(paths, columns)


def read_spread(paths: list[str], columns: list[str], max_rows: int) -> tuple[pa.Table, int]:
    """At most about `max_rows` rows of `columns`, as whole row groups spread evenly over all the files (a
    sample that is not just the first run's head) -> (table, rows in all the files)."""
    groups = []  # (path, row group, rows)
    for path in paths:
        md = pq.ParquetFile(path).metadata
        groups += [(path, i, md.row_group(i).num_rows) for i in range(md.num_row_groups)]
    total = sum(g[2] for g in groups)
    if total <= max_rows:
        picked = groups
    else:
        # every k-th row group, k chosen so the rows come to about max_rows (at least one group)
        step = max(1, math.ceil(total / max_rows))
        picked, n = [], 0
        for g in groups[::step]:
            if picked and n + g[2] > max_rows:
                break
            picked.append(g)
            n += g[2]
    tables = []
    for path, rg, _ in picked:
        pf = pq.ParquetFile(path)
        tables.append(pf.read_row_group(rg, columns=[c for c in columns if c in pf.schema_arrow.names]))
    table = pa.concat_tables(tables) if tables else _empty(paths, columns)
    if table.num_rows > max_rows:  # one row group alone can exceed the budget
        table = table.slice(0, max_rows)
    return table, total


def find_images(paths: list[str], uris: set[str], max_scan_rows: int) -> dict[str, np.ndarray]:
    """The stored pixels of the images/ rows whose source_uri is in `uris`: the source_uri column is scanned row
    group by row group (stopping when all are found or after max_scan_rows), then only the matched rows' pixels
    are taken from their row group."""
    found: dict[str, np.ndarray] = {}
    scanned = 0
    want = set(uris)
    for path in paths:
        pf = pq.ParquetFile(path)
        for rg in range(pf.metadata.num_row_groups):
            if not want or scanned >= max_scan_rows:
                return found
            col = pf.read_row_group(rg, columns=["source_uri"]).column(0).to_pylist()
            scanned += len(col)
            hits = [i for i, u in enumerate(col) if u in want]
            if not hits:
                continue
            rows = pf.read_row_group(rg, columns=["source_uri", "pixels", "width", "height", "channels", "pixel_encoding"]).take(hits)
            for r in rows.to_pylist():
                found[r["source_uri"]] = decode_pixels(r["pixels"], r["height"], r["width"], r["channels"], r["pixel_encoding"])
                want.discard(r["source_uri"])
    return found


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A nested dict as (dotted key, leaf) pairs, keys sorted; an empty dict is a leaf."""
    out: list[tuple[str, Any]] = []
    for k in sorted(d):
        v = d[k]
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _kinds(counts: dict[str, int]) -> str:
    """{"near": 4, "exact": 2} -> "2 exact, 4 near"."""
    return ", ".join(f"{v:,} {k}" for k, v in sorted(counts.items()))


def _short(uri: str, keep: int = 2) -> str:
    """The last `keep` path components of a URI: enough to tell files apart in a strip."""
    return "/".join(uri.rstrip("/").split("/")[-keep:])


# ----------------------------------------------------------------------------- the dataset report
def dataset(root: Path, cfg: ReportConfig) -> DatasetReport:
    """Everything the dataset report shows, from the manifest and bounded reads of the files it lists."""
    m = Manifest.read(str(root))
    files = {t: listed_files(str(root), m, t) for t in ("images", "rejects", "duplicates")}
    return DatasetReport(
        title=f"Dataset report: {root.name}",
        subtitle=f"{root.resolve()} — run {m.run_id}, schema v{m.schema_version}",
        counts=_counts(m),
        rejects=_rejects(m, files["rejects"]),
        labels=_labels(m),
        sizes=_sizes(files["images"], cfg),
        channels=_channels(m),
        grid=_grid(m, files["images"], cfg),
        duplicates=_duplicates(files["images"], files["duplicates"], cfg),
    )


def _counts(m: Manifest) -> Counts:
    """The manifest's counts, for the conservation line and the counts table."""
    c = m.counts
    rejected = sum(int(v) for v in (c.get("rejected") or {}).values())
    dups = c.get("duplicates") or {}
    dup_total = sum(int(v) for v in dups.values())
    inputs, written = int(c.get("inputs", 0)), int(c.get("written", 0))
    rows = [["inputs", inputs], ["written (images/)", written], ["rejected (rejects/)", rejected], ["duplicates (duplicates/)", dup_total],
            ["rows listed: images / rejects / duplicates", f"{m.rows('images'):,} / {m.rows('rejects'):,} / {m.rows('duplicates'):,}"],
            ["resolution", f"{m.resolution} x {m.resolution}"], ["channels", m.channels], ["pixel encoding", m.pixel_encoding],
            ["classes", len(m.classes)], ["runs", len(m.runs) or 1], ["manifest id", m.manifest_id]]
    return Counts(inputs=inputs, written=written, rejected=rejected, duplicates=dup_total, duplicate_kinds=_kinds(dups),
                  table=Table(["", "value"], rows),
                  timings=Table(["stage", "seconds"], [[k, float(v)] for k, v in m.timings.items()]) if m.timings else None,
                  config=Table(["option", "value"], [list(kv) for kv in _flatten(m.config)]) if m.config else None)


def _rejects(m: Manifest, reject_files: list[str]) -> Rejects | None:
    """Reject reasons by count, and the first rejected files; None when nothing was rejected."""
    reasons = sorted(((k, int(v)) for k, v in (m.counts.get("rejected") or {}).items() if int(v)), key=lambda kv: -kv[1])
    if not reasons:
        return None
    total = sum(v for _, v in reasons)
    examples = read_head(reject_files, ["source_uri", "reason", "detail"], 20).to_pylist()
    return Rejects(reasons=Table(["reason", "files", "share"], [[k, v, f"{100 * v / total:.1f}%"] for k, v in reasons]),
                   chart=_bar_chart([k for k, _ in reasons], [v for _, v in reasons], "rejects by reason", "#c44e52"),
                   examples=Table(["source", "reason", "detail"], [[r["source_uri"], r["reason"], r["detail"]] for r in examples]) if examples else None)


def _labels(m: Manifest, shown: int = 50) -> Labels | None:
    """The label histogram (the `shown` largest classes charted, all in the table); None without labels."""
    counts = sorted(m.label_counts.items(), key=lambda kv: (-int(kv[1]), kv[0]))
    if not counts:
        return None
    top = counts[:shown]
    return Labels(chart=_bar_chart([k for k, _ in top], [int(v) for _, v in top], "written images per label"),
                  shown=len(top), classes=len(counts), table=Table(["label", "images"], [[k, int(v)] for k, v in counts]))


def _sizes(image_files: list[str], cfg: ReportConfig) -> Sizes | None:
    """Original width, height and aspect ratio of a bounded spread of images/ rows; None when none were written."""
    table, total = read_spread(image_files, ["orig_width", "orig_height"], cfg.max_rows)
    if table.num_rows == 0:
        return None
    w = table.column("orig_width").to_numpy().astype(np.float64)
    h = table.column("orig_height").to_numpy().astype(np.float64)
    aspect = w / np.maximum(h, 1)
    fig = _figure(11, 3.4)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.hist(w, bins=40, color="#4c72b0", alpha=0.7, label="width")
    ax1.hist(h, bins=40, color="#dd8452", alpha=0.7, label="height")
    ax1.set_title("original width and height (px)")
    ax1.legend()
    ax2.scatter(w, h, s=6, alpha=0.4)
    ax2.set_xlabel("width (px)")
    ax2.set_ylabel("height (px)")
    ax2.set_title("width vs height")
    ax3.hist(aspect, bins=40, color="#55a868")
    ax3.set_title("aspect ratio (width / height)")
    stats = Table(["", "min", "median", "max"], [
        ["width", int(w.min()), float(np.median(w)), int(w.max())], ["height", int(h.min()), float(np.median(h)), int(h.max())],
        ["aspect", float(aspect.min()), float(np.median(aspect)), float(aspect.max())]])
    return Sizes(rows=table.num_rows, total=total, chart=_chart(fig), stats=stats)


def _channels(m: Manifest) -> Channels:
    """Per-channel mean and std from the manifest, and the mean colour."""
    names = ["grey"] if len(m.pixel_mean) == 1 else ["R", "G", "B", "A"][: len(m.pixel_mean)]
    rows = []
    for i, name in enumerate(names):
        mean, std = float(m.pixel_mean[i]), float(m.pixel_std[i]) if i < len(m.pixel_std) else float("nan")
        rows.append([name, mean, std, round(mean * 255, 1)])
    swatch = tuple(round(float(v) * 255) for v in m.pixel_mean[:3]) if len(m.pixel_mean) >= 3 else None
    return Channels(table=Table(["channel", "mean", "std", "mean (0-255)"], rows), swatch=swatch)


def _grid(m: Manifest, image_files: list[str], cfg: ReportConfig) -> Grid | None:
    """Stored images from the head of images/, round robin over labels; None when none were written. A tile's alt
    is its label, or its file name when unlabelled."""
    head = read_head(image_files, ["source_uri", "label", "width", "height", "channels", "pixel_encoding", "pixels"], cfg.grid_scan_rows)
    if head.num_rows == 0:
        return None
    by_label: dict[Any, list[dict]] = {}
    for r in head.to_pylist():
        by_label.setdefault(r.get("label"), []).append(r)
    picked: list[dict] = []
    queues = list(by_label.values())
    while len(picked) < cfg.grid_images and any(queues):  # round robin over labels, so every class shows
        for q in queues:
            if q and len(picked) < cfg.grid_images:
                picked.append(q.pop(0))
    tiles = []
    for r in picked:
        label = r.get("label")
        alt = str(label) if label is not None else _short(r["source_uri"], keep=1)
        tiles.append(Tile(Thumb(_stored_uri(r), alt, r["source_uri"]), str(label) if label is not None else ""))
    return Grid(tiles=tiles, resolution=m.resolution, channels=m.channels, head_rows=head.num_rows)


def _duplicates(image_files: list[str], dup_files: list[str], cfg: ReportConfig) -> Duplicates | None:
    """Near-duplicate clusters from the head of duplicates/, near ones first, then by size; None when no input
    was dropped as a duplicate."""
    dups = read_head(dup_files, ["source_uri", "kept_source_uri", "kind", "distance", "similarity"], cfg.duplicate_rows).to_pylist()
    if not dups:
        return None
    clusters: dict[str, list[dict]] = {}
    for r in dups:
        clusters.setdefault(r["kept_source_uri"], []).append(r)
    # near clusters first (the ones worth a look), then by size; ties in order of appearance
    order = sorted(clusters, key=lambda k: (not any(r["kind"] == "near" for r in clusters[k]), -len(clusters[k])))
    shown = order[: cfg.clusters]
    kept_pixels = find_images(image_files, set(shown), cfg.max_scan_rows)
    strips = [_strip(kept, clusters[kept], kept_pixels.get(kept), cfg.cluster_members) for kept in shown]
    return Duplicates(rows=len(dups), kinds=_kinds(Counter(r["kind"] for r in dups)), clusters=len(clusters), strips=strips)


def _strip(kept: str, members: list[dict], kept_pixels: np.ndarray | None, limit: int) -> Strip:
    """One cluster: the kept image as stored, then up to `limit` dropped files decoded from their sources."""
    shown = []
    for r in members[:limit]:
        uri, why = _source_thumb(r["source_uri"])
        sim = f"{r['similarity']:.3f}" if r.get("similarity") is not None else "-"
        shown.append(Member(Thumb(uri, "dropped duplicate", r["source_uri"], why), r["kind"], r["distance"], sim, _short(r["source_uri"])))
    thumb = Thumb(data_uri(png(kept_pixels)) if kept_pixels is not None else None, "kept image", kept, "kept image not found")
    return Strip(kept=thumb, kept_short=_short(kept), members=shown, more=max(0, len(members) - limit))


# ----------------------------------------------------------------------------- the run report
_THROUGHPUT = re.compile(r"(_per_s$|_time_s$|_s$|^time|throughput|global_batch)")
_SKIP_EVAL_KEYS = {"seed", "k", "world_size", "num_samples", "requested_num_samples", "timing_s", "dims", "images"}
_STEP = re.compile(r"(\d+)")
_SAMPLE_KINDS = (("samples", "Samples"), ("recon", "VAE reconstructions (pairs: original, reconstruction)"))


def run(run_dir: Path, cfg: ReportConfig) -> RunReport:
    """Everything the run report shows, from the files in the run."""
    config = _read_json(run_dir / "config.json")
    rows, bad = _read_metrics(run_dir / "metrics.jsonl")
    return RunReport(
        title=f"Training run report: {run_dir.name}",
        subtitle=f"{run_dir.resolve()} — model {config.get('model', '?')}",
        summary=_summary(run_dir, config, rows),
        curves=_curves(rows, bad),
        evaluations=_evaluations(run_dir),
        samples=[kind for prefix, title in _SAMPLE_KINDS if (kind := _samples(run_dir, prefix, title, cfg.max_sample_grids))],
        config=Table(["option", "value"], [list(kv) for kv in _flatten(config)]) if config else None,
    )


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when it is missing, unreadable or not an object."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """metrics.jsonl rows with a numeric step, sorted by step -> (rows, lines that were not such a row)."""
    if not path.is_file():
        return [], 0
    rows, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
        else:
            bad += 1
    return sorted(rows, key=lambda r: r["step"]), bad


def _numeric(v: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _checkpoints(run_dir: Path) -> list[str]:
    """The names of the run's checkpoints/*.pt, sorted."""
    d = run_dir / "checkpoints"
    return sorted(p.name for p in d.glob("*.pt")) if d.is_dir() else []


def _summary(run_dir: Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> Table:
    """Model, data, steps logged, checkpoints and the last logged value of every numeric column."""
    items: list[list[Any]] = [["model", config.get("model", "-")], ["data", config.get("data", "-")],
                              ["steps logged", f"{len(rows):,} rows, last step {rows[-1]['step']:,}" if rows else "none"]]
    ckpts = _checkpoints(run_dir)
    items.append(["checkpoints", ", ".join(ckpts) if ckpts else "none"])
    if rows:
        items += [[f"last {k}", v] for k, v in rows[-1].items() if k != "step" and _numeric(v)]
    return Table(["", "value"], items)


def _small_multiples(rows: list[dict[str, Any]], keys: list[str], colour: str) -> str:
    """One small chart per key over step -> data: URI."""
    fig, axes = _subplots(len(keys))
    for ax, key in zip(axes, keys):
        pts = [(r["step"], float(r[key])) for r in rows if _numeric(r.get(key))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, markersize=3, color=colour)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    return _chart(fig)


def _curves(rows: list[dict[str, Any]], bad: int) -> Curves | None:
    """Every numeric column of metrics.jsonl over step, training statistics and throughput apart; None without rows."""
    if not rows:
        return None
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k != "step" and k not in keys and _numeric(v)]
    throughput = [k for k in keys if _THROUGHPUT.search(k)]
    training = [k for k in keys if k not in throughput]
    return Curves(rows=len(rows), bad=bad, training=_small_multiples(rows, training, "#4c72b0") if training else None,
                  throughput=_small_multiples(rows, throughput, "#55a868") if throughput else None)


def _eval_values(res: dict[str, Any]) -> dict[str, tuple[float, float | None]]:
    """metric -> (value, real-data floor or None) of one evaluation JSON; any other numeric leaf as it is."""
    out: dict[str, tuple[float, float | None]] = {}
    for name, m in (res.get("metrics") or {}).items():
        if isinstance(m, dict) and _numeric(m.get("value")):
            out[name] = (float(m["value"]), float(m["real_floor"]) if _numeric(m.get("real_floor")) else None)
    ca = (res.get("conditional") or {}).get("class_accuracy") or {}
    if _numeric(ca.get("value")):
        out["class_accuracy"] = (float(ca["value"]), float(ca["real_floor"]) if _numeric(ca.get("real_floor")) else None)
    for k in ("elbo_nats", "bits_per_dim", "kl_nats", "recon_mse"):
        v = (res.get("vae") or {}).get(k)
        if _numeric(v):
            out[f"vae.{k}"] = (float(v), None)
    if not out:  # not the `imagegen evaluate` layout: its numeric leaves
        out = {k: (float(v), None) for k, v in _flatten(res) if _numeric(v) and k != "step" and k.split(".")[-1] not in _SKIP_EVAL_KEYS}
    return out


def _evaluations(run_dir: Path) -> Evaluations | None:
    """Every *.metrics.json in the run with a step, by step: a chart per metric beside its floor, and a table;
    None when there is none."""
    evals = []
    for path in sorted(run_dir.rglob("*.metrics.json")):
        res = _read_json(path)
        if _numeric(res.get("step")):
            evals.append((int(res["step"]), path, res, _eval_values(res)))
    if not evals:
        return None
    evals.sort(key=lambda e: e[0])
    names: list[str] = []
    for *_, vals in evals:
        names += [n for n in vals if n not in names]
    table_rows = []
    for step, path, res, vals in evals:
        table_rows.append([step, path.relative_to(run_dir).as_posix(), res.get("extractor", {}).get("kind", "-") if isinstance(res.get("extractor"), dict) else "-"]
                          + [(f"{vals[n][0]:.4g}" + (f" (floor {vals[n][1]:.4g})" if vals[n][1] is not None else "")) if n in vals else "-" for n in names])
    fig, axes = _subplots(len(names))
    for ax, n in zip(axes, names):
        pts = [(s, v[n]) for s, _, _, v in evals if n in v]
        ax.plot([p[0] for p in pts], [p[1][0] for p in pts], marker="o", color="#8172b3", label="model")
        floors = [(p[0], p[1][1]) for p in pts if p[1][1] is not None]
        if floors:
            ax.plot([f[0] for f in floors], [f[1] for f in floors], marker="x", linestyle="--", color="#937860", label="real floor")
            ax.legend(fontsize=7)
        ax.set_title(n, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    return Evaluations(count=len(evals), chart=_chart(fig), table=Table(["step", "file", "features"] + names, table_rows))


def _grids(run_dir: Path, prefix: str, limit: int) -> list[tuple[int, Path]]:
    """(step, path) of samples/<prefix>-*.png in step order; over `limit`, evenly spaced with the last one in."""
    found = []
    for p in (run_dir / "samples").glob(f"{prefix}-*.png"):
        m = _STEP.search(p.stem[len(prefix):])
        if m:
            found.append((int(m.group(1)), p))
    found.sort()
    if len(found) > limit:  # evenly spaced, the last one always in
        idx = sorted({round(i * (len(found) - 1) / (limit - 1)) for i in range(limit)}) if limit > 1 else [len(found) - 1]
        found = [found[i] for i in idx]
    return found


def _grid_uri(path: Path) -> str:
    """A sample grid PNG as a data: URI, downscaled first when it is over SAMPLE_GRID_MAX_BYTES."""
    data = path.read_bytes()
    if len(data) <= SAMPLE_GRID_MAX_BYTES:
        return data_uri(data)
    from PIL import Image

    with Image.open(path) as img:
        img.thumbnail((SAMPLE_GRID_MAX_SIDE, SAMPLE_GRID_MAX_SIDE))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "PNG")
    return data_uri(buf.getvalue())


def _samples(run_dir: Path, prefix: str, title: str, limit: int) -> SampleKind | None:
    """The run's samples/<prefix>-*.png grids over time; None when there is none."""
    grids = _grids(run_dir, prefix, limit)
    if not grids:
        return None
    figures = [SampleFigure(Thumb(_grid_uri(p), f"{prefix} at step {step}", p.name), step) for step, p in grids]
    return SampleKind(prefix=prefix, title=title, total=len(list((run_dir / "samples").glob(f"{prefix}-*.png"))), figures=figures)
