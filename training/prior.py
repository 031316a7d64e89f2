"""An ex-post density on a VAE's aggregate posterior, sampled at generate time.

A VAE trained with N(0, I) as its prior leaves holes in it: latents the encoder never produces, which the
decoder turns into strokes between digits. Ghosh et al. 2020 (*From Variational to Deterministic
Autoencoders*, section 4) fit a Gaussian mixture on the latents of the training data after training and
sample that instead. Here the mixture is fitted per GROUP: one group per class of a labelled dataset plus
one for unlabelled rows (label_index -1), or a single group. Sampling a group's components is a class-
conditional VAE for free: ``generate --label`` works for the VAE too.

The mixture lives in buffers of the VAE (``V.prior.*``), so it is saved with every checkpoint and used by
``generate``, ``evaluate``, the demo and the reports through ``VAE.generate``. It is fitted by the training
loop on rank 0 before each checkpoint (training/loop.py) with scikit-learn's GaussianMixture (full
covariances), on one draw z ~ q(z|x) per training row: a sample of the aggregate posterior itself.

Sampling keeps the generator interface (z, labels) -> images, with z ~ N(0, I) from the caller's seeded
generator, by an exact transform of z: u = Phi(z_0) picks the component k (inverse CDF over the weights);
rescaled within k's slice, u' = (u - W_{k-1}) / w_k is uniform and independent of k, so
z' = (Phi^-1(u'), z_1, ..., z_{d-1}) ~ N(0, I) and mean_k + L_k z' is an exact draw from component k.
An unfitted prior (a checkpoint from before this, or before its first fit) is N(0, I): z unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

UNCONDITIONAL_COMPONENTS = 10  # Ghosh et al.'s choice for MNIST
COMPONENTS_PER_CLASS = 4
REG_COVAR = 1e-4               # added to each covariance's diagonal (latents have unit scale)
FIT_ROWS = 20_000              # at most this many training rows are encoded for a fit


def map_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """label_index -> row of a per-class table; -1 (no label) -> num_classes (the "unlabelled" row)."""
    if labels.numel() and (int(labels.max()) >= num_classes or int(labels.min()) < -1):
        raise ValueError(f"labels must be in [-1, {num_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]")
    return torch.where(labels < 0, torch.full_like(labels, num_classes), labels)


def groups_for(num_classes: int) -> int:
    """Groups of a VAE over a dataset with `num_classes` classes: one per class plus "unlabelled", or one."""
    return num_classes + 1 if num_classes else 1


class MixturePrior(nn.Module):
    """Per-group Gaussian mixture over R^d; unfitted it is N(0, I). See the module docstring."""

    def __init__(self, z_dim: int, num_classes: int):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        self.per_group = COMPONENTS_PER_CLASS if num_classes else UNCONDITIONAL_COMPONENTS
        k = self.per_group * groups_for(num_classes)
        self.register_buffer("fitted", torch.tensor(False))
        self.register_buffer("log_weights", torch.full((k,), -float("inf")))  # -inf: component unused
        self.register_buffer("means", torch.zeros(k, z_dim))
        self.register_buffer("scale_tril", torch.eye(z_dim).repeat(k, 1, 1))  # Cholesky factors of covariances
        self.register_buffer("group", torch.arange(k) // self.per_group)       # component -> group

    def group_of(self, labels: torch.Tensor) -> torch.Tensor:
        """label_index (-1 = unlabelled) -> group."""
        return map_labels(labels, self.num_classes) if self.num_classes else torch.zeros_like(labels)

    @property
    def conditional(self) -> bool:
        """Fitted on labelled latents: samples can be asked for by label."""
        if not bool(self.fitted) or not self.num_classes:
            return False
        return bool((torch.isfinite(self.log_weights) & (self.group < self.num_classes)).any())

    @torch.no_grad()
    def fit(self, latents: torch.Tensor, labels: torch.Tensor | None, seed: int) -> dict[str, int]:
        """Fit every group's mixture on its rows of `latents` (N, d); labels (N,) label_index or None. Returns
        {group: rows}. A group with no rows gets no components (asking for its label is then an error)."""
        from sklearn.mixture import GaussianMixture

        z = latents.detach().double().cpu().numpy()
        if z.ndim != 2 or z.shape[1] != self.z_dim or not len(z):
            raise ValueError(f"need latents of shape (N, {self.z_dim}) with N >= 1, got {tuple(latents.shape)}")
        if not np.isfinite(z).all():
            raise ValueError("latents hold NaN or inf: the encoder diverged; no prior fitted")
        groups = self.group_of(labels.cpu()) if labels is not None else torch.full((len(z),), self.groups - 1)
        groups = groups.numpy()
        k = self.log_weights.numel()
        log_w = np.full(k, -np.inf)
        means, trils = np.zeros((k, self.z_dim)), np.tile(np.eye(self.z_dim), (k, 1, 1))
        rows = {}
        for g in range(self.groups):
            zg = z[groups == g]
            rows[g] = len(zg)
            if not len(zg):
                continue
            if len(zg) < 2:  # too few rows for a mixture: one Gaussian at its row, with the pooled spread
                weights, group_means = np.ones(1), zg[:1]
                pooled = np.cov(z, rowvar=False) if len(z) > 1 else np.eye(self.z_dim)
                covs = (np.atleast_2d(pooled) + REG_COVAR * np.eye(self.z_dim))[None]
            else:
                n = max(1, min(self.per_group, len(zg) // (self.z_dim + 1)))  # enough rows per full covariance
                gmm = GaussianMixture(n, covariance_type="full", reg_covar=REG_COVAR, random_state=seed,
                                      max_iter=200).fit(zg)
                weights, group_means, covs = gmm.weights_, gmm.means_, gmm.covariances_
            sl = slice(g * self.per_group, g * self.per_group + len(weights))
            log_w[sl] = np.log(weights * len(zg) / len(z))
            means[sl] = group_means
            trils[sl] = np.linalg.cholesky(covs)
        self.log_weights.copy_(torch.from_numpy(log_w))
        self.means.copy_(torch.from_numpy(means))
        self.scale_tril.copy_(torch.from_numpy(trils))
        self.fitted.fill_(True)
        return rows

    @property
    def groups(self) -> int:
        return groups_for(self.num_classes)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ N(0, I) (B, d) -> a draw from the mixture (of `labels`' groups when given), by the exact
        transform of the module docstring; unfitted: z itself (labels must then be None)."""
        if not bool(self.fitted):
            if labels is not None:
                raise ValueError("this VAE's prior was never fitted on labelled latents: it cannot sample by label")
            return z
        w = self.log_weights.exp().to(z.dtype).expand(z.shape[0], -1)
        if labels is not None:
            w = w * (self.group[None, :] == self.group_of(labels)[:, None]).to(z.dtype)
            empty = w.sum(1) <= 0
            if bool(empty.any()):
                raise ValueError(f"no training latents for label {int(labels[empty][0])}: the prior has no component for it")
        w = w / w.sum(1, keepdim=True)
        cum = w.cumsum(1)
        cum = cum / cum[:, -1:]  # exactly 1 at the end: u < 1 always finds a component of nonzero weight
        u = torch.special.ndtr(z[:, 0]).clamp(1e-7, 1 - 1e-7)
        k = torch.searchsorted(cum, u[:, None]).squeeze(1).clamp(max=w.shape[1] - 1)
        wk = w.gather(1, k[:, None]).squeeze(1)
        lo = cum.gather(1, k[:, None]).squeeze(1) - wk
        u_in = ((u - lo) / wk).clamp(1e-7, 1 - 1e-7)
        z_std = torch.cat([torch.special.ndtri(u_in)[:, None], z[:, 1:]], dim=1)
        tril = self.scale_tril[k].to(z.dtype)
        return self.means[k].to(z.dtype) + (tril @ z_std[:, :, None]).squeeze(2)
