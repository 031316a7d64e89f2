"""The training loop in one process (backend single) on the tiny Parquet dataset: every model trains and writes
its outputs; mixed precision / channels_last paths run on CPU; resume is exact; bad resumes fail clearly."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.training.conftest import write_digits_dataset
from training import checkpoint
from training.config import TrainConfig
from training.loop import ema_decay_at, phases_for, train, truncate_metrics

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


def test_defaults_are_the_measured_recipe(tiny_dataset: Path, tmp_path: Path) -> None:
    """The defaults docs/quality.md measured: hinge, lazy R1 every 16 steps, minibatch stddev in D, mode seeking in G,
    TTUR Adam (G 1e-4, D 4e-4, betas (0, 0.99)), EMA with warm-up, width 32, and the loop really runs those phases."""
    cfg = TrainConfig(data="x")
    assert (cfg.gan_loss.value, cfg.r1_gamma, cfg.r1_every, cfg.mbstd_group, cfg.ms_weight) == ("hinge", 0.1, 16, 4, 0.1)
    assert (cfg.lr_g, cfg.lr_d, cfg.beta1, cfg.beta2, cfg.ema_decay, cfg.base_channels) == (1e-4, 4e-4, 0.0, 0.99, 0.999, 32)
    assert cfg.lr_vae == 1e-3 and cfg.latent_dim == 100 and dataclasses.replace(cfg, model="vae").latent_dim == 16
    assert [(p.name, p.opt, p.interval) for p in phases_for(cfg)] == [("D", "D", 1), ("Dreg", "D", 16), ("G", "G", 1)]
    assert [p.name for p in phases_for(dataclasses.replace(cfg, r1_gamma=0.0))] == ["D", "G"]
    assert [p.name for p in phases_for(dataclasses.replace(cfg, model="vae"))] == ["V"]
    assert ema_decay_at(cfg, 0) == pytest.approx(0.1) and ema_decay_at(cfg, 10**6) == 0.999

    run = tmp_path / "run"
    result = train(TrainConfig(data=str(tiny_dataset), run_dir=str(run), model="cdcgan", steps=17, log_every=16,
                               sample_every=0, **TINY))
    rows = _rows(run)
    assert [r["step"] for r in rows] == [16, 17]
    assert "r1" in rows[0] and rows[0]["r1"] > 0  # step 0 is a regularisation step
    assert "r1" in rows[1]  # ... and step 16
    assert rows[0]["lr_D"] == pytest.approx(4e-4 * 16 / 17)  # lazy regularisation adjusts D's Adam (StyleGAN2)
    assert rows[0]["lr_G"] == pytest.approx(1e-4) and rows[0]["ms"] > 0
    ck = checkpoint.load(result.checkpoint)
    assert ck["model_spec"]["mbstd_group"] == 4
    assert ck["optimizers"]["D"]["param_groups"][0]["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    assert ck["optimizers"]["G"]["param_groups"][0]["betas"] == [0.0, 0.99] or ck["optimizers"]["G"]["param_groups"][0]["betas"] == (0.0, 0.99)
    # The EMA generator's BatchNorm statistics are its own (standing statistics), not a copy of G's.
    ema, g = ck["models"]["G_ema"], ck["models"]["G"]
    assert not torch.equal(ema["net.1.running_mean"], g["net.1.running_mean"])


def test_metrics_are_interval_means(tiny_dataset: Path, tmp_path: Path) -> None:
    """A row is the mean of its interval's steps (EDM training_stats), not the last step: the same seeded run logged
    every step and every 3 steps gives rows that are the means of the per-step rows."""
    common = dict(data=str(tiny_dataset), model="vae", steps=6, sample_every=0, deterministic=True, **TINY)
    train(TrainConfig(run_dir=str(tmp_path / "every"), log_every=1, **common))
    result = train(TrainConfig(run_dir=str(tmp_path / "three"), log_every=3, **common))
    every, three = _rows(tmp_path / "every"), _rows(tmp_path / "three")
    assert [r["step"] for r in three] == [3, 6] and all(r["steps"] == 3 for r in three)
    for i, row in enumerate(three):
        for k in ("loss", "recon", "kl", "sigma"):
            assert row[k] == pytest.approx(sum(r[k] for r in every[3 * i:3 * i + 3]) / 3, rel=1e-9), k
    assert three[-1]["loss"] != every[-1]["loss"]
    assert result.metrics["loss"] == three[-1]["loss"]


def test_progress_line_shows_step_losses_rate_and_eta(tiny_dataset: Path, tmp_path: Path, capfd) -> None:
    train(TrainConfig(data=str(tiny_dataset), run_dir=str(tmp_path / "run"), model="dcgan", steps=4, log_every=2,
                      sample_every=0, progress=True, **TINY))
    err = capfd.readouterr().err
    assert "4/4" in err and "loss_d=" in err and "loss_g=" in err and "img/s=" in err
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", err)  # tqdm's [elapsed<remaining]: the ETA
    train(TrainConfig(data=str(tiny_dataset), run_dir=str(tmp_path / "quiet"), model="dcgan", steps=2, sample_every=0,
                      progress=False, **TINY))
    assert "loss_d=" not in capfd.readouterr().err


def test_resume_does_not_repeat_metric_rows(tiny_dataset: Path, tmp_path: Path) -> None:
    """A run that logged past its last checkpoint and died: the resumed run rewrites those rows, once each."""
    run = tmp_path / "run"
    common = dict(data=str(tiny_dataset), run_dir=str(run), model="dcgan", ckpt_every=2, keep_ckpts=0, sample_every=0,
                  log_every=1, **TINY)
    train(TrainConfig(steps=4, **common))
    checkpoint.path_for(run, 4).unlink()  # as if it died after logging step 4 but before its checkpoint
    checkpoint.path_for(run, 4).with_name(checkpoint.path_for(run, 4).name + ".sha256").unlink(missing_ok=True)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss_d"')  # and a torn last line
    result = train(TrainConfig(steps=6, resume="auto", **common))
    assert result.resumed_from == str(checkpoint.path_for(run, 2))
    assert [r["step"] for r in _rows(run)] == [1, 2, 3, 4, 5, 6]
    assert truncate_metrics(run / "metrics.jsonl", 6) == 0


def test_resume_auto_refuses_when_every_checkpoint_is_invalid_and_fresh_starts_over(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = dict(data=str(tiny_dataset), run_dir=str(run), model="vae", ckpt_every=1, keep_ckpts=0, sample_every=0, **TINY)
    train(TrainConfig(steps=2, **common))
    for step in (1, 2):
        p = checkpoint.path_for(run, step)
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match="none of the 2 checkpoint"):
        train(TrainConfig(steps=3, resume="auto", **common))
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.pt")) == ["ckpt-00000001.pt", "ckpt-00000002.pt"]
    result = train(TrainConfig(steps=2, resume="fresh", **common))
    assert result.resumed_from is None and result.step == 2
    assert checkpoint.load(result.checkpoint)["step"] == 2 and Path(result.checkpoint).exists()
    assert len(list((run / "checkpoints").glob("replaced-*/ckpt-*.pt"))) == 2
