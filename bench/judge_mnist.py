"""An MNIST judge that is not the project's evaluator: confidence and FID of a checkpoint's samples.

  .venv/bin/python bench/judge_mnist.py --checkpoint RUN [--num 1000] [--label-each] [--seed 0] [--work DIR]

A small CNN of its own (two conv blocks, 99%+ on MNIST's test split), trained here on MNIST train digits
20,000..49,999 (bench/quality_mnist.sh trains the models on the first 10,000, evaluate's domain network uses the
test split) at 32 px, cached in WORK. Then:
  - `imagegen generate`-equivalent samples (training.sample.generate: the checkpoint's own sampler, i.e. the EMA
    generator or the VAE's fitted prior), `--num` of them, one seed;
  - mean confidence: the judge's largest class probability, averaged (strokes between digits score low);
  - FID in the judge's 128-d penultimate features against 1,000 real test digits, with the real floor
    (1,000 other test digits) and two broken references (the same digits blurred, and noise) on the same scale;
  - `--label-each`: num/10 samples per class asked by label, and the judge's accuracy on the asked label.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn

from jobs.corpus import load_mnist
from training import sample
from training.evaluate import fid


def _to32(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 32, 32) in [0, 1], resized like the preprocess job (PIL bicubic)."""
    out = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.Resampling.BICUBIC)) for im in images])
    return torch.from_numpy(out).float().div(255.0)[:, None]


class Judge(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 8 * 8, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body((x - 0.13) / 0.31)
        return f, self.head(f)


def train_judge(path: Path) -> Judge:
    judge = Judge()
    if path.is_file():
        judge.load_state_dict(torch.load(path, weights_only=True))
        return judge.eval()
    images, labels = load_mnist("train")
    x, y = _to32(images[20_000:]), torch.from_numpy(labels[20_000:])
    opt = torch.optim.Adam(judge.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for _ in range(2):
        for idx in torch.randperm(len(x), generator=gen).split(128):
            loss = nn.functional.cross_entropy(judge(x[idx])[1], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(judge.state_dict(), path)
    return judge.eval()


@torch.no_grad()
def score(judge: Judge, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    feats, probs = [], []
    for chunk in x.split(500):
        f, logits = judge(chunk)
        feats.append(f)
        probs.append(logits.softmax(1))
    return torch.cat(feats), torch.cat(probs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-each", action="store_true")
    p.add_argument("--work", default="/tmp/imagegen-judge")
    a = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    judge = train_judge(Path(a.work) / "judge.pt")
    test_x, test_y = load_mnist("test")
    real = _to32(test_x)
    rf, rp = score(judge, real)
    judge_acc = float((rp.argmax(1) == torch.from_numpy(test_y)).double().mean())

    ckpt = Path(a.checkpoint)
    if ckpt.is_dir():
        from training import checkpoint

        ckpt = checkpoint.find_latest_valid(ckpt)[0]
    spec, net, _ = sample.load_sampler(ckpt)
    if a.label_each:
        per = a.num // 10
        imgs = torch.cat([sample.generate(net, spec, per, a.seed + c, c) for c in range(10)])
        asked = torch.arange(10).repeat_interleave(per)
    else:
        imgs, asked = sample.generate(net, spec, a.num, a.seed), None
    x = ((imgs.float().clamp(-1, 1) + 1) / 2).mean(1, keepdim=True)  # [-1, 1] -> [0, 1], grey
    x = (x * 255).round() / 255  # as the PNG a user gets
    gf, gp = score(judge, x)
    blurred = torch.stack([torch.from_numpy(np.asarray(Image.fromarray((im[0].numpy() * 255).astype(np.uint8))
                                                      .filter(ImageFilter.GaussianBlur(1.0)))).float() / 255
                           for im in real[1000:2000]])[:, None]
    noise = torch.rand(1000, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    out = {
        "checkpoint": str(ckpt), "model": spec.kind.value, "samples": int(len(x)), "seed": a.seed,
        "judge": {"trained_on": "MNIST train[20000:50000], 32 px, 2 epochs", "test_accuracy": judge_acc},
        "mean_confidence": float(gp.max(1).values.mean()),
        "mean_confidence_real": float(rp[:1000].max(1).values.mean()),
        "fid": fid(rf[:1000], gf),
        "fid_real_floor": fid(rf[:1000], rf[1000:2000]),
        "fid_blur1": fid(rf[:1000], score(judge, blurred)[0]),
        "fid_noise": fid(rf[:1000], score(judge, noise)[0]),
    }
    if asked is not None:
        out["label_accuracy"] = float((gp.argmax(1) == asked).double().mean())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
