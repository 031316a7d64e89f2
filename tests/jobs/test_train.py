"""`imagegen train`: option parsing (defaults < YAML < flags), the console script end to end, and
`--launcher spark --num-proc 2` (horovod.spark.run on a local Spark session, real processes)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from jobs.train import config_from_args, main
from tests.training.test_dist import TINY_ARGS, check_probes
from training.config import Precision
from training.dist import Backend
from training.models import ModelKind

REPO = Path(__file__).resolve().parents[2]


def test_yaml_then_flags(tmp_path: Path) -> None:
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text("data: /d\nmodel: vae\nepochs: 3\nbatch_size: 32\nbeta_kl: 0.5\nprecision: bf16\n")
    cfg, _ = config_from_args(["--config", str(cfg_file), "--batch-size", "16", "--lr", "1e-3", "--backend", "single"])
    assert cfg.model == ModelKind.VAE and cfg.epochs == 3 and cfg.steps is None
    assert cfg.batch_size == 16 and cfg.beta_kl == 0.5 and cfg.precision == Precision.BF16  # flag beats YAML
    assert cfg.lr_g == cfg.lr_d == 1e-3 and cfg.backend == Backend.SINGLE
    cfg, _ = config_from_args(["--config", str(cfg_file), "--steps", "7"])  # --steps replaces the file's epochs
    assert cfg.steps == 7 and cfg.epochs is None
    cfg, _ = config_from_args(["--data", "/d", "--lr", "1e-3", "--lr-d", "4e-4"])
    assert (cfg.lr_g, cfg.lr_d, cfg.model) == (1e-3, 4e-4, ModelKind.DCGAN)


def test_bad_options_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--data OUT is required"):
        config_from_args(["--steps", "2"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: /d\nlearning_rate: 3\n")
    with pytest.raises(SystemExit, match="learning_rate"):
        config_from_args(["--config", str(bad)])
    with pytest.raises(SystemExit):  # argparse: mutually exclusive
        config_from_args(["--data", "/d", "--steps", "2", "--epochs", "1"])


def test_bad_inputs_exit_1_with_a_message(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    assert main(["--data", str(tmp_path / "nowhere"), "--steps", "1", "--backend", "single"]) == 1
    assert "no manifest" in capsys.readouterr().err
    args = ["--data", str(tiny_dataset), "--run-dir", str(tmp_path / "run"), "--backend", "single", "--steps", "1",
            "--base-channels", "8", "--z-dim", "8", "--batch-size", "8"]
    assert main([*args, "--resume", str(tmp_path / "missing.pt")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    assert main([*args, "--batch-size", "97"]) == 1  # 96 rows
    assert "97" in capsys.readouterr().err


def test_console_script_trains(tiny_dataset: Path, tmp_path: Path, venv_bin: Path, subprocess_env: dict) -> None:
    run = tmp_path / "run"
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(f"data: {tiny_dataset}\nmodel: dcgan\nbatch_size: 8\nbase_channels: 8\nz_dim: 16\nnum_samples: 4\n")
    proc = subprocess.run([str(venv_bin / "imagegen"), "train", "--config", str(cfg_file), "--run-dir", str(run), "--steps", "2"],
                          cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert '"steps": 2' in proc.stdout  # the config is printed
    assert json.loads((run / "config.json").read_text())["batch_size"] == 8
    assert (run / "checkpoints" / "ckpt-00000002.pt").is_file() and (run / "samples" / "samples-00000002.png").is_file()


@pytest.mark.slow
def test_spark_launcher_two_ranks(tiny_dataset: Path, tmp_path: Path, venv_bin: Path, subprocess_env: dict) -> None:
    run = tmp_path / "run"
    proc = subprocess.run(
        [str(venv_bin / "imagegen"), "train", "--launcher", "spark", "--num-proc", "2", "--data", str(tiny_dataset),
         "--run-dir", str(run), "--model", "dcgan", "--epochs", "1", *TINY_ARGS],
        cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    check_probes(run, tiny_dataset, world=2, batch=8, backend="horovod")
    assert "rank 1/2: step 6" in proc.stdout
    assert (run / "checkpoints" / "ckpt-00000006.pt").is_file()
