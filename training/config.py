"""TrainConfig: the one frozen, typed configuration of a training run.

Built by jobs/train.py from (defaults <- YAML file <- command-line flags), printed, written to
RUN/config.json by rank 0, stored in every checkpoint, and passed to ``training.loop.train``.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import typing
from typing import Any

from training.data import ReaderKind
from training.dist import Backend
from training.losses import GanLoss
from training.models import ModelKind


class Precision(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"  # autocast to bfloat16 (CUDA, and CPU for tests); no loss scaling needed
    FP16 = "fp16"  # autocast to float16 with a GradScaler (dynamic loss scaling)


class Resume(str, enum.Enum):
    NONE = "none"  # fresh run; refuses a RUN/ that already has checkpoints
    AUTO = "auto"  # newest valid checkpoint in RUN/checkpoints, or fresh if there is none


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: str                                # dataset root OUT (has manifest.json)
    run_dir: str = "runs/default"            # RUN/: config.json, metrics.jsonl, tb/, samples/, checkpoints/
    model: ModelKind = ModelKind.DCGAN
    steps: int | None = None                 # total optimizer steps (D+G counts as one); exclusive with epochs
    epochs: int | None = None                # total epochs; neither given: one epoch
    batch_size: int = 64                     # per rank; global batch = batch_size * world size
    lr_g: float = 2e-4                       # generator (GAN) or whole VAE learning rate
    lr_d: float = 2e-4                       # discriminator learning rate
    lr_scale_with_world: bool = False        # multiply both learning rates by the world size (linear scaling rule)
    beta1: float = 0.5                       # Adam betas (DCGAN: 0.5, 0.999)
    beta2: float = 0.999
    gan_loss: GanLoss = GanLoss.NONSAT
    beta_kl: float = 1.0                     # VAE: weight of the KL term (beta-VAE)
    z_dim: int = 100
    base_channels: int = 64
    ema_decay: float = 0.999                 # generator EMA per step (GANs); 0 copies G
    precision: Precision = Precision.FP32
    channels_last: bool | None = None        # None: on CUDA only
    backend: Backend = Backend.AUTO
    reader: ReaderKind = ReaderKind.ARROW
    seed: int = 0
    ckpt_every: int = 1000                   # steps between checkpoints (and one at the end); 0: only at the end
    keep_ckpts: int = 3                      # newest K checkpoints kept (<= 0: all)
    sample_every: int = 500                  # steps between sample grids (and one at the end); 0: only at the end
    num_samples: int = 64                    # images in a sample grid (fixed latents)
    log_every: int = 10                      # steps between metrics.jsonl / TensorBoard rows (and the last step)
    resume: str = Resume.NONE.value          # "none" | "auto" | path to a checkpoint file
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
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: enums as their values."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known: {sorted(names)}")
        return cls(**d)


def _plain(v: Any) -> Any:
    return v.value if isinstance(v, enum.Enum) else v


_HINTS: dict[str, Any] | None = None


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(TrainConfig)
    return _HINTS
