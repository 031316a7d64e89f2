"""`imagegen report PATH [--out FILE]`: one self-contained HTML page about a dataset or a training run.

    imagegen report OUT            a preprocessed dataset (has manifest.json)  -> OUT/report.html
    imagegen report RUN            a training run (has config.json / metrics.jsonl) -> RUN/report.html
    imagegen report RUN --out /tmp/run.html

Every picture is embedded as a data: URI (charts drawn with matplotlib, thumbnails with Pillow) and
the page loads nothing else, so it can be mailed or attached to a ticket. docs/reports.md shows both.
jobs/report_data.py gathers what a page shows; it is rendered here through the Jinja2 templates in
jobs/templates/, autoescaped, so no string from a dataset or a run (file names, labels, config) is ever markup.

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
import datetime
import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from jobs import report_data
from jobs.cliutil import Parser
from jobs.report_data import (  # the limits of what a report reads live with the reading
    SAMPLE_GRID_MAX_BYTES,
    SAMPLE_GRID_MAX_SIDE,
    SOURCE_THUMB_MAX_BYTES,
    ReportConfig,
)
from jobs.report_data import data_uri as _data_uri  # noqa: F401  (tests/jobs/test_report.py builds its control page with it)
from jobs.report_data import png as _png  # noqa: F401  (likewise)

__all__ = ["REPORT_NAME", "SAMPLE_GRID_MAX_BYTES", "SAMPLE_GRID_MAX_SIDE", "SOURCE_THUMB_MAX_BYTES", "THUMB_PX", "NotReportableError",
           "ReportConfig", "build_parser", "dataset_report", "detect", "main", "run_report", "write_report"]

REPORT_NAME = "report.html"
THUMB_PX = 64                # CSS size of a thumbnail; small images are upscaled with pixelated rendering


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


# ----------------------------------------------------------------------------- rendering
@functools.cache
def _environment() -> Environment:
    """The templates in jobs/templates (found through the installed package), autoescaped; an undefined name is an error."""
    env = Environment(loader=PackageLoader("jobs", "templates"), autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["fmt"] = _fmt
    env.tests["numeric"] = _is_number
    return env


def _fmt(v: Any) -> str:
    """A table cell's text: ints with thousands separators, finite floats to 4 significant digits, lists and dicts as JSON."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _is_number(v: Any) -> bool:
    """A cell shown right-aligned: an int or float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _render(name: str, title: str, subtitle: str, **context: Any) -> str:
    """Template `name` (base.html or one extending it) as a page: the title, the subtitle, when it was written."""
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return _environment().get_template(name).render(title=title, subtitle=subtitle, written=when, thumb_px=THUMB_PX, **context)


def _page(title: str, subtitle: str, sections: list[str]) -> str:
    """base.html around `sections`, HTML the caller wrote itself and vouches for (tests/jobs/test_report.py's control
    page for the browser check); the reports render dataset.html and run.html, which fill base.html's sections."""
    return _render("base.html", title, subtitle, sections=[Markup(s) for s in sections])


def _img(uri: str, alt: str, cls: str = "", title: str | None = None) -> str:
    """One <img> from macros.html, `title` defaulting to `alt` (tests/jobs/test_report.py's control page is built with it)."""
    return _environment().get_template("macros.html").module.img(uri, alt, title=title, cls=cls)


def dataset_report(root: Path, cfg: ReportConfig) -> str:
    """The dataset report of OUT `root` as one HTML page."""
    r = report_data.dataset(root, cfg)
    return _render("dataset.html", r.title, r.subtitle, r=r)


def run_report(run: Path, cfg: ReportConfig) -> str:
    """The training-run report of `run` as one HTML page."""
    r = report_data.run(run, cfg)
    return _render("run.html", r.title, r.subtitle, r=r)


# ----------------------------------------------------------------------------- entry points
def write_report(cfg: ReportConfig) -> Path:
    """The report of cfg.path written (atomically) to cfg.out or PATH/report.html -> that file."""
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
    """`imagegen report`'s arguments."""
    p = Parser(prog="imagegen report", description=__doc__)
    p.add_argument("path", help="a dataset OUT (manifest.json) or a training RUN (config.json, metrics.jsonl)")
    p.add_argument("--out", default=None, help=f"the HTML file (default PATH/{REPORT_NAME})")
    p.add_argument("--max-rows", dest="max_rows", type=int, default=ReportConfig.max_rows, help="rows read for the size distributions")
    p.add_argument("--grid-images", dest="grid_images", type=int, default=ReportConfig.grid_images)
    p.add_argument("--clusters", type=int, default=ReportConfig.clusters, help="duplicate clusters shown")
    return p


def main(argv: list[str]) -> int:
    """`imagegen report ARGV` -> exit status: 0 written, 2 (one line on stderr) not reportable or damaged."""
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
