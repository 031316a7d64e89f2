"""The training loop in one process (backend single) on the tiny Parquet dataset: every model trains and writes
its outputs; mixed precision / channels_last paths run on CPU; resume is exact; bad resumes fail clearly."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.training.conftest import write_digits_dataset
from training import checkpoint
from training.config import TrainConfig
from training.loop import train

TINY = dict(batch_size=8, base_channels=8, z_dim=16, num_samples=16, backend="single")


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _ckpt(run: Path, step: int) -> dict:
    return checkpoint.load(checkpoint.path_for(run, step))


@pytest.mark.parametrize("model", ["dcgan", "cdcgan", "vae"])
def test_each_model_trains_and_writes_outputs(tiny_dataset: Path, tmp_path: Path, model: str) -> None:
    run = tmp_path / "run"
    cfg = TrainConfig(data=str(tiny_dataset), run_dir=str(run), model=model, steps=3, log_every=1, ckpt_every=1,
                      keep_ckpts=0, sample_every=2, **TINY)
    result = train(cfg)
    assert (result.step, result.epoch, result.step_in_epoch) == (3, 0, 3)
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict()

    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    loss_keys = ["loss_d", "loss_g"] if model != "vae" else ["loss", "recon", "kl"]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in loss_keys), r
        assert r["images_per_s"] > 0 and r["step_time_s"] > 0 and r["global_batch"] == 8
    if model == "vae":  # ELBO terms reported separately; loss = recon + beta * kl (beta 1)
        assert rows[-1]["loss"] == pytest.approx(rows[-1]["recon"] + rows[-1]["kl"], rel=1e-5)
    assert list((run / "tb").glob("events.out.tfevents.*"))

    # parameters change between step 1 and step 3 for every trained network; optimizer state is saved
    first, last = _ckpt(run, 1), _ckpt(run, 3)
    trained = ["G", "D"] if model != "vae" else ["V"]
    for name in trained:
        changed = [k for k, v in last["models"][name].items() if v.is_floating_point() and not torch.equal(v, first["models"][name][k])]
        assert changed, f"{name} did not change"
        assert last["optimizers"][name]["state"], f"no optimizer state for {name}"
    if model != "vae":  # the EMA generator trails G
        ema, g = last["models"]["G_ema"], last["models"]["G"]
        assert any(not torch.equal(ema[k], g[k]) for k in g if g[k].is_floating_point())
    assert last["step"] == 3 and last["manifest_id"] and last["config"] == cfg.to_dict()

    for step in (2, 3):  # samples every 2 steps and at the end: a 4x4 grid of 32px images, 2px padding
        grid = Image.open(run / "samples" / f"samples-{step:08d}.png")
        assert grid.size == (4 * 34 + 2, 4 * 34 + 2)
        if model == "vae":
            assert (run / "samples" / f"recon-{step:08d}.png").is_file()
    assert not (run / "samples" / "samples-00000001.png").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_channels_last_hinge_on_cpu(tiny_dataset: Path, tmp_path: Path, precision: str) -> None:
    cfg = TrainConfig(data=str(tiny_dataset), run_dir=str(tmp_path / "run"), model="cdcgan", steps=2, precision=precision,
                      channels_last=True, gan_loss="hinge", log_every=1, **TINY)
    result = train(cfg)
    assert all(math.isfinite(result.metrics[k]) for k in ("loss_d", "loss_g"))
    scaler = checkpoint.load(result.checkpoint)["scaler"]
    assert bool(scaler) == (precision == "fp16")  # fp16 uses (and checkpoints) a GradScaler, bf16 none


def test_resume_is_exact(tiny_dataset: Path, tmp_path: Path) -> None:
    """2K steps in one go == K steps, stop, resume K more: same steps, same data order, bitwise-equal state.
    Batch 16 on 96 rows is 6 steps/epoch, so K=4 resumes mid-epoch and the run crosses an epoch boundary."""
    common = dict(data=str(tiny_dataset), model="cdcgan", ckpt_every=4, sample_every=0, log_every=1, deterministic=True,
                  debug_probe=True, **(TINY | {"batch_size": 16}))
    a = train(TrainConfig(run_dir=str(tmp_path / "a"), steps=8, **common))
    ids_a = json.loads((tmp_path / "a" / "probe" / "rank-0.json").read_text())["ids"]

    b1 = train(TrainConfig(run_dir=str(tmp_path / "b"), steps=4, **common))
    ids_b = json.loads((tmp_path / "b" / "probe" / "rank-0.json").read_text())["ids"]
    b2 = train(TrainConfig(run_dir=str(tmp_path / "b"), steps=8, resume="auto", **common))
    ids_b += json.loads((tmp_path / "b" / "probe" / "rank-0.json").read_text())["ids"]

    assert b1.step == 4 and b2.resumed_from == str(checkpoint.path_for(tmp_path / "b", 4))
    assert (a.step, a.epoch, a.step_in_epoch) == (b2.step, b2.epoch, b2.step_in_epoch) == (8, 1, 2)
    assert len(ids_a) == 8 * 16 and ids_a == ids_b
    ca, cb = checkpoint.load(a.checkpoint), checkpoint.load(b2.checkpoint)
    for name in ("G", "D", "G_ema"):
        for k, v in ca["models"][name].items():
            assert torch.equal(v, cb["models"][name][k]), f"{name}.{k} differs after resume"
    for name in ("G", "D"):
        for pid, st in ca["optimizers"][name]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, cb["optimizers"][name]["state"][pid][k])
    assert [r["step"] for r in _rows(tmp_path / "b")] == list(range(1, 9))
    assert _rows(tmp_path / "b")[-1]["loss_d"] == _rows(tmp_path / "a")[-1]["loss_d"]


def test_auto_resume_skips_a_corrupt_newest_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = dict(data=str(tiny_dataset), run_dir=str(run), model="dcgan", ckpt_every=2, keep_ckpts=0, sample_every=0, **TINY)
    train(TrainConfig(steps=4, **common))
    newest = checkpoint.path_for(run, 4)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x55
    newest.write_bytes(bytes(data))
    result = train(TrainConfig(steps=5, resume="auto", **common))
    assert result.resumed_from == str(checkpoint.path_for(run, 2))
    assert result.step == 5 and checkpoint.load(result.checkpoint)["step"] == 5


def test_resume_none_refuses_a_run_dir_with_checkpoints(tiny_dataset: Path, tmp_path: Path) -> None:
    common = dict(data=str(tiny_dataset), run_dir=str(tmp_path / "run"), model="vae", sample_every=0, **TINY)
    train(TrainConfig(steps=1, **common))
    with pytest.raises(FileExistsError, match="--resume auto"):
        train(TrainConfig(steps=2, **common))


def test_resume_on_another_dataset_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    common = dict(run_dir=str(tmp_path / "run"), model="vae", sample_every=0, **TINY)
    first = train(TrainConfig(data=str(tiny_dataset), steps=1, **common))
    other = write_digits_dataset(tmp_path / "other", n=48)
    with pytest.raises(ValueError, match="manifest"):
        train(TrainConfig(data=str(other), steps=2, resume=first.checkpoint, **common))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(data="x", steps=2, epochs=1)
    with pytest.raises(ValueError, match="'gan'"):
        TrainConfig(data="x", model="gan")
    cfg = TrainConfig(data="x", model="vae", precision="bf16")
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"data": "x", "learning_rate": 1})


def test_petastorm_reader_trains(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data=str(tiny_dataset), run_dir=str(tmp_path / "run"), model="vae", reader="petastorm", steps=2,
                      sample_every=0, log_every=1, **TINY)
    result = train(cfg)
    assert result.step == 2 and all(math.isfinite(result.metrics[k]) for k in ("loss", "recon", "kl"))
