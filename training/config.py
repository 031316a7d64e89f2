"""TrainConfig: the one frozen, typed configuration of a training run.

Built by jobs/train.py from (defaults <- YAML file <- command-line flags), printed, written to
RUN/config.json by rank 0, stored in every checkpoint, and passed to ``training.loop.train``.

This module imports nothing from the modules it configures: the enums they share live here and those
modules (models, losses, data, dist) import them from here.

Why the GAN defaults are what they are (measured in docs/quality.md: 10,000 MNIST digits, 32 px, 3,000
steps, batch 64, CPU): hinge loss + spectral norm (SNGAN/BigGAN), a minibatch-stddev feature in D (Karras
et al. 2018) against mode collapse, lazy R1 on real images every 16 steps (Mescheder et al. 2018; lazy as in
StyleGAN2), Adam(2e-4, betas (0.5, 0.999)) (DCGAN), an EMA of G with warm-up whose BatchNorm statistics are
re-estimated before it is used (BigGAN's "standing statistics").
"""
from __future__ import annotations

import dataclasses
import enum
import json
import typing
from typing import Any

from schemas.config import check_fields


class ModelKind(str, enum.Enum):
    DCGAN = "dcgan"
    CDCGAN = "cdcgan"  # class-conditional DCGAN (label_index)
    VAE = "vae"


class GanLoss(str, enum.Enum):
    NONSAT = "nonsat"  # non-saturating logistic (Goodfellow et al. 2014, DCGAN)
    HINGE = "hinge"    # Lim & Ye 2017; SNGAN, BigGAN


class ReaderKind(str, enum.Enum):
    PETASTORM = "petastorm"
    ARROW = "arrow"


class Backend(str, enum.Enum):
    AUTO = "auto"        # horovod if HOROVOD_RANK is set, ddp if torchrun's RANK/WORLD_SIZE are, else single
    HOROVOD = "horovod"
    DDP = "ddp"
    SINGLE = "single"


class Precision(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"  # autocast to bfloat16 (CUDA, and CPU for tests); no loss scaling needed
    FP16 = "fp16"  # autocast to float16 with a GradScaler (dynamic loss scaling)


class Resume(str, enum.Enum):
    NONE = "none"  # fresh run; refuses a RUN/ that already has checkpoints
    AUTO = "auto"  # newest valid checkpoint in RUN/checkpoints, or fresh if there is none; refuses if none is valid
    FRESH = "fresh"  # start at step 0 whatever RUN/checkpoints holds: its files move to RUN/checkpoints/replaced-<time>/


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: str                                # dataset root OUT (has manifest.json)
    run_dir: str = "runs/default"            # RUN/: config.json, metrics.jsonl, tb/, samples/, checkpoints/
    model: ModelKind = ModelKind.DCGAN
    steps: int | None = None                 # total optimizer steps (D+G counts as one); exclusive with epochs
    epochs: int | None = None                # total epochs; neither given: one epoch
    batch_size: int = 64                     # per rank; global batch = batch_size * world size
    lr_g: float = 1e-4                       # generator learning rate
    lr_d: float = 4e-4                       # discriminator learning rate (TTUR: 4x G's, as in SAGAN / BigGAN)
    lr_vae: float = 1e-3                     # VAE learning rate (Adam with its default betas 0.9, 0.999)
    lr_scale_with_world: bool = False        # multiply both learning rates by the world size (linear scaling rule)
    beta1: float = 0.0                       # GANs' Adam betas (SAGAN 0, 0.9; BigGAN 0, 0.999; DCGAN 0.5, 0.999)
    beta2: float = 0.99
    gan_loss: GanLoss = GanLoss.HINGE
    r1_gamma: float = 0.1                    # GANs: R1 penalty gamma/2 * |grad D(real)|^2 (0: off)
    r1_every: int = 16                       # lazy R1: every N steps, weighted by N (StyleGAN2); Adam of D adjusted
    ms_weight: float = 0.1                   # GANs: mode-seeking term (Mao et al. 2019) in G's loss (0: off)
    mbstd_group: int = 4                     # D: minibatch-stddev over groups of this many images (0: off)
    beta_kl: float = 1.0                     # VAE: weight of the KL term (beta-VAE)
    z_dim: int | None = None                 # latent size; None: 100 for GANs (DCGAN), 16 for the VAE (a VAE with 100
                                             # latents and a sharp decoder leaves holes in the prior: squiggles, quality.md)
    base_channels: int = 32                  # G and D width (DCGAN: 64); 32 trains 3-4x faster on a CPU (docs/quality.md)
    ema_decay: float = 0.999                 # generator EMA per step (GANs), reached after a warm-up:
                                             # decay_t = min(ema_decay, (1 + t) / (10 + t)); 0 copies G
    precision: Precision = Precision.FP32
    channels_last: bool | None = None        # None: on CUDA only
    backend: Backend = Backend.AUTO
    reader: ReaderKind = ReaderKind.ARROW
    seed: int = 0
    ckpt_every: int = 1000                   # steps between checkpoints (and one at the end); 0: only at the end
    keep_ckpts: int = 3                      # newest K checkpoints kept (<= 0: all)
    sample_every: int = 500                  # steps between sample grids (and one at the end); 0: only at the end
    num_samples: int = 64                    # images in a sample grid (fixed latents)
    log_every: int = 10                      # steps per metrics.jsonl / TensorBoard row: the mean over those steps and ranks
    progress: bool = True                    # tqdm progress line on rank 0 (step, averaged losses, images/s, ETA)
    resume: str = Resume.NONE.value          # "none" | "auto" | "fresh" | path to a checkpoint file
    init_from: str | None = None             # warm start: model weights from this checkpoint (label embeddings grown
                                             # for new classes, training/warmstart.py); fresh optimizer, step 0.
                                             # A checkpoint found by --resume auto takes precedence (a resumed night)
    deterministic: bool = False              # torch.use_deterministic_algorithms(True) (exact resume tests)
    debug_probe: bool = False                # write RUN/probe/rank-<r>.json (ids seen, parameter hash, metrics)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            hint = _hints()[f.name]
            if isinstance(hint, type) and issubclass(hint, enum.Enum):
                object.__setattr__(self, f.name, hint(getattr(self, f.name)))  # accept the string value
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"give steps or epochs, not both (steps={self.steps}, epochs={self.epochs})")
        for name in ("steps", "epochs"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.r1_gamma < 0 or self.r1_every < 1:
            raise ValueError(f"need r1_gamma >= 0 and r1_every >= 1, got {self.r1_gamma}, {self.r1_every}")
        if self.ms_weight < 0:
            raise ValueError(f"ms_weight must be >= 0, got {self.ms_weight}")
        if self.mbstd_group < 0:
            raise ValueError(f"mbstd_group must be >= 0, got {self.mbstd_group}")
        if self.z_dim is not None and self.z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {self.z_dim}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")

    @property
    def latent_dim(self) -> int:
        """z_dim, or its default for the model."""
        return self.z_dim if self.z_dim is not None else (16 if self.model == ModelKind.VAE else 100)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: enums as their values."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Typed and strict (schemas/config.py): an unknown key or a value of the wrong type raises ConfigError,
        one line per problem naming `source` and the key."""
        return cls(**check_fields(cls, d, source, what="training config"))


def _plain(v: Any) -> Any:
    return v.value if isinstance(v, enum.Enum) else v


_HINTS: dict[str, Any] | None = None


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(TrainConfig)
    return _HINTS
