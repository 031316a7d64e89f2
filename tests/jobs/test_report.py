"""`imagegen report` on a real dataset (sample-data shapes with planted duplicates and corrupt files, through the
real preprocess job) and a real training run (a tiny VAE, evaluated at two checkpoints), each page opened in
headless Chromium: no console message, every <img> decoded (the page's own check, read back from the DOM), a
screenshot saved. Chromium is Debian's package (apt-get install -y chromium); without it these tests fail."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs import report
from jobs.sample_data import main as sample_data

WINDOW = (1280, 2400)  # screenshot size, px
# Debian's chromium as root on a machine with no network and no D-Bus (see the env notes): no sandbox, no GPU,
# no background connections; --enable-logging=stderr --v=0 puts the page's console messages on stderr.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\]? (.*)")


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium not found on PATH: install Debian's package (apt-get install -y chromium); "
                    "these tests open the reports in a real browser and do not skip")
    return path


def open_in_chromium(page: Path, tmp: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """Load `page` in headless Chromium -> (the DOM after its scripts ran, the console messages). With
    `screenshot`, a second load writes a WINDOW-sized PNG there."""
    exe = _chromium()
    base = [exe, *CHROMIUM_FLAGS, f"--window-size={WINDOW[0]},{WINDOW[1]}"]
    dom = subprocess.run(base + [f"--user-data-dir={tmp / 'profile-dom'}", "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=180, check=False)
    assert dom.returncode == 0, dom.stderr[-3000:]
    console = [m.group(1) for line in dom.stderr.splitlines() if (m := CONSOLE.search(line))]
    if screenshot is not None:
        shot = subprocess.run(base + [f"--user-data-dir={tmp / 'profile-shot'}", f"--screenshot={screenshot}", page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=180, check=False)
        assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-3000:]
        console += [m.group(1) for line in shot.stderr.splitlines() if (m := CONSOLE.search(line))]
    return dom.stdout, console


def _body_attr(dom: str, name: str) -> str | None:
    body = re.search(r"<body\b[^>]*>", dom)
    assert body, dom[:500]
    m = re.search(rf'{name}="([^"]*)"', body.group(0))
    return m.group(1) if m else None


def assert_renders(page: Path, tmp: Path, screenshot: Path) -> str:
    """The page loads with no console message, every <img> in it decodes, and its screenshot is a real picture."""
    text = page.read_text()
    srcs = re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    # self-contained: nothing to fetch (no external src/href, stylesheet or script file)
    assert not re.search(r'\b(?:src|href)="(?!data:|#)', text) and "<link" not in text and "<script src" not in text
    dom, console = open_in_chromium(page, tmp, screenshot)
    assert console == []
    assert _body_attr(dom, "data-images") == f"{len(srcs)}/{len(srcs)}"
    assert _body_attr(dom, "data-images-ok") == "yes"
    with Image.open(screenshot) as img:
        assert img.size == WINDOW
        arr = np.asarray(img.convert("L"), dtype=np.float64)
    assert arr.std() > 10  # text, charts and thumbnails, not a blank page
    return text


def test_the_browser_check_catches_a_broken_image_and_a_console_error(tmp_path: Path) -> None:
    # the harness can fail: a page built by the report's own _page with one broken image and a console error
    good = report._img(report._data_uri(report._png(np.full((8, 8, 3), 200, np.uint8))), "good")
    broken = '<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==" alt="broken">'
    page = tmp_path / "bad.html"
    page.write_text(report._page("control", "a page that must fail the check", [good, broken, "<script>console.error('boom')</script>"]))
    dom, console = open_in_chromium(page, tmp_path)
    assert _body_attr(dom, "data-images") == "1/2" and _body_attr(dom, "data-images-ok") == "no"
    assert any("boom" in line for line in console), console


# ----------------------------------------------------------------------------- a real dataset and a real run
@pytest.fixture(scope="module")
def made(spark, tmp_path_factory) -> dict:
    """Shapes with planted duplicates and corrupt files -> preprocess (32 px) -> a 6-step VAE, evaluated at
    steps 3 and 6."""
    import torch

    from pipelines.config import LabelMode, PreprocessConfig
    from pipelines.preprocess import run_preprocess
    from training import checkpoint
    from training.config import TrainConfig
    from training.evaluate import EvalConfig, evaluate
    from training.loop import train

    root = tmp_path_factory.mktemp("report")
    src, ds, run = root / "shapes", root / "ds", root / "run"
    assert sample_data(["--kind", "shapes", "--out", str(src), "--n", "30", "--plant-duplicates", "6", "--plant-corrupt", "3"]) == 0
    planted = json.loads((src / "_planted.json").read_text())
    cfg = PreprocessConfig(resolution=32, labels=LabelMode.DIRS, progress_interval_s=600)
    manifest = run_preprocess(spark, [str(src)], str(ds), cfg, log=lambda s: None).manifest
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(TrainConfig(data=str(ds), run_dir=str(run), model="vae", steps=6, batch_size=8, base_channels=8, z_dim=16,
                          num_samples=16, sample_every=2, log_every=1, ckpt_every=3, keep_ckpts=0, backend="single", progress=False))
        for step in (3, 6):
            evaluate(EvalConfig(checkpoint=str(checkpoint.path_for(run, step)), data=str(ds), num_samples=12,
                                kid_subsets=10, batch_size=32, backend="single", progress=False))
    finally:
        torch.set_num_threads(threads)
    return {"src": src, "ds": ds, "run": run, "planted": planted, "manifest": manifest}


def test_dataset_report(made: dict, tmp_path: Path) -> None:
    ds, m = made["ds"], made["manifest"]
    out = ds / "report.html"
    assert report.main([str(ds)]) == 0 and out.is_file()
    text = assert_renders(out, tmp_path, tmp_path / "report-dataset.png")

    c = m.counts
    dup_total = sum(c["duplicates"].values())
    assert c["inputs"] == 39 and c["written"] + dup_total == 36
    assert f"39 inputs = {c['written']} written + 3 rejected + {dup_total} duplicates" in text
    assert '<span class="ok">holds</span>' in text
    for reason in ("empty_file", "not_an_image", "truncated"):
        assert f"<td>{reason}</td><td class=\"num\">1</td>" in text
    for shape in ("circle", "square", "triangle", "star", "hexagon"):
        assert f"<td>{shape}</td>" in text  # the label table
    # the grid: every written image (fewer rows than grid_images), each a decoded stored image
    grid = text.split('id="grid"')[1].split("</section>")[0]
    assert len(re.findall(r'<div class="tile"><img', grid)) == c["written"]
    # one strip per kept image, kept first; the dropped ones decoded from their source files
    assert text.count('<div class="strip">') == len({r for r in _dup_rows(ds, m)["kept_source_uri"]}) >= 1
    assert "placeholder" not in text.split('id="duplicates"')[1]
    # mean/std straight from the manifest
    assert f"<td class=\"num\">{m.pixel_mean[0]:.4g}</td>" in text

    # a dropped duplicate's source file removed: a labelled placeholder instead of its thumbnail, still no broken <img>
    gone = Path(_dup_rows(ds, m)["source_uri"][0].removeprefix("file:"))
    gone.rename(gone.with_name("_moved-away"))
    out2 = tmp_path / "again.html"
    assert report.main([str(ds), "--out", str(out2), "--max-rows", "5"]) == 0
    text2 = assert_renders(out2, tmp_path, tmp_path / "again.png")
    assert text2.count('<div class="placeholder">source gone</div>') == 1
    assert f"From 5 of {c['written']} written images" in text2  # the bounded read of the size columns


def _dup_rows(ds: Path, m) -> dict:
    import pyarrow.parquet as pq

    from schemas import listed_files

    import pyarrow as pa

    files = listed_files(str(ds), m, "duplicates")
    return pa.concat_tables([pq.read_table(f, columns=["source_uri", "kept_source_uri"]) for f in files]).to_pydict()


def test_run_report(made: dict, tmp_path: Path) -> None:
    run = made["run"]
    out = tmp_path / "run.html"
    assert report.main([str(run), "--out", str(out)]) == 0
    text = assert_renders(out, tmp_path, tmp_path / "report-run.png")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    numeric = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "step"}
    assert {"loss", "recon", "kl", "images_per_s", "step_time_s"} <= numeric
    for key in numeric:  # every numeric column has a chart title and a summary row
        assert f"<td>last {key}</td>" in text
    # sample grids and reconstructions in step order
    assert re.findall(r'alt="samples at step (\d+)"', text) == ["2", "4", "6"]
    assert re.findall(r'alt="recon at step (\d+)"', text) == ["2", "4", "6"]
    # both evaluations, by step, with the FID floor
    assert "2 evaluation(s)" in text
    table = text.split('id="evaluations"')[1]
    assert re.search(r'<td class="num">3</td><td>ckpt-00000003.metrics.json</td>', table)
    assert re.search(r'<td class="num">6</td><td>ckpt-00000006.metrics.json</td>', table)
    fid6 = json.loads((run / "ckpt-00000006.metrics.json").read_text())["metrics"]["fid"]
    assert f"{fid6['value']:.4g} (floor {fid6['real_floor']:.4g})" in table
    # the config as a table
    cfg = json.loads((run / "config.json").read_text())
    assert f"<td>base_channels</td><td class=\"num\">{cfg['base_channels']}</td>" in text


def test_not_a_dataset_or_run_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "x.txt").write_text("hi")
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imagegen report: ") and "expected manifest.json" in err and "x.txt" in err and "\n" not in err


# ----------------------------------------------------------------------------- user strings, alt text, templates
HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "&amp;")
SCRIPT, ATTR, AMP = HOSTILE
NAME = f"{ATTR}.png"  # a file name the filesystem allows: no "/"


def _image_row(uri: str, label: str | None, shade: int) -> dict:
    """One images/ row of an 8 px RGB image of one shade (raw pixels)."""
    return {"image_id": f"{shade:032x}", "source_uri": uri, "sha256": f"{shade:064x}", "pixels_sha256": f"{shade:064x}",
            "phash": shade, "label": label, "label_index": None, "orig_width": 8, "orig_height": 8, "orig_format": "PNG",
            "orig_mode": "RGB", "file_size": 100, "width": 8, "height": 8, "channels": 3, "pixel_encoding": "raw",
            "pixels": bytes([shade]) * (8 * 8 * 3), "brightness": float(shade), "contrast": 0.0, "entropy": 0.0, "run_id": "r1"}


def _write_table(root: Path, table: str, rows: list[dict], schema) -> list[dict]:
    """rows -> root/<table>/run_id=r1/part-0.parquet -> the manifest's file list for it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = root / table / "run_id=r1"
    part.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema).drop(["run_id"]), part / "part-0.parquet")
    return [{"path": f"{table}/run_id=r1/part-0.parquet", "rows": len(rows)}]


