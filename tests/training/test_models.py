"""Model shapes/ranges per resolution, conditioning, spectral norm, and the losses against torch's own formulas."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from training import losses, models
from training.models import ModelKind, ModelSpec


@pytest.mark.parametrize("resolution", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes_and_range(resolution: int, channels: int) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(ModelKind.DCGAN, resolution, channels, z_dim=8, base_channels=4)
    nets = models.build(spec)
    z = torch.randn(3, 8)
    x = nets["G"](z)
    assert x.shape == (3, channels, resolution, resolution)
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert nets["D"](x).shape == (3,)
    # log2(R/4) stride-2 layers in G after the 4x4 projection
    n_t = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in nets["G"].modules())
    assert n_t == spec.n_up + 1


def test_discriminator_has_spectral_norm_everywhere() -> None:
    spec = ModelSpec(ModelKind.CDCGAN, 32, 3, z_dim=8, base_channels=4, num_classes=10)
    d = models.build(spec)["D"]
    weighted = [m for m in d.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Embedding))]
    assert weighted and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in weighted)
    g = models.build(spec)["G"]
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in g.modules())


def test_conditional_models_use_labels_and_map_missing_label() -> None:
    torch.manual_seed(0)
    spec = ModelSpec(ModelKind.CDCGAN, 32, 3, z_dim=8, base_channels=4, num_classes=10)
    nets = models.build(spec)
    g, d = nets["G"].eval(), nets["D"].eval()
    z = torch.randn(1, 8).repeat(3, 1)  # same latent, three labels
    x = g(z, torch.tensor([0, 5, -1]))   # -1: a row without a label -> the extra "unlabelled" class
    assert not torch.allclose(x[0], x[1]) and not torch.allclose(x[1], x[2])
    logits = d(x[:1].repeat(2, 1, 1, 1), torch.tensor([1, 2]))
    assert logits[0] != logits[1]
    with pytest.raises(ValueError, match="labels must be in"):
        g(z, torch.tensor([0, 10, 1]))
    with pytest.raises(ValueError, match="needs labels"):
        g(z)


def test_vae_api() -> None:
    torch.manual_seed(0)
    spec = ModelSpec(ModelKind.VAE, 64, 3, z_dim=6, base_channels=4)
    v = models.build(spec)["V"]
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    mu, logvar = v.encode(x)
    assert mu.shape == logvar.shape == (2, 6)
    eps = torch.randn(2, 6)
    recon, mu2, _ = v(x, eps)
    assert recon.shape == x.shape and torch.equal(mu, mu2)
    assert torch.allclose(v.reparameterize(mu, logvar, eps), mu + logvar.mul(0.5).exp() * eps)
    assert torch.equal(v.generate(eps), v.decode(eps))
    assert models.sampler({"V": v}) == v.generate


def test_spec_validation_names_what_was_found() -> None:
    with pytest.raises(ValueError, match="dataset has 48"):
        ModelSpec(ModelKind.DCGAN, 48, 3)
    with pytest.raises(ValueError, match="dataset has 4"):
        ModelSpec(ModelKind.DCGAN, 32, 4)
    with pytest.raises(ValueError, match="no classes"):
        ModelSpec(ModelKind.CDCGAN, 32, 3, num_classes=0)


def test_gan_losses_match_torch_reference() -> None:
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(16, generator=g), torch.randn(16, generator=g)
    ref_d = F.binary_cross_entropy_with_logits(real, torch.ones(16)) + F.binary_cross_entropy_with_logits(fake, torch.zeros(16))
    assert torch.allclose(losses.d_loss(losses.GanLoss.NONSAT, real, fake), ref_d)
    ref_g = F.binary_cross_entropy_with_logits(fake, torch.ones(16))
    assert torch.allclose(losses.g_loss(losses.GanLoss.NONSAT, fake), ref_g)
    # hinge on hand-picked logits: relu(1-r) = [0, 0.5, 3], relu(1+f) = [0, 1.5, 0]
    r, f = torch.tensor([2.0, 0.5, -2.0]), torch.tensor([-3.0, 0.5, -1.0])
    assert losses.d_loss(losses.GanLoss.HINGE, r, f).item() == pytest.approx(3.5 / 3 + 1.5 / 3)
    assert losses.g_loss(losses.GanLoss.HINGE, f).item() == pytest.approx(3.5 / 3)


def test_vae_terms_match_torch_distributions() -> None:
    g = torch.Generator().manual_seed(2)
    x, recon = torch.rand(4, 3, 8, 8, generator=g), torch.rand(4, 3, 8, 8, generator=g)
    mu, logvar = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    rec, kl = losses.vae_terms(x, recon, mu, logvar)
    assert torch.allclose(rec, F.mse_loss(recon, x, reduction="sum") / 4)
    ref_kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    assert torch.allclose(kl, ref_kl, atol=1e-5)
