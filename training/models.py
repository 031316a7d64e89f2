"""DCGAN (unconditional and class-conditional) and a convolutional VAE, sized from the dataset.

API kept stable for later issues (FID/KID, ELBO evaluation):
- ``generator(z, labels=None) -> images`` in [-1, 1], shape (B, C, R, R); z is (B, z_dim).
- ``discriminator(x, labels=None) -> logits`` (B,).
- ``vae.encode(x) -> (mu, logvar)``, ``vae.decode(z) -> images`` in [-1, 1], ``vae(x) -> (recon, mu, logvar)``,
  and ``vae.generate(z, labels=None)`` = ``decode(prior(z, labels))`` so a VAE can stand where a generator is
  expected; ``vae.prior`` is the mixture fitted on its training latents (training/prior.py), N(0, I) until fitted.

Architecture (pytorch/examples DCGAN, with choices known to stabilise GAN training):
- G: z -> 4x4 by a transposed conv, then log2(R/4) stride-2 transposed convs (4x4 kernels) halving the
  channels each time; BatchNorm + ReLU inside, tanh out. Channels at 4x4 are base * 2^(n-1), n = log2(R/4).
- D: the mirror image with stride-2 convs and LeakyReLU(0.2), spectral norm on every conv/linear (Miyato
  et al. 2018) instead of BatchNorm. Before the last conv, a minibatch-stddev channel (Karras et al. 2018):
  the mean standard deviation of the features over a group of ``mbstd_group`` images, which lets D see a
  batch that lacks variety, the signature of mode collapse. Groups are CONSECUTIVE images and their size
  divides half the batch, so when real and fake go through D in one concatenated forward [real; fake] no
  group mixes the two.
- The EMA generator's BatchNorm statistics are re-estimated from its own outputs before it is used
  (:func:`standing_stats`, BigGAN's "standing statistics"): G's running statistics belong to G's weights,
  not to their average, and copying them made the EMA samples washed out.
- Conditional: G gets a learned label embedding (z_dim wide) concatenated to z; D is a projection
  discriminator (Miyato & Koyama 2018): logit += <embed(y), pooled features>. Labels are label_index;
  -1 (row without a label) maps to an extra "unlabelled" class, index num_classes.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from schemas.images import TRAINABLE_RESOLUTIONS as SUPPORTED_RESOLUTIONS  # the contract: preprocess refuses others
from training.config import ModelKind
from training.prior import MixturePrior
from training.prior import map_labels as _map_labels


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    kind: ModelKind
    resolution: int          # R: images are R x R
    channels: int            # C: 1 (grey) or 3 (RGB)
    z_dim: int = 100
    base_channels: int = 64  # ngf/ndf of the DCGAN paper
    num_classes: int = 0     # CDCGAN: label embeddings; VAE: groups of its fitted prior (training/prior.py)
    mbstd_group: int = 0     # D's minibatch-stddev group size (0: no such layer; checkpoints from before it)

    def __post_init__(self) -> None:
        if self.resolution not in SUPPORTED_RESOLUTIONS:
            raise ValueError(f"resolution must be one of {SUPPORTED_RESOLUTIONS}, dataset has {self.resolution}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, dataset has {self.channels}")
        if self.kind == ModelKind.CDCGAN and self.num_classes < 1:
            raise ValueError("cdcgan needs a labelled dataset: manifest has no classes")

    @property
    def n_up(self) -> int:
        return int(math.log2(self.resolution // 4))


def _mbstd_group(n: int, group: int) -> int:
    """The group size used for a batch of n: the largest g <= group dividing n / 2 (n even) or n (n odd)."""
    half = n // 2 if n % 2 == 0 else n
    return max(g for g in range(1, min(group, half) + 1) if half % g == 0)


class MinibatchStd(nn.Module):
    """(B, C, H, W) -> (B, C + 1, H, W): appends the mean feature std over each group of consecutive images."""

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = _mbstd_group(b, self.group)
        y = x.float().reshape(b // g, g, c, h, w)
        y = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B/g,)
        y = y.repeat_interleave(g).reshape(b, 1, 1, 1).expand(b, 1, h, w)
        return torch.cat([x, y.to(x.dtype)], dim=1)


def init_dcgan_weights(m: nn.Module) -> None:
    """DCGAN paper init: conv weights N(0, 0.02), BN weights N(1, 0.02), BN bias 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _up_stack(z_in: int, spec: ModelSpec) -> nn.Sequential:
    """(B, z_in, 1, 1) -> (B, C, R, R) in [-1, 1]."""
    n, b = spec.n_up, spec.base_channels
    ch = b * 2 ** (n - 1)
    layers: list[nn.Module] = [nn.ConvTranspose2d(z_in, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
    for _ in range(n - 1):
        layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
        ch //= 2
    layers += [nn.ConvTranspose2d(ch, spec.channels, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def _down_stack(spec: ModelSpec, sn: bool) -> tuple[nn.Sequential, int]:
    """(B, C, R, R) -> (B, base * 2^(n-1), 4, 4)."""
    wrap = spectral_norm if sn else (lambda m: m)
    n, ch = spec.n_up, spec.base_channels
    layers: list[nn.Module] = [wrap(nn.Conv2d(spec.channels, ch, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
    for _ in range(n - 1):
        layers += [wrap(nn.Conv2d(ch, ch * 2, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        ch *= 2
    return nn.Sequential(*layers), ch


class Generator(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.conditional = spec.kind == ModelKind.CDCGAN
        z_in = spec.z_dim
        if self.conditional:
            self.embed = nn.Embedding(spec.num_classes + 1, spec.z_dim)
            z_in += spec.z_dim
        self.net = _up_stack(z_in, spec)
        self.apply(init_dcgan_weights)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = z
        if self.conditional:
            if labels is None:
                raise ValueError("the conditional generator needs labels (label_index per latent)")
            h = torch.cat([z, self.embed(_map_labels(labels, self.spec.num_classes))], dim=1)
        return self.net(h[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.conditional = spec.kind == ModelKind.CDCGAN
        self.features, ch = _down_stack(spec, sn=True)
        self.mbstd = MinibatchStd(spec.mbstd_group) if spec.mbstd_group > 0 else nn.Identity()
        self.out = spectral_norm(nn.Conv2d(ch + (spec.mbstd_group > 0), 1, 4, 1, 0))  # 4x4 -> 1x1
        if self.conditional:
            self.embed = spectral_norm(nn.Embedding(spec.num_classes + 1, ch))
        # No DCGAN re-init here: spectral norm rescales the weights anyway (PyTorch's default init is kept).

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        logit = self.out(self.mbstd(h)).flatten(1).squeeze(1)
        if self.conditional:
            if labels is None:
                raise ValueError("the conditional discriminator needs labels")
            pooled = h.sum(dim=(2, 3))  # (B, ch)
            logit = logit + (self.embed(_map_labels(labels, self.spec.num_classes)) * pooled).sum(dim=1)
        return logit


class VAE(nn.Module):
    """Gaussian latent N(0, I), diagonal Gaussian posterior, Gaussian decoder N(decode(z), sigma^2 I) with mean in
    [-1, 1] (tanh) and one scale ``log_sigma`` (a buffer: the running average of the batch maximum-likelihood
    value during training, see training/losses.py; it is what the ELBO of training/evaluate.py uses)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("log_sigma", torch.tensor(0.5 * math.log(0.5)))  # sigma^2 = 1/2: the old fixed decoder
        self.encoder, ch = _down_stack(spec, sn=False)
        self.to_stats = nn.Linear(ch * 16, 2 * spec.z_dim)  # -> (mu, logvar)
        self.decoder = _up_stack(spec.z_dim, spec)
        self.apply(init_dcgan_weights)
        self.prior = MixturePrior(spec.z_dim, spec.num_classes)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before the fitted prior: theirs is N(0, I), i.e. this one unfitted.
        for key, value in MixturePrior(self.spec.z_dim, self.spec.num_classes).state_dict().items():
            state_dict.setdefault(f"{prefix}prior.{key}", value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.encoder(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # keeps exp(logvar) finite in fp16/bf16

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z[:, :, None, None])

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps with eps ~ N(0, I) given by the caller (so the loop controls the RNG)."""
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        eps = torch.randn_like(mu) if eps is None else eps
        return self.decode(self.reparameterize(mu, logvar, eps)), mu, logvar

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images from z ~ N(0, I) through the fitted prior (of `labels`' classes when given)."""
        return self.decode(self.prior(z, labels))


@torch.no_grad()
def standing_stats(g: nn.Module, spec: ModelSpec, device: torch.device, batches: int = 8, batch: int = 128, seed: int = 0) -> None:
    """Re-estimate the BatchNorm running statistics of generator `g` as exact averages over `batches` forward
    passes in train mode (latents from a CPU generator seeded with `seed`; labels cycling through the classes),
    then leave `g` in the mode it was in. No-op for a network without BatchNorm."""
    bns = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    was, momenta = g.training, [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = the exact mean over the passes below
    gen = torch.Generator().manual_seed(seed)
    g.train()
    try:
        for _ in range(batches):
            z = torch.randn(batch, spec.z_dim, generator=gen).to(device)
            labels = (torch.randperm(batch, generator=gen) % spec.num_classes).to(device) if spec.kind == ModelKind.CDCGAN else None
            g(z, labels)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        g.train(was)


def build(spec: ModelSpec) -> dict[str, nn.Module]:
    """Fresh networks for `spec`: {"G", "D"} for GANs, {"V"} for the VAE."""
    if spec.kind == ModelKind.VAE:
        return {"V": VAE(spec)}
    return {"G": Generator(spec), "D": Discriminator(spec)}


def sampler(nets: dict[str, nn.Module]):
    """The callable (z, labels) -> images of a set of networks (EMA generator if present)."""
    if "V" in nets:
        return nets["V"].generate
    return nets.get("G_ema", nets["G"])
