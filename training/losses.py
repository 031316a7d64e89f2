"""GAN and VAE objectives. All return scalars averaged over the batch.

- Non-saturating logistic loss (Goodfellow et al. 2014, the one DCGAN uses):
  D: softplus(-D(x)) + softplus(D(G(z)));  G: softplus(-D(G(z))).
- Hinge loss (Lim & Ye 2017, SNGAN/BigGAN; the default): D: relu(1 - D(x)) + relu(1 + D(G(z)));  G: -D(G(z)).
- Mode seeking (Mao et al. 2019): 1 / (|G(z1) - G(z2)| / |z1 - z2|), against a generator that ignores z.
- R1 (Mescheder et al. 2018): gamma / 2 * E |grad_x D(x)|^2 on real images; the loop applies it lazily.
- VAE: negative ELBO = Gaussian NLL + beta * KL per image, averaged over the batch. The decoder is
  p(x|z) = N(decode(z), sigma^2 I) on the [-1, 1] pixel scale with ONE sigma, set to its maximum-likelihood
  value for the current batch, sigma^2 = the per-pixel MSE (the "calibrated decoder" of Rybkin et al. 2021,
  sigma-VAE). A fixed sigma^2 = 1/2 (plain SSE + KL) weighs the pixels so little against the KL that the
  posterior collapses and samples of MNIST are grey blobs; the calibrated sigma needs no tuning.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.config import GanLoss

__all__ = ["GanLoss", "d_loss", "g_loss", "r1_penalty", "mode_seeking", "gaussian_nll", "vae_terms", "MIN_LOG_SIGMA"]

MIN_LOG_SIGMA = math.log(1e-2)  # sigma floor on the [-1, 1] scale (< 1 grey level would reward memorising noise)


def d_loss(kind: GanLoss, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == GanLoss.HINGE:
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss(kind: GanLoss, fake_logits: torch.Tensor) -> torch.Tensor:
    fake_logits = fake_logits.float()
    if kind == GanLoss.HINGE:
        return -fake_logits.mean()
    return F.softplus(-fake_logits).mean()


def r1_penalty(real: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """E_x |grad_x D(x)|^2 (B-mean of the per-image squared gradient norm); `real` must require grad."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def mode_seeking(fake: torch.Tensor, z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mao et al. 2019 (MSGAN): 1 / (mean |G(z_a) - G(z_b)| / mean |z_a - z_b| + eps) over the pairs (2k, 2k+1)
    of the batch (same label for a conditional G); small when distinct latents give distinct images."""
    n = fake.shape[0] // 2 * 2
    f, zz = fake[:n].float(), z[:n].float()
    ratio = (f[0::2] - f[1::2]).abs().mean() / (zz[0::2] - zz[1::2]).abs().mean()
    return 1.0 / (ratio + eps)


def gaussian_nll(x: torch.Tensor, recon: torch.Tensor, log_sigma: torch.Tensor | float) -> torch.Tensor:
    """Per image (B,): -log N(x; recon, sigma^2 I) in nats, summed over C*H*W."""
    log_sigma = torch.as_tensor(log_sigma, dtype=torch.float32, device=x.device)
    sse = (recon.float() - x.float()).pow(2).flatten(1).sum(1)
    d = x[0].numel()
    return 0.5 * sse * torch.exp(-2.0 * log_sigma) + d * (log_sigma + 0.5 * math.log(2 * math.pi))


def vae_terms(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(nll, kl, log_sigma): nll and kl averaged over the batch (nats per image), with the batch's
    maximum-likelihood decoder scale log_sigma = log sqrt(MSE) (detached, floored at MIN_LOG_SIGMA)."""
    mse = (recon.float() - x.float()).pow(2).mean()
    log_sigma = (0.5 * torch.log(mse.detach())).clamp_min(MIN_LOG_SIGMA)
    nll = gaussian_nll(x, recon, log_sigma).mean()
    mu, logvar = mu.float(), logvar.float()
    kl = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).sum(1).mean()
    return nll, kl, log_sigma
