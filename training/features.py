"""Feature spaces for evaluating generators: a small domain network trained on the dataset, or Inception.

FID, KID and precision/recall are distances between two sets of *features*; the numbers only mean
something in a fixed feature space, so every result records which one (kind, cache path, training seed,
held-out quality).

- ``domain`` (default when no Inception weights are available): a small CNN trained on this dataset,
  once per (manifest id, seed), cached as a state_dict at ``OUT/_features/<manifest_id>-<kind>-<seed>.pt``
  and loaded with ``torch.load(weights_only=True)``. Labelled dataset: a classifier (``kind =
  domain-classifier``); its held-out accuracy is recorded and its logits score conditional generators.
  Unlabelled: a convolutional autoencoder (``kind = domain-autoencoder``); its held-out reconstruction
  MSE is recorded. Features = the 128-wide penultimate layer (after ReLU).
  Architecture: conv 3x3/2 (C -> 32) + ReLU, conv 3x3/2 (32 -> 64) + ReLU, adaptive average pool to
  4x4, linear 1024 -> 128 + ReLU (the features), then linear 128 -> classes (classifier) or a linear +
  two transposed convs back to (C, R, R) (autoencoder). About 1.4 M multiply-adds per 32 px image.
- ``inception``: the FID-standard InceptionV3 (pool3, 2048 features) of torch-fidelity as torchmetrics
  wraps it, from a local weights file only (``--inception-weights FILE`` or DEFAULT_INCEPTION_WEIGHTS).
  Nothing is ever downloaded: without the file this fails with one line.

Images enter as uint8 (B, C, H, W), as the loader hands them out; the domain network normalises them
with ``training.data.to_model_input`` (the project's one normalisation), Inception takes uint8 RGB.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data import LoaderConfig, open_loader, to_model_input

FEATURE_DIM = 128  # width of the domain network's penultimate layer
FORMAT = 2         # bump when the domain network or its training changes: old caches are then ignored
DEFAULT_INCEPTION_WEIGHTS = Path("~/.cache/imagegen/inception/pt_inception-2015-12-05.pth")


class FeatureKind(str, enum.Enum):
    AUTO = "auto"            # inception if a weights file is given or found at DEFAULT_INCEPTION_WEIGHTS, else domain
    INCEPTION = "inception"
    DOMAIN = "domain"


class FeatureError(RuntimeError):
    """A feature space that cannot be built (missing weights, missing package): one line for the user."""


# ----------------------------------------------------------------------------- the real-image pool
@dataclasses.dataclass(frozen=True)
class Pool:
    """Up to `max_rows` real images of a dataset in a seeded random order, in memory."""
    images: torch.Tensor          # uint8 (P, C, H, W), contiguous
    labels: torch.Tensor | None   # int64 (P,), -1 for rows without a label; None for an unlabelled dataset
    manifest_id: str
    classes: tuple[str, ...]
    num_rows: int                 # rows in the whole dataset
    ids: tuple[str, ...] = ()     # image_id per pool row
    data: str = ""                # the dataset it was read from

    def rows(self, lo: int, hi: int | None = None) -> "Pool":
        """Pool rows [lo, hi): the same dataset, a disjoint part of its sample."""
        return dataclasses.replace(self, images=self.images[lo:hi], labels=None if self.labels is None else self.labels[lo:hi],
                                   ids=self.ids[lo:hi])

    def ids_digest(self) -> str:
        """12 hex digits naming this set of rows (sha256 of the sorted image ids)."""
        return hashlib.sha256("\n".join(sorted(self.ids)).encode()).hexdigest()[:12]


def read_pool(data: str, max_rows: int, seed: int) -> Pool:
    """The same rows in the same order on every rank and every run with this seed, through training.data's loader.

    The loader drops the last N mod B rows of an epoch; when the whole dataset fits, B is the largest divisor
    of N up to 256 so nothing is dropped. A seeded permutation on top of the loader's own (row-group windows)
    shuffle makes any prefix of the pool a uniform sample."""
    with open_loader(LoaderConfig(data=data, batch_size=1, seed=seed, shuffle=True)) as probe:
        n = probe.num_rows
    if n <= max_rows:
        batch = max(b for b in range(1, min(256, n) + 1) if n % b == 0)
    else:
        batch = 256
    imgs, labels, ids, got = [], [], [], 0
    with open_loader(LoaderConfig(data=data, batch_size=batch, seed=seed, shuffle=True, with_ids=True)) as loader:
        manifest = loader.manifest
        it = loader.epoch(0)
        try:
            for b in it:
                imgs.append(b.images.contiguous())
                ids += b.ids or []
                if b.labels is not None:
                    labels.append(b.labels)
                got += len(b)
                if got >= max_rows:
                    break
        finally:
            it.close()
    images = torch.cat(imgs)[:max_rows]
    lab = torch.cat(labels)[:max_rows] if labels else None
    perm = torch.from_numpy(np.random.default_rng([seed, 1]).permutation(images.shape[0]))
    ids = ids[:max_rows]
    return Pool(images[perm].contiguous(), None if lab is None else lab[perm], manifest.manifest_id,
                tuple(manifest.classes), n, tuple(ids[i] for i in perm.tolist()), data)


# ----------------------------------------------------------------------------- the domain network
class DomainNet(nn.Module):
    """Classifier (num_classes > 0) or autoencoder (num_classes == 0) on (C, R, R) images in [-1, 1]."""

    def __init__(self, channels: int, resolution: int, num_classes: int):
        super().__init__()
        self.channels, self.resolution, self.num_classes = channels, resolution, num_classes
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, 2, 1), nn.ReLU(inplace=True),   # (32, R/2, R/2)
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(inplace=True),         # (64, R/4, R/4)
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),                     # 1024
            nn.Linear(64 * 16, FEATURE_DIM), nn.ReLU(inplace=True),    # the features
        )
        # Features are body(x) * feature_scale, a scalar fixed after training so that the mean square feature on the
        # train split is 1 (raw ReLU activations run to hundreds, which puts FID in the 1e4s and KID's cubic kernel
        # in the 1e6s). Part of the state_dict, so a cached network gives the same feature space.
        self.register_buffer("feature_scale", torch.ones(()))
        if num_classes > 0:
            self.head = nn.Linear(FEATURE_DIM, num_classes)
        else:  # 128 -> (64, R/4, R/4) -> (32, R/2, R/2) -> (C, R, R) in [-1, 1]
            q = resolution // 4
            self.head = nn.Sequential(
                nn.Linear(FEATURE_DIM, 64 * q * q), nn.ReLU(inplace=True), nn.Unflatten(1, (64, q, q)),
                nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(inplace=True),
                nn.ConvTranspose2d(32, channels, 4, 2, 1), nn.Tanh(),
            )

    @property
    def kind(self) -> str:
        return "domain-classifier" if self.num_classes > 0 else "domain-autoencoder"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) or the reconstruction (B, C, R, R)."""
        return self.head(self.body(x))


