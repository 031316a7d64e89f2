"""Preprocess throughput, three ways side by side in one run (a benchmark, not a test).

    .venv/bin/python bench/preprocess.py --n 2000 --master 'local[2]'

Generates N photo-like JPEGs (512x512 and 1024x768 by default), then measures:
  (a) decode ceiling: a single-process loop doing only the reduced-scale JPEG decode (read bytes, open, draft, load);
  (b) bare loop: a single-process loop doing the full per-image work (pipelines.decode.process_image + batched pHash);
  (c) the preprocess job (pipelines.preprocess.run_preprocess) on a local[K] Spark session, already started.
Prints images/s per core for each, and the ratios c/a and c/b. (c) runs twice, without dedup (like for like:
(a)/(b) do no dedup) and with it (the default), and each is reported for the decode stage alone (read + decode
+ stage to Parquet) and for the whole job (listing, decode, [dedup], stats, writes, verification, commit), with
the CPU per image split into Python workers, JVM and driver.
Goal (issue 2/8): c >= 0.6 * a per core.

    .venv/bin/python bench/preprocess.py --fixed-cost 1000 3000 10000 --img2dataset ~/.cache/imagegen/i2d-venv/bin/img2dataset

Fixed cost per job (issue 5/9): the whole `imagegen preprocess` command, cold, as a user runs it (JVM and Spark
start-up, listing, decode, dedup, writes, commit), timed at each N on the first N of one generated set; a line
fitted to (N, seconds) gives the intercept (what a job costs before its first image) and the marginal rate.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import socket
import subprocess
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.config import PreprocessConfig  # noqa: E402
from pipelines.decode import Decoded, process_image  # noqa: E402
from pipelines.phash import phash_batch  # noqa: E402
from tests.pipelines.imagefactory import photo_like  # noqa: E402


def generate(root: Path, n: int, sizes: list[tuple[int, int]], quality: int, seed: int = 0) -> list[Path]:
    """n distinct JPEGs: a few photo-like bases per size, each file a different shifted/flipped crop of one."""
    rng = np.random.default_rng(seed)
    bases = {s: [np.asarray(photo_like(s[0] + 64, s[1] + 64, seed=seed + 100 * k + i)) for i in range(8)]
             for k, s in enumerate(sizes)}
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        base = bases[(w, h)][int(rng.integers(0, 8))]
        dx, dy = (int(v) for v in rng.integers(0, 64, 2))
        arr = base[dy:dy + h, dx:dx + w]
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        path = root / f"img_{i:06d}.jpg"
        if not path.exists():  # a kept --workdir: same seed, same files
            Image.fromarray(np.ascontiguousarray(arr)).save(path, format="JPEG", quality=quality)
        paths.append(path)
    return paths


def tree_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of this process and all its descendants, by kind: "driver" (this
    process), "jvm" (Spark's java), "workers" (PySpark's Python daemon and workers). On a shared machine
    wall time depends on what else runs; CPU time measures the work itself."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            name = text[text.index("(") + 1:text.rindex(")")]
            fields = text[text.rindex(")") + 2:].split()
            stats[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, name)
    me = os.getpid()

    def descends(pid: int) -> bool:
        while pid in stats and pid not in (me, 0, 1):
            pid = stats[pid][0]
        return pid == me

    out = {"driver": 0.0, "jvm": 0.0, "workers": 0.0}
    for pid, (_, cpu, name) in stats.items():
        if pid == me:
            out["driver"] += cpu
        elif descends(pid):
            out["jvm" if name == "java" else "workers"] += cpu
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def decode_ceiling(paths: list[Path], need: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        im = Image.open(io.BytesIO(p.read_bytes()))
        im.draft("RGB", (need, need))
        im.load()
    return len(paths) / (time.perf_counter() - t0), len(paths) / (time.process_time() - c0)


def bare_loop(paths: list[Path], cfg: PreprocessConfig, batch: int = 32) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    ok = 0
    for i in range(0, len(paths), batch):
        grays = []
        for p in paths[i:i + batch]:
            r = process_image(p.read_bytes(), str(p), cfg)
            if isinstance(r, Decoded):
                grays.append(r.gray)
                ok += 1
        if grays:
            phash_batch(np.stack(grays))
    rate = len(paths) / (time.perf_counter() - t0), len(paths) / (time.process_time() - c0)
    if ok != len(paths):
        raise SystemExit(f"bare loop: expected {len(paths)} images, {ok} decoded")
    return rate


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(intercept s, marginal img/s) of a line through (N, wall s)."""
    slope, intercept = np.polyfit(np.array([p[0] for p in points], float), np.array([p[1] for p in points], float), 1)
    return float(intercept), float(1 / slope)