def _hostile_dataset(parent: Path) -> Path:
    """A dataset written straight with pyarrow whose folder name, file names, labels, reject detail and
    preprocess config hold markup; one image unlabelled (file name plain-0001.png), one dropped duplicate."""
    from schemas import (
        DUPLICATES_ARROW,
        IMAGES_ARROW,
        REJECTS_ARROW,
        SCHEMA_VERSION,
        Manifest,
    )

    root = parent / ATTR
    kept = f"file:/data/{AMP}/{NAME}"
    images = [_image_row(kept, SCRIPT, 40), _image_row(f"file:/data/{SCRIPT}/b.png", AMP, 120),
              _image_row(f"file:/data/u/{NAME}", None, 200), _image_row("file:/data/u/plain-0001.png", None, 90)]
    rejects = [{"source_uri": f"file:/data/{SCRIPT}.jpg", "reason": "truncated", "detail": " ".join(HOSTILE), "run_id": "r1"}]
    dups = [{"source_uri": f"file:/data/copies/{NAME}", "kept_source_uri": kept, "kind": "near", "distance": 3,
             "similarity": 0.95, "run_id": "r1"}]
    files = {"images": _write_table(root, "images", images, IMAGES_ARROW),
             "rejects": _write_table(root, "rejects", rejects, REJECTS_ARROW),
             "duplicates": _write_table(root, "duplicates", dups, DUPLICATES_ARROW)}
    (root / "manifest.json").write_text(Manifest(
        schema_version=SCHEMA_VERSION, run_id="r1", resolution=8, channels=3, pixel_encoding="raw", classes=[SCRIPT, AMP],
        counts={"inputs": 6, "written": 4, "rejected": {"truncated": 1}, "duplicates": {"near": 1}},
        label_counts={SCRIPT: 1, AMP: 1}, pixel_mean=[0.4] * 3, pixel_std=[0.2] * 3,
        config={"labels_path": SCRIPT, "note": ATTR, "nested": {"amp": AMP}}, input_fingerprint="x",
        timings={"decode": 1.5}, versions={}, files=files).to_json())
    return root


