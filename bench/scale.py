"""Scale of one preprocess job: the same command at two sizes, side by side (a benchmark, not a test; issue 7/9).

    .venv/bin/python bench/scale.py                         # 1,000,000 images in tar shards vs 100,000 loose files
    .venv/bin/python bench/scale.py --tar 40000 --loose 4000 --workdir /tmp/scale

Generates two corpora of small images (32x32 to 48x48 PNGs of random shapes on random backgrounds, ~1 in 50 a
re-encoded near copy of another, so dedup has work), the larger one as webdataset-style tar shards
(`%06d.png` + `%06d.cls` per sample, 10,000 samples per shard) and the smaller one as loose files in class folders.
Each is preprocessed by the real `imagegen preprocess` command (dedup on, `--master local[2]`, resolution 32) in
its own process, while a sampler reads /proc every 0.5 s for the peak RSS of the Python driver, the JVM (the driver;
in local mode the executors run inside it) and the Python workers (the largest one). Then one training epoch's worth
of batches is read through the arrow loader (batch 256).

Prints per size: wall time, images/s and images/s per core, peak RSS of each process kind, bytes written, loader
rows/s; then the ratios large/small of time and of the peak driver RSS (goal: time ratio <= 12 for 10x the images,
driver RSS flat).
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARD = 10_000
PNG_MAGIC = b"\x89PNG"


def _image(rng: np.random.Generator) -> tuple[bytes, int]:
    """A small PNG of a random shape; returns (bytes, class 0..3)."""
    side = int(rng.integers(32, 49))
    img = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    cls = int(rng.integers(0, 4))
    x0, y0 = (int(v) for v in rng.integers(0, side // 2, 2))
    x1, y1 = x0 + side // 3 + int(rng.integers(0, side // 3)), y0 + side // 3 + int(rng.integers(0, side // 3))
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    [d.ellipse, d.rectangle, lambda box, fill: d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill),
     lambda box, fill: d.line(box, fill=fill, width=3)][cls]((x0, y0, x1, y1), fill=fill)
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue(), cls


def _near_copy(data: bytes) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    buf = io.BytesIO()
    img.resize((img.width - 2, img.height - 2)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def make_tar_corpus(root: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    last = b""
    for s in range(0, n, SHARD):
        with tarfile.open(root / f"shard-{s // SHARD:05d}.tar", "w") as tar:
            for i in range(s, min(n, s + SHARD)):
                data, cls = (_near_copy(last), -1) if last and rng.random() < 0.02 else _image(rng)
                last = data
                for name, payload in ((f"{i:07d}.png" if cls >= 0 else f"{i:07d}.jpg", data),
                                      (f"{i:07d}.cls", str(max(cls, 0)).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def make_loose_corpus(root: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    last = b""
    for i in range(n):
        data, cls = (_near_copy(last), 0) if last and rng.random() < 0.02 else _image(rng)
        last = data
        d = root / f"class{cls}"
        d.mkdir(parents=True, exist_ok=True)
        ext = "png" if data.startswith(PNG_MAGIC) else "jpg"
        (d / f"{i:07d}.{ext}").write_bytes(data)


class PeakRSS:
    """Peak RSS (bytes) per process kind in the tree under `pid`, sampled every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.root, self.interval = psutil.Process(pid), interval
        self.peak = {"python driver": 0, "jvm": 0, "python worker (max)": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _kind(self, p: psutil.Process) -> str | None:
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            return None
        if "java" in p.name():
            return "jvm"
        if "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
            return "python worker (max)"
        if p.pid == self.root.pid:
            return "python driver"
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                kind = self._kind(p)
                if kind:
                    try:
                        self.peak[kind] = max(self.peak[kind], p.memory_info().rss)
                    except psutil.Error:
                        pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(src: Path, out: Path, n: int, labels: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "jobs.cli", "preprocess", str(src), "--output", str(out), "--resolution", "32",
           "--labels", labels, "--master", "local[2]"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with PeakRSS(proc.pid) as rss:
        _, err = proc.communicate()
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"preprocess of {src} failed ({proc.returncode}):\n{err[-3000:]}")
    from schemas import Manifest
    from training.data import LoaderConfig, open_loader

    m = Manifest.read(str(out))
    t1 = time.monotonic()
    rows = 0
    with open_loader(LoaderConfig(data=str(out), batch_size=256)) as loader:
        for b in loader.epoch(0):
            rows += len(b)
    load_s = time.monotonic() - t1
    return {"images": n, "wall_s": round(wall, 1), "images_per_s": round(n / wall, 1),
            "images_per_s_per_core": round(n / wall / 2, 1), "peak_rss_mb": {k: round(v / 2**20) for k, v in rss.peak.items()},
            "bytes_written": _bytes(out), "written": m.counts["written"], "duplicates": m.counts["duplicates"],
            "rejected": sum(m.counts["rejected"].values()), "loader_rows_per_s": round(rows / load_s)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tar", type=int, default=1_000_000, help="images in tar shards (the large run)")
    ap.add_argument("--loose", type=int, default=100_000, help="loose image files (the small run)")
    ap.add_argument("--workdir", default="/tmp/imagegen-scale")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    work = Path(a.workdir)
    tar_src, loose_src = work / f"tar-{a.tar}", work / f"loose-{a.loose}"
    for src, n, make in ((tar_src, a.tar, make_tar_corpus), (loose_src, a.loose, make_loose_corpus)):
        if not (src / ".done").exists():
            shutil.rmtree(src, ignore_errors=True)
            t = time.monotonic()
            make(src, n, a.seed)
            (src / ".done").write_text("")
            print(f"generated {n} images in {src} in {time.monotonic() - t:.0f} s", flush=True)
    small = measure(loose_src, work / "out-loose", a.loose, "dirs")
    print(json.dumps({"loose": small}), flush=True)
    large = measure(tar_src, work / "out-tar", a.tar, "none")
    print(json.dumps({"tar": large}), flush=True)
    ratio_t = large["wall_s"] / small["wall_s"]
    ratio_rss = large["peak_rss_mb"]["python driver"] / max(1, small["peak_rss_mb"]["python driver"])
    ratio_jvm = large["peak_rss_mb"]["jvm"] / max(1, small["peak_rss_mb"]["jvm"])
    print(f"images ratio {a.tar / a.loose:.1f}: time ratio {ratio_t:.2f} (goal <= {1.2 * a.tar / a.loose:.1f}), "
          f"python driver RSS ratio {ratio_rss:.2f}, JVM RSS ratio {ratio_jvm:.2f} (goal: flat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
