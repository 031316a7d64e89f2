"""`imagegen demo`, small: raw files -> preprocess (Spark) -> train -> generate, in one process."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from jobs.demo import DemoConfig, run


def test_demo_runs_end_to_end(tmp_path, spark):
    summary = run(DemoConfig(out=str(tmp_path / "demo"), per_class=8, steps=4, vae_steps=4, batch_size=16, eval_samples=20), spark)
    manifest = json.loads(Path(summary["manifest"]).read_text())
    c = manifest["counts"]
    assert c["inputs"] == 80 + 10 + 4  # 8 digits x 10 classes, 10 planted duplicates, 4 broken files
    assert sum(c["rejected"].values()) == 4
    assert c["inputs"] == c["written"] + sum(c["rejected"].values()) + sum(c["duplicates"].values())
    assert sum(c["duplicates"].values()) >= 10  # the 10 planted copies (recall below), plus any false merges
    assert manifest["classes"] == [str(d) for d in range(10)]
    assert Path(summary["checkpoint"]).exists()
    assert float(summary["dedup_recall"]) == 1.0  # every planted byte copy and re-encode was caught
    assert 0.0 < float(summary["dedup_precision"]) <= 1.0
    reports = summary["reports"].split(", ")
    assert [Path(r).name for r in reports] == ["report.html"] * 3 and all(Path(r).stat().st_size > 10_000 for r in reports)
    assert "current v0001" in summary["registry"]
    assert "class accuracy" in summary["cdcgan"] and "nats" in summary["vae"]
    assert "FID" in summary["vae"] and "confidence" in summary["vae"]  # both models' numbers
    # the cdcgan trained under horovodrun with two ranks
    assert json.loads((Path(summary["run"]) / "config.json").read_text())["batch_size"] == 8
    from training import checkpoint

    assert checkpoint.load(summary["checkpoint"])["world_size"] == 2
    grid = Image.open(summary["samples"])  # one grid, a column per class: 10 columns x 8 rows of 32 px, 2 px padding
    assert grid.size == (10 * 34 + 2, 8 * 34 + 2)
    assert Image.open(summary["samples_vae"]).size == grid.size  # the VAE's grid beside it