def _serve(root: Path) -> tuple[subprocess.Popen, int]:
    """`python -m http.server` on a free loopback port, serving `root` (the peer fetches over HTTP, as its users do)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return srv, port
        except OSError:
            time.sleep(0.1)
    srv.kill()
    raise SystemExit("http.server did not start")


def img2dataset_run(exe: Path, paths: list[Path], port: int, resolution: int, work: Path) -> float:
    """Wall seconds of `img2dataset` fetching `paths` from the loopback server: 2 processes x 16 threads,
    center-cropped to `resolution`, written as files; fails unless every image was fetched."""
    urls, out = work / f"i2d_urls_{len(paths)}.txt", work / f"i2d_out_{len(paths)}"
    shutil.rmtree(out, ignore_errors=True)
    urls.write_text("".join(f"http://127.0.0.1:{port}/{p.name}\n" for p in paths))
    t0 = time.perf_counter()
    subprocess.run([str(exe), "--url_list", str(urls), "--input_format", "txt", "--output_folder", str(out),
                    "--output_format", "files", "--image_size", str(resolution), "--resize_mode", "center_crop",
                    "--processes_count", "2", "--thread_count", "16", "--number_sample_per_shard", "10000"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})  # no update check over the network
    wall = time.perf_counter() - t0
    got = sum(1 for _ in out.rglob("*.jpg"))
    if got != len(paths):
        raise SystemExit(f"img2dataset wrote {got} of {len(paths)} images")
    return wall


def _medians(times: list[tuple[int, float]]) -> list[tuple[int, float]]:
    by_n: dict[int, list[float]] = {}
    for n, t in times:
        by_n.setdefault(n, []).append(t)
    return [(n, float(np.median(ts))) for n, ts in sorted(by_n.items())]


def fixed_cost(paths: list[Path], sizes: list[int], resolution: int, master: str, work: Path,
               img2dataset: Path | None, rounds: int = 2) -> int:
    """Wall seconds of the cold CLI at each N (dedup on, the defaults), the fitted line, and (with `img2dataset`,
    its executable in its own venv) the peer on the same files in the same sitting, each N run back to back;
    `rounds` passes over the sizes, the median of each N's times fitted."""
    cli = Path(sys.executable).parent / "imagegen"
    ours, peer, spark_up = [], [], []
    srv, port = _serve(paths[0].parent) if img2dataset else (None, 0)
    try:
        for n in [n for _ in range(rounds) for n in sorted(sizes)]:
            src, out = work / f"fc_src_{n}", work / f"fc_out_{n}"
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            src.mkdir()
            for p in paths[:n]:
                os.link(p, src / p.name)  # same bytes, no copy
            t0 = time.perf_counter()
            proc = subprocess.run([str(cli), "preprocess", str(src), "--output", str(out), "--resolution", str(resolution),
                                   "--master", master], check=True, capture_output=True, text=True)
            ours.append((n, time.perf_counter() - t0))
            up = re.search(r"Spark \S+ up in ([0-9.]+)s", proc.stdout)
            spark_up.append(float(up.group(1)) if up else float("nan"))
            stages = re.search(r"timings: (.*)", proc.stdout)
            line = f"  N={n:>6}: imagegen {ours[-1][1]:6.1f} s ({n / ours[-1][1]:5.0f} img/s; Spark start {spark_up[-1]:.1f} s; " \
                   f"{stages.group(1) if stages else ''})"
            if img2dataset:
                peer.append((n, img2dataset_run(img2dataset, paths[:n], port, resolution, work)))
                line += f"\n  {'':8}  img2dataset {peer[-1][1]:6.1f} s ({n / peer[-1][1]:5.0f} img/s)"
            print(line, flush=True)
    finally:
        if srv is not None:
            srv.kill()
    ours, peer = _medians(ours), _medians(peer)
    print(f"medians of {rounds} rounds: imagegen " + ", ".join(f"{n}: {t:.1f} s" for n, t in ours)
          + ("; img2dataset " + ", ".join(f"{n}: {t:.1f} s" for n, t in peer) if peer else ""))
    intercept, marginal = _fit(ours)
    print(f"fixed cost (intercept of time vs N over {sorted(sizes)}): imagegen {intercept:.1f} s, of which Spark's start "
          f"{np.nanmedian(spark_up):.1f} s (median); marginal {marginal:.0f} img/s ({marginal / os.cpu_count():.0f} per core); "
          f"goal: intercept <= 8 s with dedup on; load average {os.getloadavg()[0]:.1f}")
    if peer:
        p_intercept, p_marginal = _fit(peer)
        print(f"img2dataset: intercept {p_intercept:.1f} s, marginal {p_marginal:.0f} img/s; "
              f"ratio imagegen/img2dataset: intercept {intercept / p_intercept:.2f}, marginal rate {marginal / p_marginal:.2f}")
        at = {n: (o, q) for (n, o), (_, q) in zip(ours, peer)}
        for n, (o, q) in sorted(at.items()):
            print(f"  whole run at {n}: imagegen {n / o:.0f} img/s, img2dataset {n / q:.0f} img/s, ratio {q / o:.2f} "
                  f"(goal at 3,000: >= 1)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--sizes", default="512x512,1024x768")
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--workdir", default=None, help="where to generate (default: a temp dir, removed at the end; kept if given)")
    ap.add_argument("--warmup", type=int, default=1000,
                    help="images in the untimed warm-up job (default 1000): the JVM's JIT needs ~1000 images before its "
                         "per-image CPU settles (64 images left it at ~2x its steady cost)")
    ap.add_argument("--arrow-batch-rows", type=int, default=None, help="PreprocessConfig.arrow_batch_rows (default: the config's)")
    ap.add_argument("--partitions", type=int, default=None, help="PreprocessConfig.partitions (default: 3 x cores)")
    ap.add_argument("--fixed-cost", type=int, nargs="+", metavar="N",
                    help="time the cold `imagegen preprocess` command at each N and fit intercept + marginal rate")
    ap.add_argument("--rounds", type=int, default=2, help="with --fixed-cost: passes over the sizes; medians are fitted (default 2)")
    ap.add_argument("--img2dataset", default=None, metavar="EXE",
                    help="with --fixed-cost: the peer's executable, in its own venv (`python -m venv V && V/bin/pip install "
                         "img2dataset`), run on the same files over loopback HTTP after each of our runs")
    args = ap.parse_args()
    if args.fixed_cost:
        args.n = max(args.n, *args.fixed_cost)
    cores = int(args.master[len("local["):-1]) if args.master.startswith("local[") and args.master[6:-1].isdigit() else os.cpu_count()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="imagegen-bench-"))
    cfg = PreprocessConfig(resolution=args.resolution, progress_interval_s=30.0, partitions=args.partitions)
    if args.arrow_batch_rows is not None:
        cfg = cfg.replace(arrow_batch_rows=args.arrow_batch_rows)
    try:
        t0 = time.perf_counter()
        paths = generate(work / "jpegs", args.n, sizes, args.quality)
        for stale in ("warm", "warm_out", "out_no_dedup", "out_dedup"):  # a kept --workdir from an earlier run
            shutil.rmtree(work / stale, ignore_errors=True)
        mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        print(f"generated {len(paths)} JPEGs {args.sizes} q{args.quality}, mean {mean_kb:.0f} KB, in {time.perf_counter() - t0:.1f}s")

        for p in paths:  # warm the page cache so every contender reads from memory
            p.read_bytes()
        if args.fixed_cost:
            return fixed_cost(paths, args.fixed_cost, args.resolution, args.master, work,
                              Path(args.img2dataset) if args.img2dataset else None, args.rounds)
        a = decode_ceiling(paths, max(2 * args.resolution, 32))  # the job decodes JPEGs to >= 2x the target
        b = bare_loop(paths, cfg)

        from pipelines import preprocess as job
        from pipelines.preprocess import run_preprocess
        from pipelines.spark import get_spark

        # Per-phase CPU: the job announces each phase through Progress.set_phase; the bench wraps it to
        # snapshot the process tree's CPU there (instrumentation only, the job's behaviour is unchanged).
        marks: list[tuple[str, dict[str, float]]] = []
        set_phase = job.Progress.set_phase

        def marking_set_phase(self, phase: str) -> None:
            marks.append((phase, tree_cpu_seconds()))
            set_phase(self, phase)

        job.Progress.set_phase = marking_set_phase

        spark = get_spark(args.master, app_name="imagegen-bench")
        # Untimed warm-up job: JVM JIT, Python workers and imports are up before timing (a long job
        # amortises them; a 2000-image benchmark would otherwise measure start-up). Measured on this VM:
        # the JVM's decode-stage CPU fell from ~2.4 (first job) to ~1.1 (after 64 warm-up images) to
        # ~0.5 ms/image (after a few thousand), as the JIT compiled the Arrow -> row -> Parquet path.
        warm = work / "warm"
        warm.mkdir()
        for p in paths[:args.warmup]:
            shutil.copy(p, warm / p.name)
        run_preprocess(spark, [str(warm)], str(work / "warm_out"), cfg, log=lambda s: None)
        n = len(paths)
        # (a)/(b) do no dedup, so the job runs both without it (like for like) and with it (the default).
        jobs = {}
        for name, job_cfg in (("no dedup", cfg.replace(dedup=False)), ("dedup", cfg)):
            marks.clear()
            t0, c0 = time.perf_counter(), tree_cpu_seconds()
            result = run_preprocess(spark, [str(work / "jpegs")], str(work / f"out_{name.replace(' ', '_')}"), job_cfg, log=lambda s: None)
            c1 = tree_cpu_seconds()
            wall, cpu = time.perf_counter() - t0, cpu_delta(c0, c1)
            ends = [c for _, c in marks[1:]] + [c1]
            phases = {ph: cpu_delta(c, e) for (ph, c), e in zip(marks, ends)}
            m = result.manifest
            kept = m.counts["written"] + sum(m.counts["duplicates"].values())
            if kept != n:
                raise SystemExit(f"job ({name}) wrote {m.counts['written']} + {m.counts['duplicates']} duplicates of {n} images")
            jobs[name] = (wall, cpu, m.timings, phases)
        spark.stop()

        print(f"\n{n} JPEGs, resolution {args.resolution}, Spark {args.master}, arrow_batch_rows {cfg.arrow_batch_rows}, "
              f"warm-up {min(args.warmup, n)} images, "
              f"partitions {cfg.partitions or 'default'}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"{'':52}{'img/s per core':>16}{'img per CPU-s':>15}")
        print(f"  (a) reduced-scale decode only, 1 process        {a[0]:16.0f}{a[1]:15.0f}")
        print(f"  (b) full per-image work, bare loop              {b[0]:16.0f}{b[1]:15.0f}")
        goal = {}
        for name, (wall, cpu, timings, phases) in jobs.items():
            c_decode = n / timings["decode"] / cores
            c_job = n / wall / cores
            c_cpu = n / sum(cpu.values())
            goal[name] = c_decode / a[0], c_job / a[0], c_cpu / a[1]
            print(f"  (c) job, {name:8}: decode stage ({timings['decode']:5.1f}s wall) {c_decode:16.0f}")
            print(f"  (c) job, {name:8}: end to end ({wall:5.1f}s wall)   {c_job:16.0f}{c_cpu:15.0f}")
            print(f"        CPU ms/image: workers {cpu['workers'] / n * 1e3:.2f}, JVM {cpu['jvm'] / n * 1e3:.2f}, "
                  f"driver {cpu['driver'] / n * 1e3:.2f};  timings {timings}")
            print("        by phase, CPU ms/image workers/JVM: " + ", ".join(
                f"{ph} {c['workers'] / n * 1e3:.2f}/{c['jvm'] / n * 1e3:.2f}" for ph, c in phases.items()))
        print(f"  (a) CPU ms/image {1e3 / a[1]:.2f}, (b) {1e3 / b[1]:.2f};  wall b/a = {b[0] / a[0]:.2f}, CPU b/a = {b[1] / a[1]:.2f}")
        for name, (dec, e2e, cpu_ratio) in goal.items():
            print(f"  c/a, {name:8}: wall {dec:.2f} (decode stage), {e2e:.2f} (end to end); CPU {cpu_ratio:.2f} (end to end)")
        dec, _, cpu_ratio = goal["no dedup"]
        print(f"  goal c/a >= 0.6 per core (no dedup, like for like): {'met' if dec >= 0.6 else 'NOT met'} by wall (decode stage), "
              f"{'met' if cpu_ratio >= 0.6 else 'NOT met'} by CPU (end to end)")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
