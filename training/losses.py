"""GAN and VAE objectives. All return scalars averaged over the batch.

- Non-saturating logistic loss (Goodfellow et al. 2014, the one DCGAN uses):
  D: softplus(-D(x)) + softplus(D(G(z)));  G: softplus(-D(G(z))).
- Hinge loss (Lim & Ye 2017, SNGAN/BigGAN): D: relu(1 - D(x)) + relu(1 + D(G(z)));  G: -D(G(z)).
- VAE: negative ELBO = recon + beta * KL, with recon the per-image sum of squared errors over pixels
  in [-1, 1] (a Gaussian decoder with fixed variance, up to constants) and KL(q(z|x) || N(0, I)) summed
  over latent dims; both averaged over the batch and reported separately.
"""
from __future__ import annotations

import enum

import torch
import torch.nn.functional as F


class GanLoss(str, enum.Enum):
    NONSAT = "nonsat"
    HINGE = "hinge"


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


def vae_terms(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(recon, kl), each averaged over the batch; recon summed over C*H*W, kl over z_dim."""
    rec = (recon.float() - x.float()).pow(2).flatten(1).sum(1).mean()
    mu, logvar = mu.float(), logvar.float()
    kl = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).sum(1).mean()
    return rec, kl
