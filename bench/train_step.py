"""DCGAN 64x64 training throughput (images/s) on the current device, loader on vs off, and (on a GPU) the ratio
against a plain reference loop: the pytorch/examples DCGAN recipe (fp32, BatchNorm D, BCE, no channels_last).

    python bench/train_step.py                       # CPU defaults: batch 64, few steps
    python bench/train_step.py --batch-size 128 --steps 100 --precisions fp32,bf16   # on a GPU

What is timed (after --warmup steps, CUDA synchronised at both ends):
  loader on   next batch from training.data (arrow reader, real Parquet of random 64x64 RGB rows) -> device ->
              to_model_input -> one full training step of training.loop (D step, G step, EMA)
  loader off  the same step on one batch already on the device (pure compute)
  loader only the loader alone: next batch -> device -> to_model_input, no training (its cost per step)
  on and off alternate in --rounds rounds; the median of each is reported
  reference   pytorch/examples dcgan main.py step on the same on-device batch (fp32), same batch size
Images/s counts real images consumed by D per step (= batch size), the convention of both loops.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import IMAGES_ARROW, SCHEMA_VERSION, DatasetLayout, Manifest  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.loop import _Run, _step_generator  # noqa: E402


def write_random_dataset(root: Path, n: int, res: int = 64, rows_per_group: int = 1024) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, res * res * 3), dtype=np.uint8)
    ids = [f"{i:032x}" for i in range(n)]
    cols = {
        "image_id": ids, "source_uri": [f"file:/bench/{i}.png" for i in range(n)], "sha256": ids, "pixels_sha256": ids,
        "phash": np.arange(n, dtype=np.int64), "label": ["x"] * n, "label_index": np.zeros(n, np.int32),
        "orig_width": np.full(n, res, np.int32), "orig_height": np.full(n, res, np.int32), "orig_format": ["PNG"] * n,
        "orig_mode": ["RGB"] * n, "file_size": np.full(n, res * res * 3, np.int64), "width": np.full(n, res, np.int32),
        "height": np.full(n, res, np.int32), "channels": np.full(n, 3, np.int32), "pixel_encoding": ["raw"] * n,
        "pixels": pa.array([p.tobytes() for p in pixels], pa.binary()), "brightness": np.full(n, 127.5, np.float32),
        "contrast": np.full(n, 73.9, np.float32), "entropy": np.full(n, 8.0, np.float32), "run_id": ["bench"] * n,
    }
    table = pa.table(cols, schema=IMAGES_ARROW).drop(["run_id"])
    layout = DatasetLayout(str(root))
    part = Path(layout.images) / "run_id=bench"
    part.mkdir(parents=True)
    pq.write_table(table, part / "part-00000.parquet", row_group_size=rows_per_group)
    Path(layout.manifest).write_text(Manifest(
        schema_version=SCHEMA_VERSION, run_id="bench", resolution=res, channels=3, pixel_encoding="raw", classes=["x"],
        counts={"inputs": n, "written": n}, label_counts={"x": n}, pixel_mean=[0.5] * 3, pixel_std=[0.29] * 3,
        config={}, input_fingerprint="random", timings={}, versions={},
    ).to_json())
    return root


# ----------------------------------------------------------------------------- pytorch/examples dcgan (reference)
class RefG(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z):
        return self.main(z)


class RefD(nn.Module):
    def __init__(self, ndf: int = 64, nc: int = 3):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, x):
        return self.main(x).view(-1, 1).squeeze(1)


def reference_ips(x: torch.Tensor, steps: int, warmup: int) -> float:
    dev, b = x.device, x.shape[0]
    netG, netD = RefG().to(dev), RefD().to(dev)
    crit = nn.BCELoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ones, zeros = torch.ones(b, device=dev), torch.zeros(b, device=dev)

    def step() -> None:  # main.py's loop body, verbatim in structure
        netD.zero_grad()
        errD_real = crit(netD(x), ones)
        errD_real.backward()
        fake = netG(torch.randn(b, 100, 1, 1, device=dev))
        errD_fake = crit(netD(fake.detach()), zeros)
        errD_fake.backward()
        optD.step()
        netG.zero_grad()
        errG = crit(netD(fake), ones)
        errG.backward()
        optG.step()

    return _timed(step, steps, warmup, b, dev)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(step, steps: int, warmup: int, batch: int, dev: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    return steps * batch / (time.perf_counter() - t)


def ours_ips(data: Path, run_dir: Path, batch: int, steps: int, warmup: int, rounds: int, precision: str) -> dict[str, float]:
    cfg = TrainConfig(data=str(data), run_dir=str(run_dir), model="dcgan", steps=steps + warmup, batch_size=batch,
                      precision=precision, backend="single", base_channels=64, z_dim=100, sample_every=0, ckpt_every=0)
    run = _Run(cfg)
    dev = run.device
    epoch = [0]
    it = [iter(run.loader.epoch(0))]

    def next_batch():
        try:
            return next(it[0])
        except StopIteration:
            epoch[0] += 1
            it[0] = iter(run.loader.epoch(epoch[0]))
            return next(it[0])

    k = [0]

    def step_loader_on() -> None:
        x, _ = run._input(next_batch())
        run.gan_step(x, None, _step_generator(0, 0, k[0], dev))
        k[0] += 1

    x0, _ = run._input(next_batch())

    def step_loader_off() -> None:
        run.gan_step(x0, None, _step_generator(0, 0, k[0], dev))
        k[0] += 1

    def loader_only() -> None:
        run._input(next_batch())

    # Alternate on/off in rounds and keep the median, so a noisy shared machine hits both modes alike.
    _timed(step_loader_off, 0, warmup, batch, dev)
    on, off = [], []
    for _ in range(rounds):
        on.append(_timed(step_loader_on, steps, 0, batch, dev))
        off.append(_timed(step_loader_off, steps, 0, batch, dev))
    only = _timed(loader_only, max(steps, 20), 2, batch, dev)
    run.loader.close()
    return {"loader_on": float(np.median(on)), "loader_off": float(np.median(off)), "loader_only": only, "x0": x0}


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128 if cuda else 64)
    p.add_argument("--steps", type=int, default=100 if cuda else 4)
    p.add_argument("--warmup", type=int, default=10 if cuda else 1)
    p.add_argument("--rounds", type=int, default=3, help="alternating loader-on / loader-off rounds (median kept)")
    p.add_argument("--rows", type=int, default=20000 if cuda else 2048)
    p.add_argument("--precisions", default="fp32,bf16" if cuda else "fp32")
    p.add_argument("--reference", choices=["auto", "yes", "no"], default="auto", help="auto: on a GPU only")
    ns = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(0) if cuda else f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; batch {ns.batch_size}; {ns.steps} timed steps after {ns.warmup} warmup")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_random_dataset(Path(tmp) / "ds", ns.rows)
        x0 = None
        for prec in ns.precisions.split(","):
            r = ours_ips(data, Path(tmp) / f"run-{prec}", ns.batch_size, ns.steps, ns.warmup, ns.rounds, prec)
            x0 = r.pop("x0")
            for k, v in r.items():
                results[f"ours_{prec}_{k}"] = v
                print(f"  ours {prec:5s} {k:11s}: {v:10.1f} images/s")
            print(f"  ours {prec:5s} loader cost per step: {1000 * ns.batch_size / r['loader_only']:.1f} ms "
                  f"(train step {1000 * ns.batch_size / r['loader_off']:.1f} ms); on/off = {r['loader_on'] / r['loader_off']:.3f}")
        if ns.reference == "yes" or (ns.reference == "auto" and cuda):
            torch.manual_seed(0)
            ref = reference_ips(x0.float().contiguous(), ns.steps, ns.warmup)
            results["reference_fp32"] = ref
            print(f"  reference (pytorch/examples dcgan, fp32, no channels_last, data on device): {ref:10.1f} images/s")
            for prec in ns.precisions.split(","):
                for k in ("loader_off", "loader_on"):
                    ratio = results[f"ours_{prec}_{k}"] / ref
                    results[f"ratio_{prec}_{k}_vs_reference"] = ratio
                    print(f"  ratio ours {prec} {k} / reference: {ratio:.2f}x")
    print(json.dumps({"device": name, "batch": ns.batch_size, **{k: round(v, 3) for k, v in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
