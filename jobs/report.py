"""`imagegen report PATH [--out FILE]`: one self-contained HTML page about a dataset or a training run.

    imagegen report OUT            a preprocessed dataset (has manifest.json)  -> OUT/report.html
    imagegen report RUN            a training run (has config.json / metrics.jsonl) -> RUN/report.html
    imagegen report RUN --out /tmp/run.html

Every picture is embedded as a data: URI (charts drawn with matplotlib, thumbnails with Pillow) and
the page loads nothing else, so it can be mailed or attached to a ticket. docs/reports.md shows both.

Dataset: the counts and the conservation line (inputs = written + rejected + duplicates, from the
manifest), reject reasons, the label histogram, original sizes and aspect ratios, per-channel
mean/std, a grid of stored (normalised) images and near-duplicate clusters as thumbnail strips, kept
image first. Only the files the manifest lists are read (schemas.listed_files), and a bounded part of
them: column projections, at most --max-rows rows for the distributions (whole row groups spread over
the files), the head of images/ for the grid, the head of duplicates/ for the clusters. A dataset of
millions of rows costs the report a few hundred MB of reads at most, never all the pixels.

Run: every numeric column of metrics.jsonl over step (losses; throughput apart), the evaluation JSONs
in the run (`imagegen evaluate` writes RUN/<checkpoint>.metrics.json) over step beside their real-data
floors, the sample grids over time (RUN/samples/samples-*.png; the VAE's recon-*.png too), and
config.json as a table.

The page checks itself: once loaded, an inline script sets `data-images="decoded/total"` and
`data-images-ok="yes|no"` on <body> (tests/jobs/test_report.py reads them back from headless Chromium).
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import html
import io
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.layout import Manifest, listed_files
from schemas.pixels import decode_pixels
from schemas.uri import uri_to_path
from jobs.cliutil import Parser

REPORT_NAME = "report.html"
THUMB_PX = 64                # CSS size of a thumbnail; small images are upscaled with pixelated rendering
SOURCE_THUMB_MAX_BYTES = 64 * 1024 * 1024   # a dropped duplicate's source file larger than this is not opened
SAMPLE_GRID_MAX_BYTES = 1_500_000           # a sample grid PNG larger than this is downscaled before embedding
SAMPLE_GRID_MAX_SIDE = 1024


@dataclasses.dataclass(frozen=True)
class ReportConfig:
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


class NotReportableError(ValueError):
    """PATH is neither a dataset nor a training run."""


def detect(path: Path) -> str:
    """'dataset' (manifest.json) or 'run' (config.json or metrics.jsonl)."""
    if not path.is_dir():
        raise NotReportableError(f"{path} is not a directory; expected a dataset OUT (manifest.json) or a training RUN (config.json, metrics.jsonl)")
    if (path / "manifest.json").is_file():
        return "dataset"
    if (path / "config.json").is_file() or (path / "metrics.jsonl").is_file():
        return "run"
    found = sorted(p.name for p in path.iterdir())[:10]
    raise NotReportableError(f"{path}: expected manifest.json (a dataset) or config.json / metrics.jsonl (a training run), found {found}")


# ----------------------------------------------------------------------------- HTML pieces
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
.sub{color:#666;margin-top:0} .note{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:.9em;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#176f2c;font-weight:600} .bad{color:#b00020;font-weight:600}
.conservation{font-size:1.1em;padding:8px 12px;background:#f7f7f7;border-left:4px solid #888;display:inline-block}
.grid{display:flex;flex-wrap:wrap;gap:6px} .tile{text-align:center;font-size:.75em;color:#555;width:72px}
.tile img,.strip img{width:64px;height:64px;image-rendering:pixelated;border:1px solid #ccc;background:#fff}
.strip{display:flex;gap:6px;align-items:flex-start;margin:6px 0 14px;flex-wrap:wrap}
.strip .tile{width:96px} .strip .kept img{border:2px solid #176f2c}
.placeholder{width:64px;height:64px;border:1px dashed #b00020;color:#b00020;font-size:.7em;display:flex;align-items:center;justify-content:center;margin:0 auto}
.uri{word-break:break-all;font-size:.8em;color:#666}
.samples{display:flex;flex-wrap:wrap;gap:12px} .samples figure{margin:0;text-align:center;font-size:.85em}
.samples img{max-width:360px;image-rendering:pixelated;border:1px solid #ccc}
.chart{max-width:100%} .swatch{display:inline-block;width:14px;height:14px;border:1px solid #999;vertical-align:middle}
"""

