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
    nll, kl, log_sigma = losses.vae_terms(x, recon, mu, logvar)
    sigma = F.mse_loss(recon, x).sqrt()  # the calibrated decoder: sigma^2 = the batch's per-pixel MSE
    assert torch.allclose(log_sigma.exp(), sigma)
    ref_nll = -Normal(recon, sigma).log_prob(x).flatten(1).sum(1).mean()
    assert torch.allclose(nll, ref_nll, rtol=1e-5)
    ref_kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    assert torch.allclose(kl, ref_kl, atol=1e-5)
    # a perfect reconstruction does not give an infinite likelihood: sigma is floored
    _, _, floored = losses.vae_terms(x, x, mu, logvar)
    assert floored.item() == pytest.approx(losses.MIN_LOG_SIGMA)


def test_r1_penalty_is_the_squared_input_gradient() -> None:
    w = torch.randn(1, 3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (x * w).flatten(1).sum(1) ** 2 / 2  # grad_x = logit' * w = (x . w) w
    got = losses.r1_penalty(x, logits)
    dots = (x * w).flatten(1).sum(1)
    assert torch.allclose(got, (dots ** 2 * w.pow(2).sum()).mean())
    got.backward()  # create_graph: the penalty itself is differentiable (R1 trains D through it)
    assert x.grad is not None


def test_minibatch_stddev_groups_never_mix_real_and_fake() -> None:
    """D sees [real; fake] in one forward: a group's statistic must come from one half only."""
    layer = models.MinibatchStd(group=4)
    real, fake = torch.randn(8, 2, 4, 4), torch.randn(8, 2, 4, 4) * 5
    both = layer(torch.cat([real, fake]))
    assert both.shape == (16, 3, 4, 4)
    assert torch.equal(both[:8, 2], layer(torch.cat([real, real]))[:8, 2])  # real half unchanged by the fake half
    assert torch.equal(both[8:, 2], layer(torch.cat([fake, fake]))[8:, 2])
    assert (both[8:, 2].mean() > 3 * both[:8, 2].mean()).item()
    assert [models._mbstd_group(n, 4) for n in (16, 12, 6, 2, 1, 7)] == [4, 3, 3, 1, 1, 1]
    spec = ModelSpec(ModelKind.CDCGAN, 32, 1, z_dim=8, base_channels=4, num_classes=10, mbstd_group=4)
    d = models.Discriminator(spec)
    assert d(torch.randn(8, 1, 32, 32), torch.arange(8)).shape == (8,)


def test_standing_stats_are_the_generators_own_batch_statistics() -> None:
    torch.manual_seed(0)
    spec = ModelSpec(ModelKind.CDCGAN, 32, 1, z_dim=8, base_channels=4, num_classes=10)
    g = models.Generator(spec).eval()
    models.standing_stats(g, spec, torch.device("cpu"), batches=4, batch=32, seed=3)
    assert not g.training
    bn = g.net[1]  # the first BatchNorm, after the 4x4 transposed conv
    gen = torch.Generator().manual_seed(3)
    acts = []
    for _ in range(4):
        z = torch.randn(32, 8, generator=gen)
        labels = torch.randperm(32, generator=gen) % 10
        h = torch.cat([z, g.embed(labels)], 1)[:, :, None, None]
        acts.append(g.net[0](h).detach())
    assert torch.allclose(bn.running_mean, torch.stack([a.mean(dim=(0, 2, 3)) for a in acts]).mean(0), atol=1e-5)
    assert bn.momentum == 0.1  # restored


def test_mode_seeking_term_rewards_latent_sensitive_generators() -> None:
    z = torch.randn(8, 4)
    collapsed = torch.zeros(8, 1, 4, 4)                        # ignores z: ratio 0, term 1 / eps
    spread = z[:, :1, None, None].expand(8, 1, 4, 4).clone()   # |dG| = |dz_0|
    assert losses.mode_seeking(collapsed, z).item() == pytest.approx(1e5)
    ratio = (spread[0::2] - spread[1::2]).abs().mean() / (z[0::2] - z[1::2]).abs().mean()
    assert losses.mode_seeking(spread, z).item() == pytest.approx(1 / (ratio.item() + 1e-5), rel=1e-5)