@dataclasses.dataclass(frozen=True)
class DomainTraining:
    seed: int = 0
    epochs: int = 3                # at least; more when the dataset is small, so that there are min_steps steps
    min_steps: int = 300           # ~3 s on 2 CPU cores at 32 px: enough for a tiny dataset to fit
    batch_size: int = 128
    lr: float = 2e-3
    heldout_fraction: float = 0.1  # the last 10% of the pool (at least 1 row) is never trained on


def _split(n: int, frac: float) -> int:
    """Rows [0, t) train, [t, n) held out."""
    return n - max(1, int(round(n * frac)))


def train_domain_net(pool: Pool, cfg: DomainTraining, progress: bool = False) -> tuple[DomainNet, dict[str, Any]]:
    """Train on the pool's train split; report held-out accuracy (classifier) or MSE (autoencoder). Deterministic
    in cfg.seed on one process (own generator for init and batch order; CPU kernels are deterministic)."""
    from tqdm import tqdm

    _, c, r, _ = pool.images.shape
    labelled = pool.labels is not None and len(pool.classes) > 0 and bool((pool.labels >= 0).any())
    keep = pool.labels >= 0 if labelled else torch.ones(pool.images.shape[0], dtype=torch.bool)
    images, labels = pool.images[keep], (pool.labels[keep] if labelled else None)
    t = _split(images.shape[0], cfg.heldout_fraction)
    if t < 1:
        raise ValueError(f"the domain feature network needs at least 2 images, the dataset has {images.shape[0]}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = DomainNet(c, r, len(pool.classes) if labelled else 0)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    order_rng = torch.Generator().manual_seed(cfg.seed + 1)
    per_epoch = (t + cfg.batch_size - 1) // cfg.batch_size
    epochs = max(cfg.epochs, -(-cfg.min_steps // per_epoch))
    steps = epochs * per_epoch
    bar = tqdm(total=steps, desc=f"[evaluate] training {net.kind}", disable=not progress, leave=False)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(t, generator=order_rng)
        for i in range(0, t, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            x = to_model_input(images[idx])
            out = net(x)
            loss = F.cross_entropy(out, labels[idx]) if labelled else F.mse_loss(out, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(1)
    bar.close()
    net.eval()
    with torch.no_grad():
        f = torch.cat([net.body(to_model_input(images[i:i + 512])) for i in range(0, min(t, 4096), 512)])
        net.feature_scale.fill_(float(f.pow(2).mean().clamp_min(1e-12).rsqrt()))
    info: dict[str, Any] = {"feature_scale": float(net.feature_scale), "train_rows": t, "heldout_rows": images.shape[0] - t, "epochs": epochs, "steps": steps, "seed": cfg.seed}
    with torch.no_grad():
        x_h = to_model_input(images[t:])
        if labelled:
            pred = net(x_h).argmax(1)
            y_h = labels[t:]
            info["heldout_accuracy"] = float((pred == y_h).float().mean())
            info["heldout_per_class_accuracy"] = {
                pool.classes[k]: float((pred[y_h == k] == k).float().mean()) for k in range(len(pool.classes)) if (y_h == k).any()
            }
        else:
            info["heldout_mse"] = float(F.mse_loss(net(x_h), x_h))
    return net, info


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def cache_dir(data: str) -> Path:
    """OUT/_features: beside images/ (the loader only reads OUT/images, so this never looks like data)."""
    from schemas.uri import uri_to_path

    return Path(uri_to_path(data)) / "_features"


def domain_cache_path(data: str, pool: Pool, labelled: bool, seed: int) -> Path:
    """OUT/_features/<manifest>-domain-<kind>-<seed>-<rows>.pt: one network per dataset, seed and training rows."""
    kind = "classifier" if labelled else "autoencoder"
    return cache_dir(data) / f"{pool.manifest_id}-domain-{kind}-{seed}-{pool.ids_digest()}.pt"


def load_or_train_domain(data: str, pool: Pool, cfg: DomainTraining, progress: bool = False) -> tuple[DomainNet, dict[str, Any]]:
    """The cached network of (dataset, seed, training rows), or one trained on `pool` and written to the cache of
    `data` (the dataset being evaluated, whichever dataset `pool` came from)."""
    labelled = pool.labels is not None and len(pool.classes) > 0 and bool((pool.labels >= 0).any())
    path = domain_cache_path(data, pool, labelled, cfg.seed)
    _, c, r, _ = pool.images.shape
    if path.is_file():
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if ck.get("format") == FORMAT and ck.get("training") == dataclasses.asdict(cfg):
            net = DomainNet(c, r, int(ck["num_classes"]))
            net.load_state_dict(ck["state_dict"])
            return net.eval(), {**ck["info"], "cache": str(path), "cached": True}
    net, info = train_domain_net(pool, cfg, progress)
    _atomic_save({"format": FORMAT, "state_dict": net.state_dict(), "num_classes": net.num_classes,
                  "training": dataclasses.asdict(cfg), "info": info, "manifest_id": pool.manifest_id}, path)
    return net, {**info, "cache": str(path), "cached": False}


# ----------------------------------------------------------------------------- extractors
class Extractor:
    """uint8 (B, C, H, W) -> float32 features (B, dim); `logits` for the domain classifier, else None."""

    kind: str
    dim: int
    info: dict[str, Any]   # recorded in the metrics JSON: kind, cache path, seed, held-out quality
    key: str               # names reference statistics: same key <=> same feature space

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor | None:
        return None


class DomainExtractor(Extractor):
    def __init__(self, net: DomainNet, info: dict[str, Any], manifest_id: str, seed: int):
        self.net = net.eval()
        self.kind, self.dim = net.kind, FEATURE_DIM
        self.info = {"kind": net.kind, **info}
        h = hashlib.sha256()
        for name, t in net.state_dict().items():  # the weights themselves name the feature space
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        self.info["weights_sha256_12"] = h.hexdigest()[:12]
        self.key = f"{manifest_id}-{net.kind}-{seed}-{h.hexdigest()[:12]}"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(to_model_input(images.contiguous())).float()

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor | None:
        return self.net(to_model_input(images.contiguous())).float() if self.net.num_classes else None


class InceptionExtractor(Extractor):
    """torchmetrics' NoTrainInceptionV3 (torch-fidelity's FID Inception, pool3 2048 features) from a local file."""

    def __init__(self, weights: Path, manifest_id: str):
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as e:  # pragma: no cover - depends on the installed stack
            raise FeatureError(f"--features inception needs torchmetrics with torch-fidelity installed: {e}") from None
        # Refuse anything but plain tensors before torch-fidelity loads it (it uses weights_only=False).
        try:
            torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FeatureError(f"{weights}: not a plain-tensor weights file (torch.load weights_only=True: {str(e).splitlines()[0]})") from None
        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                          feature_extractor_weights_path=str(weights)).eval()
        except (ModuleNotFoundError, ImportError) as e:
            raise FeatureError(f"--features inception needs the torch-fidelity package (and a torchvision matching torch): "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
        self.kind, self.dim = "inception", 2048
        self.info = {"kind": "inception", "weights": str(weights), "weights_sha256_12": digest}
        self.key = f"{manifest_id}-inception-{digest}"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.contiguous()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> RGB, as FID implementations do
        return self.net(x).reshape(x.shape[0], -1).float()


def resolve_inception_weights(kind: FeatureKind, weights: str | None) -> Path | None:
    """The Inception weights file to use, None for the domain network; FeatureError when inception is asked without one."""
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise FeatureError(f"--inception-weights {weights}: no such file (nothing is downloaded; copy the file there)")
        if kind == FeatureKind.DOMAIN:
            raise FeatureError("--inception-weights was given with --features domain; drop one of them")
        return p
    default = DEFAULT_INCEPTION_WEIGHTS.expanduser()
    if kind == FeatureKind.INCEPTION:
        if default.is_file():
            return default
        raise FeatureError(
            f"--features inception needs Inception weights: pass --inception-weights FILE or place them at {default} "
            "(nothing is downloaded at run time)"
        )
    if kind == FeatureKind.AUTO and default.is_file():
        return default
    return None