def _hostile_run(parent: Path) -> Path:
    """A training run whose folder, config strings, metric keys, evaluation file, metric names, extractor,
    checkpoint and sample grid names hold markup."""
    run = parent / f"{ATTR}-run"
    (run / "samples").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / f"{AMP}.pt").write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"model": SCRIPT, "data": ATTR, "nested": {"amp": AMP}, "steps": 4}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, SCRIPT: 0.5 * s}) + "\n" for s in (1, 2, 3, 4)))
    (run / f"{ATTR}.metrics.json").write_text(json.dumps(
        {"step": 4, "extractor": {"kind": SCRIPT}, "metrics": {ATTR: {"value": 2.0, "real_floor": 1.0}}}))
    for name in ("samples-0002.png", f"samples-0004{ATTR}.png"):
        Image.new("RGB", (16, 16), (30, 90, 150)).save(run / "samples" / name)
    return run


class _Page(HTMLParser):
    """Tags, attributes and text of a page, entities decoded."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.strings: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self.strings += [v for _, v in attrs if v]

    def handle_data(self, data: str) -> None:
        self.strings.append(data)


def test_no_user_string_reaches_the_page_unescaped(tmp_path: Path) -> None:
    from markupsafe import escape

    cfg = report.ReportConfig(path=str(tmp_path))
    pages = {"dataset": report.dataset_report(_hostile_dataset(tmp_path), cfg), "run": report.run_report(_hostile_run(tmp_path), cfg)}
    for kind, text in pages.items():
        for s in (SCRIPT, ATTR):
            assert s not in text, (kind, s)
        for s in HOSTILE:
            assert str(escape(s)) in text, (kind, s)
        page = _Page(text)
        assert [t for t, _ in page.tags].count("script") == 1, kind  # the page's own check, nothing else
        assert not [a for _, attrs in page.tags for a in attrs if a.startswith("on")], kind
        assert all(attrs["src"].startswith("data:image/png;base64,") for t, attrs in page.tags if t == "img"), kind
        shown = "\n".join(page.strings)
        for s in HOSTILE:  # shown as text, as written
            assert s in shown, (kind, s)
    sections = {"dataset": {"counts": SCRIPT, "rejects": SCRIPT, "labels": SCRIPT, "grid": SCRIPT, "duplicates": ATTR},
                "run": {"summary": SCRIPT, "evaluations": ATTR, "samples": ATTR, "config": SCRIPT}}
    for kind, where in sections.items():  # each section that shows a user string shows it escaped
        for anchor, s in where.items():
            assert str(escape(s)) in _section(pages[kind], anchor), (kind, anchor)


def _section(text: str, anchor: str) -> str:
    """The HTML of the page's <section id="anchor">."""
    return text.split(f'id="{anchor}"')[1].split("</section>")[0]


def test_unlabelled_images_get_their_file_name_as_alt(tmp_path: Path) -> None:
    from markupsafe import escape

    text = report.dataset_report(_hostile_dataset(tmp_path), report.ReportConfig(path=str(tmp_path)))
    grid = _section(text, "grid")
    alts = [attrs["alt"] for t, attrs in _Page(grid).tags if t == "img"]
    assert sorted(alts) == sorted([SCRIPT, AMP, NAME, "plain-0001.png"])  # the label, or the file name
    assert 'alt="None"' not in text and f'alt="{escape(NAME)}"' in grid


def test_templates_load_from_the_package() -> None:
    from jinja2 import PackageLoader

    import jobs

    env = report._environment()
    assert isinstance(env.loader, PackageLoader) and env.autoescape
    names = env.list_templates()
    shipped = sorted(p.name for p in (Path(jobs.__file__).parent / "templates").glob("*.html"))
    assert names == shipped and {"base.html", "dataset.html", "run.html", "macros.html"} <= set(names)
    for name in names:
        env.get_template(name)  # parses
