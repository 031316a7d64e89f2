"""Images out of models: grids and per-image PNGs, and sampling from a loaded checkpoint."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training import checkpoint, models
from training.data import from_model_output


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8 (the inverse of training.data.to_model_input's [-1, 1] map)."""
    return from_model_output(images.detach().cpu()).permute(0, 2, 3, 1).numpy()


def _pil(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a[:, :, 0], "L") if a.shape[2] == 1 else Image.fromarray(a, "RGB")


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> one (rows*(H+pad)+pad, nrow*(W+pad)+pad, C) uint8 image, black padding."""
    a = to_uint8(images)
    b, h, w, c = a.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(b))))
    rows = int(math.ceil(b / nrow))
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = a[i]
    return grid


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    _pil(make_grid(images, nrow)).save(tmp)
    os.replace(tmp, path)
    return path


def save_images(images: torch.Tensor, directory: str | os.PathLike, prefix: str = "sample") -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i, a in enumerate(to_uint8(images)):
        p = directory / f"{prefix}-{i:05d}.png"
        _pil(a).save(p)
        out.append(p)
    return out


def resolve_label(label: str, classes: list[str]) -> int:
    """A class name from the dataset's manifest, or a class index, -> the class index."""
    if label in classes:
        return classes.index(label)
    if label.isdigit() and int(label) < len(classes):
        return int(label)
    raise ValueError(f"--label {label!r} is neither a class of this model {classes[:20]} nor an index below {len(classes)}")


def load_sampler(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[models.ModelSpec, torch.nn.Module, list[str]]:
    """The EMA generator (GANs) or the VAE of a checkpoint, in eval mode, on `device`, and the class names."""
    payload = checkpoint.load(path, map_location="cpu")
    spec_d = dict(payload["model_spec"])
    spec = models.ModelSpec(**{**spec_d, "kind": models.ModelKind(spec_d["kind"])})
    nets = models.build(spec)
    name = "V" if spec.kind == models.ModelKind.VAE else "G"
    key = "G_ema" if name == "G" and "G_ema" in payload["models"] else name
    net = nets[name]
    state = dict(payload["models"][key])
    if name == "V":  # checkpoints from before the calibrated decoder: the fixed sigma^2 = 1/2 they were trained with
        state.setdefault("log_sigma", net.state_dict()["log_sigma"])
    net.load_state_dict(state)
    classes = list(payload.get("classes", [str(i) for i in range(spec.num_classes)]))
    return spec, net.to(device).eval(), classes


def by_label(net: torch.nn.Module, spec: models.ModelSpec) -> bool:
    """Whether `net` samples by class: a cdcgan, or a VAE whose prior was fitted per class."""
    return spec.kind == models.ModelKind.CDCGAN or (isinstance(net, models.VAE) and net.prior.conditional)


@torch.no_grad()
def generate(net: torch.nn.Module, spec: models.ModelSpec, num: int, seed: int, label: int | None = None,
             device: torch.device | str = "cpu", batch: int = 256) -> torch.Tensor:
    """`num` images in [-1, 1] from latents drawn by a CPU generator seeded with `seed` (device-independent)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num, spec.z_dim, generator=g)
    labels = None
    if label is not None and not by_label(net, spec):
        raise ValueError(f"--label needs a class-conditional model (cdcgan, or a VAE whose prior was fitted on a "
                         f"labelled dataset); this checkpoint is a {spec.kind.value} without one")
    if label is not None and not 0 <= label < spec.num_classes:
        raise ValueError(f"label must be in [0, {spec.num_classes - 1}], got {label}")
    if label is not None:
        labels = torch.full((num,), label, dtype=torch.long)
    elif spec.kind == models.ModelKind.CDCGAN:
        labels = torch.arange(num) % spec.num_classes
    fn = net.generate if isinstance(net, models.VAE) else net
    out = []
    for i in range(0, num, batch):
        lab = labels[i:i + batch].to(device) if labels is not None else None
        out.append(fn(z[i:i + batch].to(device), lab).float().cpu())
    return torch.cat(out)
