"""Normalisation in exactly one place: uint8 batches -> model input floats, and back (used by training, sampling and
evaluation alike). Batches stay uint8 until here, so host->device copies move 4x fewer bytes."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def to_model_input(
    images: torch.Tensor, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """THE one place normalisation happens. uint8 (B, C, H, W) on any device -> float32 on that device, in the same
    memory format (a channels_last batch from the loaders stays channels_last).

    Without mean/std: x / 127.5 - 1, so 0 -> -1.0 and 255 -> +1.0 (what a tanh generator produces).
    With mean and std (per channel, of pixels scaled to [0, 1], e.g. the manifest's pixel_mean /
    pixel_std): (x / 255 - mean[c]) / std[c].
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images of shape (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
    x = images.to(torch.float32)
    if mean is None and std is None:
        return x.div_(127.5).sub_(1.0)
    m, s = _channel_stats(mean, std, images.shape[1], images.device)
    return x.div_(255.0).sub_(m).div_(s)


def from_model_output(
    x: torch.Tensor, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """Inverse of `to_model_input`: float (B, C, H, W) -> uint8 (B, C, H, W), rounded and clamped to 0..255."""
    if x.dim() != 4:
        raise ValueError(f"expected (B, C, H, W), got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float32)
    if mean is None and std is None:
        y = (x + 1.0) * 127.5
    else:
        m, s = _channel_stats(mean, std, x.shape[1], x.device)
        y = (x * s + m) * 255.0
    return y.round_().clamp_(0, 255).to(torch.uint8)


def _channel_stats(mean, std, channels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    if mean is None or std is None:
        raise ValueError(f"give both mean and std or neither, got mean={mean!r} std={std!r}")
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(-1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(-1)
    if m.numel() != channels or s.numel() != channels:
        raise ValueError(f"mean/std need one value per channel ({channels}), got {m.numel()} and {s.numel()}")
    if bool((s <= 0).any()):
        raise ValueError(f"std must be > 0 per channel, got {s.tolist()}")
    return m.view(1, -1, 1, 1), s.view(1, -1, 1, 1)