# Marks the page once everything has loaded: how many <img> decoded (complete, naturalWidth > 0) of how many.
_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images", ok + "/" + imgs.length);
  document.body.setAttribute("data-images-ok", ok === imgs.length ? "yes" : "no");
});
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(uri: str, alt: str, cls: str = "", title: str | None = None) -> str:
    extra = f' class="{cls}"' if cls else ""
    return f'<img{extra} src="{uri}" alt="{_e(alt)}" title="{_e(title if title is not None else alt)}">'


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f'<td class="num">{_e(_fmt(v))}</td>' if num else f"<td>{_e(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k in sorted(d):
        v = d[k]
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _page(title: str, subtitle: str, sections: list[str]) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>\n'
            f'<body data-images="pending" data-images-ok="pending">\n<h1>{_e(title)}</h1>\n<p class="sub">{_e(subtitle)} '
            f'(written {when} by <code>imagegen report</code>)</p>\n' + "\n".join(sections)
            + f"\n<script>{_CHECK_SCRIPT}</script>\n</body></html>\n")


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>\n{body}\n</section>'


# ----------------------------------------------------------------------------- charts and thumbnails
def _figure(w: float, h: float):
    from matplotlib.figure import (
        Figure,  # object API: no pyplot state, no display backend
    )

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _chart(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return f'<img class="chart" src="{_data_uri(buf.getvalue())}" alt="chart">'


def _bar_chart(labels: list[str], values: list[int], title: str, colour: str = "#4c72b0") -> str:
    fig = _figure(max(4.0, min(12.0, 0.45 * len(labels) + 2)), 3.0)
    ax = fig.add_subplot()
    ax.bar(range(len(values)), values, color=colour)
    ax.set_xticks(range(len(labels)), labels, rotation=45 if max((len(s) for s in labels), default=0) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.set_title(title)
    ax.set_ylabel("files")
    ax.yaxis.get_major_locator().set_params(integer=True)  # counts: no 0.2 ticks
    return _chart(fig)


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    a = np.ascontiguousarray(arr, dtype=np.uint8)
    img = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _placeholder(text: str) -> str:
    return f'<div class="placeholder">{_e(text)}</div>'


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
            return _data_uri(buf.getvalue()), ""
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None, "source unreadable"


# ----------------------------------------------------------------------------- bounded Parquet reads
def _empty(paths: list[str], columns: list[str]) -> pa.Table:
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


# ----------------------------------------------------------------------------- the dataset report
def dataset_report(root: Path, cfg: ReportConfig) -> str:
    m = Manifest.read(str(root))
    files = {t: listed_files(str(root), m, t) for t in ("images", "rejects", "duplicates")}
    sections = [
        _dataset_summary(root, m),
        _rejects_section(m, files["rejects"]),
        _labels_section(m),
        _sizes_section(files["images"], cfg),
        _channels_section(m),
        _grid_section(m, files["images"], cfg),
        _duplicates_section(files["images"], files["duplicates"], cfg),
    ]
    return _page(f"Dataset report: {root.name}", f"{root.resolve()} — run {m.run_id}, schema v{m.schema_version}", sections)


def _dataset_summary(root: Path, m: Manifest) -> str:
    c = m.counts
    rejected = sum(int(v) for v in (c.get("rejected") or {}).values())
    dups = c.get("duplicates") or {}
    dup_total = sum(int(v) for v in dups.values())
    inputs, written = int(c.get("inputs", 0)), int(c.get("written", 0))
    holds = inputs == written + rejected + dup_total
    verdict = '<span class="ok">holds</span>' if holds else f'<span class="bad">DOES NOT HOLD (off by {inputs - written - rejected - dup_total:+,})</span>'
    dup_parts = ", ".join(f"{v:,} {k}" for k, v in sorted(dups.items()))
    line = (f'<p class="conservation">{inputs:,} inputs = {written:,} written + {rejected:,} rejected + {dup_total:,} duplicates'
            f'{f" ({_e(dup_parts)})" if dup_parts else ""} — {verdict}</p>')
    rows = [("inputs", inputs), ("written (images/)", written), ("rejected (rejects/)", rejected), ("duplicates (duplicates/)", dup_total),
            ("rows listed: images / rejects / duplicates", f"{m.rows('images'):,} / {m.rows('rejects'):,} / {m.rows('duplicates'):,}"),
            ("resolution", f"{m.resolution} x {m.resolution}"), ("channels", m.channels), ("pixel encoding", m.pixel_encoding),
            ("classes", len(m.classes)), ("runs", len(m.runs) or 1), ("manifest id", m.manifest_id)]
    timing = _table(["stage", "seconds"], [(k, float(v)) for k, v in m.timings.items()]) if m.timings else ""
    config = _table(["option", "value"], _flatten(m.config)) if m.config else ""
    return _section("Counts", line + _table(["", "value"], rows)
                    + (f"<details><summary>stage timings</summary>{timing}</details>" if timing else "")
                    + (f"<details><summary>preprocess config</summary>{config}</details>" if config else ""), "counts")


def _rejects_section(m: Manifest, reject_files: list[str]) -> str:
    reasons = sorted(((k, int(v)) for k, v in (m.counts.get("rejected") or {}).items() if int(v)), key=lambda kv: -kv[1])
    if not reasons:
        return _section("Rejects", "<p>No input was rejected.</p>", "rejects")
    total = sum(v for _, v in reasons)
    body = _table(["reason", "files", "share"], [(k, v, f"{100 * v / total:.1f}%") for k, v in reasons])
    body += _bar_chart([k for k, _ in reasons], [v for _, v in reasons], "rejects by reason", "#c44e52")
    examples = read_head(reject_files, ["source_uri", "reason", "detail"], 20).to_pylist()
    if examples:
        body += f'<p class="note">The first {len(examples)} rejected files:</p>'
        body += _table(["source", "reason", "detail"], [(r["source_uri"], r["reason"], r["detail"]) for r in examples])
    return _section("Rejects", body, "rejects")


def _labels_section(m: Manifest) -> str:
    counts = sorted(m.label_counts.items(), key=lambda kv: (-int(kv[1]), kv[0]))
    if not counts:
        return _section("Labels", "<p>The dataset has no labels.</p>", "labels")
    shown = counts[:50]
    more = f'<p class="note">The 50 largest of {len(counts)} classes.</p>' if len(counts) > 50 else ""
    body = _bar_chart([k for k, _ in shown], [int(v) for _, v in shown], "written images per label") + more
    body += f"<details><summary>table</summary>{_table(['label', 'images'], [(k, int(v)) for k, v in counts])}</details>"
    return _section("Labels", body, "labels")


def _sizes_section(image_files: list[str], cfg: ReportConfig) -> str:
    table, total = read_spread(image_files, ["orig_width", "orig_height"], cfg.max_rows)
    if table.num_rows == 0:
        return _section("Original sizes", "<p>No images were written.</p>", "sizes")
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
    note = (f'<p class="note">From {table.num_rows:,} of {total:,} written images'
            f'{" (whole row groups spread over the files)" if table.num_rows < total else ""}.</p>')
    stats = _table(["", "min", "median", "max"], [
        ("width", int(w.min()), float(np.median(w)), int(w.max())), ("height", int(h.min()), float(np.median(h)), int(h.max())),
        ("aspect", float(aspect.min()), float(np.median(aspect)), float(aspect.max()))])
    return _section("Original sizes and aspect ratios", note + _chart(fig) + stats, "sizes")


def _channels_section(m: Manifest) -> str:
    names = ["grey"] if len(m.pixel_mean) == 1 else ["R", "G", "B", "A"][: len(m.pixel_mean)]
    rows = []
    for i, name in enumerate(names):
        mean, std = float(m.pixel_mean[i]), float(m.pixel_std[i]) if i < len(m.pixel_std) else float("nan")
        rows.append((name, mean, std, round(mean * 255, 1)))
    swatch = ""
    if len(m.pixel_mean) >= 3:
        r, g, b = (round(float(v) * 255) for v in m.pixel_mean[:3])
        swatch = f'<p>mean colour <span class="swatch" style="background:rgb({r},{g},{b})"></span></p>'
    return _section("Pixel statistics", '<p class="note">Of the written pixels scaled to [0, 1], per channel (from the manifest).</p>'
                    + _table(["channel", "mean", "std", "mean (0-255)"], rows) + swatch, "channels")


def _grid_section(m: Manifest, image_files: list[str], cfg: ReportConfig) -> str:
    head = read_head(image_files, ["source_uri", "label", "width", "height", "channels", "pixel_encoding", "pixels"], cfg.grid_scan_rows)
    if head.num_rows == 0:
        return _section("Stored images", "<p>No images were written.</p>", "grid")
    rows = head.to_pylist()
    by_label: dict[Any, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r.get("label"), []).append(r)
    picked: list[dict] = []
    queues = list(by_label.values())
    while len(picked) < cfg.grid_images and any(queues):  # round robin over labels, so every class shows
        for q in queues:
            if q and len(picked) < cfg.grid_images:
                picked.append(q.pop(0))
    tiles = []
    for r in picked:
        arr = decode_pixels(r["pixels"], r["height"], r["width"], r["channels"], r["pixel_encoding"])
        label = r.get("label")
        alt = str(label) if label is not None else r["source_uri"].rstrip("/").rsplit("/", 1)[-1]  # unlabelled: the file name
        tiles.append(f'<div class="tile">{_img(_data_uri(_png(arr)), alt, title=r["source_uri"])}<br>{_e(label if label is not None else "")}</div>')
    note = (f'<p class="note">{len(picked)} images as stored ({m.resolution} px, {m.channels} channel(s), normalised), '
            f"picked round robin over labels from the first {head.num_rows:,} rows of images/.</p>")
    return _section("Stored images", note + f'<div class="grid">{"".join(tiles)}</div>', "grid")


def _duplicates_section(image_files: list[str], dup_files: list[str], cfg: ReportConfig) -> str:
    dups = read_head(dup_files, ["source_uri", "kept_source_uri", "kind", "distance", "similarity"], cfg.duplicate_rows).to_pylist()
    if not dups:
        return _section("Duplicate clusters", "<p>No input was dropped as a duplicate.</p>", "duplicates")
    clusters: dict[str, list[dict]] = {}
    for r in dups:
        clusters.setdefault(r["kept_source_uri"], []).append(r)
    kinds = Counter(r["kind"] for r in dups)
    # near clusters first (the ones worth a look), then by size; ties in order of appearance
    order = sorted(clusters, key=lambda k: (not any(r["kind"] == "near" for r in clusters[k]), -len(clusters[k])))
    shown = order[: cfg.clusters]
    kept_pixels = find_images(image_files, set(shown), cfg.max_scan_rows)
    strips = []
    for kept in shown:
        members = clusters[kept]
        arr = kept_pixels.get(kept)
        kept_tile = (_img(_data_uri(_png(arr)), "kept image", title=kept) if arr is not None else _placeholder("kept image not found"))
        tiles = [f'<div class="tile kept">{kept_tile}<br><b>kept</b><div class="uri">{_e(_short(kept))}</div></div>']
        for r in members[: cfg.cluster_members]:
            uri, why = _source_thumb(r["source_uri"])
            body = _img(uri, "dropped duplicate", title=r["source_uri"]) if uri else _placeholder(why)
            sim = f"{r['similarity']:.3f}" if r.get("similarity") is not None else "-"
            tiles.append(f'<div class="tile">{body}<br>{_e(r["kind"])} d={_e(r["distance"])} s={_e(sim)}'
                         f'<div class="uri">{_e(_short(r["source_uri"]))}</div></div>')
        more = f'<div class="tile note">and {len(members) - cfg.cluster_members} more</div>' if len(members) > cfg.cluster_members else ""
        strips.append(f'<div class="strip">{"".join(tiles)}{more}</div>')
    note = (f'<p class="note">{len(dups):,} duplicates/ rows read ({", ".join(f"{v:,} {k}" for k, v in sorted(kinds.items()))}) in '
            f"{len(clusters):,} clusters; {len(shown)} shown, near-duplicate clusters first, then by size. Each strip starts with the "
            "kept image as stored, then the dropped files decoded from their sources (d = pHash distance, s = pixel similarity).</p>")
    return _section("Duplicate clusters", note + "".join(strips), "duplicates")


def _short(uri: str, keep: int = 2) -> str:
    """The last `keep` path components of a URI: enough to tell files apart in a strip."""
    return "/".join(uri.rstrip("/").split("/")[-keep:])


# ----------------------------------------------------------------------------- the run report
_THROUGHPUT = re.compile(r"(_per_s$|_time_s$|_s$|^time|throughput|global_batch)")
_SKIP_EVAL_KEYS = {"seed", "k", "world_size", "num_samples", "requested_num_samples", "timing_s", "dims", "images"}


def run_report(run: Path, cfg: ReportConfig) -> str:
    config = _read_json(run / "config.json")
    rows, bad = _read_metrics(run / "metrics.jsonl")
    sections = [
        _run_summary(run, config, rows),
        _curves_section(rows, bad),
        _evaluations_section(run),
        _samples_section(run, cfg),
        _config_section(config),
    ]
    model = config.get("model", "?") if isinstance(config, dict) else "?"
    return _page(f"Training run report: {run.name}", f"{run.resolve()} — model {model}", sections)


def _read_json(path: Path) -> dict[str, Any]:
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
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _checkpoints(run: Path) -> list[str]:
    d = run / "checkpoints"
    return sorted(p.name for p in d.glob("*.pt")) if d.is_dir() else []


def _run_summary(run: Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    items: list[tuple[str, Any]] = [("model", config.get("model", "-")), ("data", config.get("data", "-")),
                                    ("steps logged", f"{len(rows):,} rows, last step {rows[-1]['step']:,}" if rows else "none")]
    ckpts = _checkpoints(run)
    items.append(("checkpoints", ", ".join(ckpts) if ckpts else "none"))
    if rows:
        items += [(f"last {k}", v) for k, v in rows[-1].items() if k != "step" and _numeric(v)]
    return _section("Summary", _table(["", "value"], items), "summary")


def _small_multiples(rows: list[dict[str, Any]], keys: list[str], colour: str) -> str:
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig = _figure(3.8 * cols, 2.6 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    for ax, key in zip(axes, keys):
        pts = [(r["step"], float(r[key])) for r in rows if _numeric(r.get(key))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, markersize=3, color=colour)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return _chart(fig)


def _curves_section(rows: list[dict[str, Any]], bad: int) -> str:
    if not rows:
        return _section("Training curves", "<p>No metrics.jsonl rows (log_every 0, or the run has not logged yet).</p>", "curves")
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k != "step" and k not in keys and _numeric(v)]
    throughput = [k for k in keys if _THROUGHPUT.search(k)]
    training = [k for k in keys if k not in throughput]
    body = (f'<p class="note">{len(rows):,} rows of metrics.jsonl (each the mean over one logging interval), every numeric '
            f'column over step{f"; {bad} unreadable line(s) skipped" if bad else ""}.</p>')
    if training:
        body += "<h3>Losses and training statistics</h3>" + _small_multiples(rows, training, "#4c72b0")
    if throughput:
        body += "<h3>Throughput</h3>" + _small_multiples(rows, throughput, "#55a868")
    return _section("Training curves", body, "curves")


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


def _evaluations_section(run: Path) -> str:
    evals = []
    for path in sorted(run.rglob("*.metrics.json")):
        res = _read_json(path)
        if _numeric(res.get("step")):
            evals.append((int(res["step"]), path, res, _eval_values(res)))
    if not evals:
        return _section("Evaluations", "<p>No evaluation in the run (<code>imagegen evaluate --checkpoint RUN --data OUT</code> "
                        "writes RUN/&lt;checkpoint&gt;.metrics.json).</p>", "evaluations")
    evals.sort(key=lambda e: e[0])
    names: list[str] = []
    for *_, vals in evals:
        names += [n for n in vals if n not in names]
    table_rows = []
    for step, path, res, vals in evals:
        table_rows.append([step, path.relative_to(run).as_posix(), res.get("extractor", {}).get("kind", "-") if isinstance(res.get("extractor"), dict) else "-"]
                          + [(f"{vals[n][0]:.4g}" + (f" (floor {vals[n][1]:.4g})" if vals[n][1] is not None else "")) if n in vals else "-" for n in names])
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig = _figure(3.8 * cols, 2.6 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
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
    for ax in axes[len(names):]:
        ax.set_visible(False)
    note = f'<p class="note">{len(evals)} evaluation(s) found in the run (*.metrics.json), by checkpoint step; the floor is the same metric between two real sets.</p>'
    return _section("Evaluations over time", note + _chart(fig) + _table(["step", "file", "features"] + names, table_rows), "evaluations")


_STEP = re.compile(r"(\d+)")


def _grids(run: Path, prefix: str, limit: int) -> list[tuple[int, Path]]:
    found = []
    for p in (run / "samples").glob(f"{prefix}-*.png"):
        m = _STEP.search(p.stem[len(prefix):])
        if m:
            found.append((int(m.group(1)), p))
    found.sort()
    if len(found) > limit:  # evenly spaced, the last one always in
        idx = sorted({round(i * (len(found) - 1) / (limit - 1)) for i in range(limit)}) if limit > 1 else [len(found) - 1]
        found = [found[i] for i in idx]
    return found


def _grid_uri(path: Path) -> str:
    data = path.read_bytes()
    if len(data) <= SAMPLE_GRID_MAX_BYTES:
        return _data_uri(data)
    from PIL import Image

    with Image.open(path) as img:
        img.thumbnail((SAMPLE_GRID_MAX_SIDE, SAMPLE_GRID_MAX_SIDE))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "PNG")
    return _data_uri(buf.getvalue())


def _samples_section(run: Path, cfg: ReportConfig) -> str:
    body = ""
    for prefix, title in (("samples", "Samples"), ("recon", "VAE reconstructions (pairs: original, reconstruction)")):
        grids = _grids(run, prefix, cfg.max_sample_grids)
        if not grids:
            continue
        total = len(list((run / "samples").glob(f"{prefix}-*.png")))
        figs = "".join(f'<figure>{_img(_grid_uri(p), f"{prefix} at step {step}", title=p.name)}<figcaption>step {step:,}</figcaption></figure>'
                       for step, p in grids)
        body += (f"<h3>{_e(title)}</h3><p class=\"note\">{len(grids)} of {total} grids (samples/{prefix}-*.png), in step order.</p>"
                 f'<div class="samples">{figs}</div>')
    if not body:
        body = "<p>No sample grids (samples/samples-*.png) in the run.</p>"
    return _section("Samples over time", body, "samples")


def _config_section(config: dict[str, Any]) -> str:
    if not config:
        return _section("Config", "<p>No config.json in the run.</p>", "config")
    return _section("Config", _table(["option", "value"], _flatten(config)), "config")


# ----------------------------------------------------------------------------- entry points
def write_report(cfg: ReportConfig) -> Path:
    path = Path(cfg.path)
    kind = detect(path)
    page = dataset_report(path, cfg) if kind == "dataset" else run_report(path, cfg)
    out = Path(cfg.out) if cfg.out else path / REPORT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="imagegen report", description=__doc__)
    p.add_argument("path", help="a dataset OUT (manifest.json) or a training RUN (config.json, metrics.jsonl)")
    p.add_argument("--out", default=None, help=f"the HTML file (default PATH/{REPORT_NAME})")
    p.add_argument("--max-rows", dest="max_rows", type=int, default=ReportConfig.max_rows, help="rows read for the size distributions")
    p.add_argument("--grid-images", dest="grid_images", type=int, default=ReportConfig.grid_images)
    p.add_argument("--clusters", type=int, default=ReportConfig.clusters, help="duplicate clusters shown")
    return p


def main(argv: list[str]) -> int:
    ns = vars(build_parser().parse_args(argv))
    from schemas.layout import DatasetDamagedError

    try:
        out = write_report(ReportConfig(**ns))
    except (NotReportableError, DatasetDamagedError, FileNotFoundError, ValueError) as e:  # one line, no traceback
        print(f"imagegen report: {e}", file=sys.stderr)
        return 2
    print(f"imagegen report: wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
