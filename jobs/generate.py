"""`imagegen generate`: images from a checkpoint (EMA generator for GANs, decoder for the VAE).

  imagegen generate --checkpoint RUN/checkpoints/ckpt-00001000.pt --num 64 --out grid.png [--label cat] [--seed 0]
  imagegen generate --checkpoint RUN --num 64 --out samples_dir/     (RUN: its newest valid checkpoint)

--out ending in .png writes one grid; anything else is a directory with one PNG per image.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from training import checkpoint, sample
from jobs.cliutil import Parser


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    checkpoint: str   # a checkpoint file, or a run directory (newest valid checkpoint in it)
    out: str          # DIR (one PNG per image) or FILE.png (one grid)
    num: int = 64
    label: str | None = None  # class name (or index) for every image: cdcgan (default: cycle through the classes),
                              # or a VAE trained on labels (default: its whole prior)
    seed: int = 0
    nrow: int | None = None   # grid columns (default: ~sqrt(num))

    def __post_init__(self) -> None:
        if self.num < 1:
            raise ValueError(f"--num must be >= 1, got {self.num}")


def run(config: GenerateConfig) -> list[Path]:
    path = Path(config.checkpoint)
    if path.is_dir():
        found = checkpoint.find_latest_valid(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no valid checkpoint under {checkpoint.checkpoint_dir(path)}")
        path = found[0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec, net, classes = sample.load_sampler(path, device)
    label = sample.resolve_label(config.label, classes) if config.label is not None else None
    images = sample.generate(net, spec, config.num, config.seed, label, device)
    out = Path(config.out)
    if out.suffix.lower() == ".png":
        return [sample.save_grid(images, out, config.nrow)]
    return sample.save_images(images, out)


def main(argv: list[str]) -> int:
    p = Parser(prog="imagegen generate", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--label", default=None, help="class name from the dataset (or its index); cdcgan, or a VAE trained on a labelled dataset")
    p.add_argument("--out", required=True, help="DIR for one PNG per image, or FILE.png for a grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nrow", type=int, default=None)
    ns = p.parse_args(argv)
    config = GenerateConfig(**vars(ns))
    print(json.dumps(dataclasses.asdict(config), indent=2), flush=True)
    try:
        written = run(config)
    except (checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"imagegen generate: {e}", file=sys.stderr)
        return 1
    print(f"[generate] wrote {len(written)} file(s): {written[0]}{' ...' if len(written) > 1 else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
