"""`imagegen generate` from real checkpoints: per-image PNGs, grids, labels, seeds, clear errors."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.generate import main
from training.config import TrainConfig
from training.loop import train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs(tiny_dataset: Path, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for model in ("cdcgan", "vae", "dcgan"):
        run = tmp_path_factory.mktemp(model)
        train(TrainConfig(data=str(tiny_dataset), run_dir=str(run), model=model, steps=2, batch_size=8, base_channels=8,
                          z_dim=16, num_samples=4, sample_every=0, backend="single"))
        out[model] = run
    return out


def test_directory_of_pngs_and_seed(runs: dict[str, Path], tmp_path: Path) -> None:
    ckpt = runs["cdcgan"] / "checkpoints" / "ckpt-00000002.pt"
    assert main(["--checkpoint", str(ckpt), "--num", "5", "--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main(["--checkpoint", str(runs["cdcgan"]), "--num", "5", "--out", str(tmp_path / "b"), "--seed", "3"]) == 0
    assert main(["--checkpoint", str(ckpt), "--num", "5", "--out", str(tmp_path / "c"), "--seed", "4"]) == 0
    files = sorted((tmp_path / "a").glob("*.png"))
    assert len(files) == 5
    imgs = {d: [np.asarray(Image.open(tmp_path / d / f.name)) for f in files] for d in "abc"}
    assert imgs["a"][0].shape == (32, 32) and imgs["a"][0].dtype == np.uint8  # grey digits: 1 channel, PNG mode L
    assert all(np.array_equal(x, y) for x, y in zip(imgs["a"], imgs["b"]))  # run dir -> its newest checkpoint
    assert not all(np.array_equal(x, y) for x, y in zip(imgs["a"], imgs["c"]))  # another seed, other images


def test_grid_and_label(runs: dict[str, Path], tmp_path: Path) -> None:
    assert main(["--checkpoint", str(runs["cdcgan"]), "--num", "6", "--label", "3", "--nrow", "3", "--out", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size == (3 * 34 + 2, 2 * 34 + 2)
    assert main(["--checkpoint", str(runs["cdcgan"]), "--num", "1", "--label", "3", "--out", str(tmp_path / "l3")]) == 0
    assert main(["--checkpoint", str(runs["cdcgan"]), "--num", "1", "--label", "7", "--out", str(tmp_path / "l7")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / d / "sample-00000.png")) for d in ("l3", "l7"))
    assert not np.array_equal(a, b)  # same latent (seed 0), different class


def test_errors(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert main(["--checkpoint", str(runs["dcgan"]), "--num", "2", "--label", "1", "--out", str(tmp_path / "x")]) == 1
    assert "needs a class-conditional model" in capsys.readouterr().err
    assert main(["--checkpoint", str(runs["vae"]), "--num", "2", "--label", "1", "--out", str(tmp_path / "v")]) == 0  # prior per class
    assert len(list((tmp_path / "v").glob("*.png"))) == 2
    assert main(["--checkpoint", str(runs["vae"]), "--num", "2", "--label", "10", "--out", str(tmp_path / "x")]) == 1
    assert "nor an index below 10" in capsys.readouterr().err
    assert main(["--checkpoint", str(runs["cdcgan"]), "--num", "2", "--label", "10", "--out", str(tmp_path / "x")]) == 1
    assert "nor an index below 10" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path), "--num", "2", "--out", str(tmp_path / "x")]) == 1
    assert "no valid checkpoint" in capsys.readouterr().err


def test_console_script_vae_grid(runs: dict[str, Path], tmp_path: Path, venv_bin: Path, subprocess_env: dict) -> None:
    proc = subprocess.run([str(venv_bin / "imagegen"), "generate", "--checkpoint", str(runs["vae"]), "--num", "4",
                           "--out", str(tmp_path / "v.png")], cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Image.open(tmp_path / "v.png").size == (2 * 34 + 2, 2 * 34 + 2)


def test_labels_resolve_by_name_or_index():
    from training.sample import resolve_label

    assert resolve_label("dog", ["cat", "dog"]) == 1
    assert resolve_label("1", ["cat", "dog"]) == 1
    assert resolve_label("7", [str(d) for d in range(10)]) == 7  # a name that is also an index means the name
    assert resolve_label("3", ["3", "1", "2"]) == 0
    with pytest.raises(ValueError, match="neither a class"):
        resolve_label("bird", ["cat", "dog"])
    with pytest.raises(ValueError, match="index below 2"):
        resolve_label("2", ["cat", "dog"])
