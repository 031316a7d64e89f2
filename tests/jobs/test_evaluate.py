"""`imagegen evaluate` end to end on checkpoints of short real training runs over the tiny digits dataset (made by
the real preprocess job): JSON written, numbers finite, caches reused, and the same numbers from
`horovodrun -np 2 -H localhost:2 --gloo` as from one process."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from jobs.evaluate import main
from training.config import TrainConfig
from training.loop import train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: two OpenMP threads on 2 shared cores ran up to 18x slower next to a busy neighbour."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def runs(tiny_dataset: Path, tmp_path_factory) -> dict[str, Path]:
    """A private copy of the dataset (evaluate writes OUT/_features/) and two trained runs."""
    root = tmp_path_factory.mktemp("evaluate")
    ds = root / "ds"
    shutil.copytree(tiny_dataset, ds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {"data": ds}
        for model, steps in (("cdcgan", 20), ("vae", 4)):
            out[model] = root / model
            train(TrainConfig(data=str(ds), run_dir=str(out[model]), model=model, steps=steps, batch_size=8, base_channels=8,
                              z_dim=16, num_samples=4, sample_every=0, log_every=0, backend="single"))
    finally:
        torch.set_num_threads(threads)
    return out


def _finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def test_cdcgan_end_to_end_then_from_cache(runs, capsys):
    args = ["--checkpoint", str(runs["cdcgan"]), "--data", str(runs["data"]), "--num-samples", "36", "--no-progress"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "fid" in table and "class accuracy" in table
    path = runs["cdcgan"] / "ckpt-00000020.metrics.json"
    res = json.loads(path.read_text())
    assert res["model"] == "cdcgan" and res["step"] == 20 and res["num_samples"] == 36 and res["same_dataset"]
    assert _finite(res)
    ex = res["extractor"]
    assert ex["kind"] == "domain-classifier" and ex["seed"] == 0 and 0.0 <= ex["heldout_accuracy"] <= 1.0
    seen = res["domain_network"]["trained_on"]
    assert Path(ex["cache"]) == runs["data"] / "_features" / f"{res['data_manifest_id']}-domain-classifier-0-{seen['ids_sha256_12']}.pt"
    assert Path(ex["cache"]).is_file() and Path(res["reference"]["cache"]).is_file() and not ex["cached"]
    m = res["metrics"]
    assert set(m) == {"fid", "kid", "precision", "recall", "coverage"}
    assert m["fid"]["value"] > m["fid"]["real_floor"] >= 0.0  # 20 steps are far from the data
    cond = res["conditional"]
    assert 0.0 <= cond["class_accuracy"]["value"] <= 1.0 and cond["class_accuracy"]["real_floor"] == ex["heldout_accuracy"]
    assert sorted(cond["per_class"]) == [str(d) for d in range(10)]
    assert sum(c["n"] for c in cond["per_class"].values()) == 36
    # Second run: the domain network and the reference features come from the cache; same numbers.
    assert main(args + ["--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["extractor"]["cached"] and again["reference"]["cached"]
    assert again["metrics"] == res["metrics"] and again["conditional"] == res["conditional"]


def test_the_domain_network_never_trains_on_the_reference_rows(runs, tmp_path, capsys):
    """E, the rows the judge trains on, and A + B, the rows it judges against, are disjoint by image id; the JSON
    names E; with --features-from a dataset holding the same images, the overlap is counted, not assumed."""
    from training.features import read_pool

    args = ["--checkpoint", str(runs["cdcgan"]), "--data", str(runs["data"]), "--num-samples", "30", "--no-progress", "--json"]
    assert main(args + ["--out", str(tmp_path / "split.json")]) == 0
    res = json.loads(capsys.readouterr().out)
    n, seen = res["num_samples"], res["domain_network"]["trained_on"]
    pool = read_pool(str(runs["data"]), 20000, 0)
    assert len(set(pool.ids)) == len(pool.ids) == pool.images.shape[0] == pool.num_rows  # one id per row
    reference, extractor = set(pool.ids[:2 * n]), pool.rows(2 * n)
    assert not reference & set(extractor.ids) and seen["reference_rows_overlap"] == 0
    assert seen["rows"] == pool.images.shape[0] - 2 * n >= 0.2 * pool.images.shape[0]
    assert seen["ids_sha256_12"] == extractor.ids_digest() and seen["data"] == str(runs["data"])

    same = tmp_path / "same"  # the same images under another root: every reference row is also a training row
    shutil.copytree(runs["data"], same, ignore=shutil.ignore_patterns("_features"))
    assert main(args + ["--features-from", str(same), "--out", str(tmp_path / "from.json")]) == 0
    other = json.loads(capsys.readouterr().out)
    assert other["domain_network"]["trained_on"]["data"] == str(same)
    assert other["domain_network"]["trained_on"]["reference_rows_overlap"] == 2 * other["num_samples"]


def test_vae_elbo_end_to_end(runs, tmp_path):
    out = tmp_path / "vae.json"
    assert main(["--checkpoint", str(runs["vae"]), "--data", str(runs["data"]), "--num-samples", "30", "--out", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    v = res["vae"]
    assert _finite(res) and v["dims"] in (32 * 32, 32 * 32 * 3)  # 32 px, grey or RGB
    assert v["elbo_nats"] < 0 and v["bits_per_dim"] > 0 and v["recon_mse"] > 0 and v["kl_nats"] >= 0
    assert res["metrics"]["fid"]["real_floor"] >= 0
    # trained on labels, its prior is fitted per class (training/prior.py): scored like a conditional model
    assert 0 <= res["conditional"]["class_accuracy"]["value"] <= 1


def test_inception_without_weights_is_one_line(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    rc = main(["--checkpoint", str(runs["cdcgan"]), "--data", str(runs["data"]), "--features", "inception"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith("imagegen evaluate: --features inception needs Inception weights: pass --inception-weights FILE")


@pytest.mark.slow
def test_horovodrun_two_ranks_gives_the_one_process_numbers(runs, tmp_path, venv_bin, subprocess_env):
    # Seed 7: a cold cache, so the 2-rank run trains the domain network on rank 0 and splits the real features too.
    common = ["evaluate", "--checkpoint", str(runs["cdcgan"]), "--data", str(runs["data"]), "--num-samples", "40",
              "--seed", "7", "--batch-size", "16", "--no-progress"]
    env = {**subprocess_env, "OMP_NUM_THREADS": "1"}
    hvd = subprocess.run([str(venv_bin / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", str(venv_bin / "imagegen"),
                          *common, "--out", str(tmp_path / "hvd.json")], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert hvd.returncode == 0, hvd.stdout[-3000:] + hvd.stderr[-3000:]
    two = json.loads((tmp_path / "hvd.json").read_text())
    assert two["world_size"] == 2 and not two["extractor"]["cached"] and not two["reference"]["cached"]
    one_rc = main(common[1:] + ["--out", str(tmp_path / "one.json")])
    assert one_rc == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["world_size"] == 1 and one["extractor"]["cached"] and one["reference"]["cached"]
    for name, m in two["metrics"].items():
        for key, v in m.items():
            assert v == pytest.approx(one["metrics"][name][key], rel=1e-5, abs=1e-9), (name, key)
    assert two["conditional"]["class_accuracy"] == one["conditional"]["class_accuracy"]
    assert os.path.isfile(two["extractor"]["cache"])
