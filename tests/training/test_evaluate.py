"""The evaluation statistics against hand-computed values and planted distributions, and the domain classifier
on real MNIST digits. In-process and CPU-cheap (a few seconds each); the end-to-end job is in tests/jobs/test_evaluate.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from training import models
from training.evaluate import bits_per_dim, fid, kid, manifold_metrics, vae_elbo_terms
from training.features import DomainTraining, FeatureError, FeatureKind, Pool, resolve_inception_weights, train_domain_net


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on 2 shared cores a second OpenMP thread competing with a busy neighbour made the classifier
    training 18x slower (122 s instead of 7 s, measured); results are identical either way."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gauss(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)) + shift)


def test_fid_equals_hand_computed_frechet_distance():
    a, b = _gauss(40, 3, 0), _gauss(50, 3, 1, shift=0.5) * 1.5
    x, y = a.numpy(), b.numpy()
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)  # unbiased (N - 1), as torchmetrics
    hand = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid(a, b) == pytest.approx(hand, rel=1e-6)


def test_fid_is_zero_for_a_set_against_itself_and_grows_with_noise():
    x = _gauss(500, 8, 0)
    assert abs(fid(x, x)) < 1e-6
    rng = np.random.default_rng(1)
    noise = torch.from_numpy(rng.normal(size=x.shape))
    values = [fid(x, x + s * noise) for s in (0.1, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] > 0 and values[-1] > 10 * values[0]


def test_kid_unbiased_is_about_zero_for_two_halves_and_large_for_a_shift():
    x = _gauss(2000, 16, 0)
    mean, std = kid(x[:1000], x[1000:], subsets=50, subset_size=500, seed=0)
    shifted, _ = kid(x[:1000], x[1000:] + 1.0, subsets=50, subset_size=500, seed=0)
    assert abs(mean) < 0.02 and abs(mean) < 3 * std + 1e-3
    assert shifted > 50 * max(abs(mean), 1e-3)
    assert kid(x[:1000], x[1000:], subsets=50, subset_size=500, seed=0)[0] == mean  # seeded subsets


def test_precision_recall_on_planted_distributions():
    a, b = _gauss(1000, 2, 0), _gauss(1000, 2, 1)
    same = manifold_metrics(a, b, k=3)
    assert same["precision"] > 0.9 and same["recall"] > 0.9 and same["coverage"] > 0.8  # coverage ~ 1 - e^-k at best
    far = manifold_metrics(a, _gauss(1000, 2, 2, shift=20.0), k=3)
    assert far == {"precision": 0.0, "recall": 0.0, "coverage": 0.0}
    # Mode dropping: fakes from half of the real support are precise but recall only about half of it.
    half = b[b[:, 0] > 0]
    dropped = manifold_metrics(a, half, k=3)
    assert dropped["precision"] > 0.9 and 0.35 < dropped["recall"] < 0.7


def test_vae_elbo_matches_hand_computed_gaussian_likelihood():
    torch.manual_seed(0)
    spec = models.ModelSpec(kind=models.ModelKind.VAE, resolution=32, channels=1, z_dim=3, base_channels=2)
    vae = models.VAE(spec).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    eps = torch.randn(2, 3)
    with torch.no_grad():
        got = vae_elbo_terms(vae, x, eps)
        mu, logvar = vae.encode(x)
        sigma = torch.exp(0.5 * logvar)
        recon = vae.decode(mu + sigma * eps)
    # The decoder of a fresh VAE (and of checkpoints from before the calibrated decoder): N(recon, 1/2) per pixel.
    log_px = torch.distributions.Normal(recon.double(), math.sqrt(0.5)).log_prob(x.double()).flatten(1).sum(1)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu.double(), sigma.double()),
                                           torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(got["elbo"], log_px - kl, rtol=1e-5)
    # With sigma^2 = 1/2, SSE + KL is -ELBO minus the constant (D / 2) log(pi).
    sse = (recon - x).pow(2).flatten(1).sum(1).double()
    assert torch.allclose(-got["elbo"], sse + kl + 0.5 * 1024 * math.log(math.pi), rtol=1e-5)
    # The VAE's own (calibrated) decoder scale is the one the ELBO uses.
    vae.log_sigma.fill_(math.log(0.2))
    with torch.no_grad():
        got = vae_elbo_terms(vae, x, eps)
    log_px = torch.distributions.Normal(recon.double(), 0.2).log_prob(x.double()).flatten(1).sum(1)
    assert torch.allclose(got["elbo"], log_px - kl, rtol=1e-5)
    assert torch.allclose(got["sigma"], torch.full((2,), 0.2, dtype=torch.float64))
    # bits/dim on the 8-bit scale: the density of x_256 = (x + 1) * 127.5 is p(x) / 127.5^D.
    assert bits_per_dim(-1024 * math.log(2) * 3 + 1024 * math.log(127.5), 1024) == pytest.approx(3.0)


def test_domain_classifier_reaches_high_heldout_accuracy_on_mnist():
    from jobs.corpus import load_mnist

    images, labels = load_mnist("valid")
    n = 1000
    x = torch.from_numpy(np.pad(images[:n], ((0, 0), (2, 2), (2, 2))))[:, None].contiguous()  # 28 -> 32 px, grey
    pool = Pool(x, torch.from_numpy(labels[:n]), "mnist", tuple(str(d) for d in range(10)), n)
    net, info = train_domain_net(pool, DomainTraining(seed=0))
    assert info["heldout_rows"] == 100 and info["train_rows"] == 900
    assert info["heldout_accuracy"] > 0.9, info
    small = Pool(x[:100], pool.labels[:100], "mnist", pool.classes, 100)
    a, _ = train_domain_net(small, DomainTraining(seed=0, min_steps=20))
    b, _ = train_domain_net(small, DomainTraining(seed=0, min_steps=20))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))  # from the seed
    assert net.features(torch.zeros(2, 1, 32, 32)).shape == (2, 128)


def test_inception_without_weights_fails_with_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/imagegen/inception/ here
    with pytest.raises(FeatureError) as e:
        resolve_inception_weights(FeatureKind.INCEPTION, None)
    assert "--inception-weights" in str(e.value) and "\n" not in str(e.value)
    assert resolve_inception_weights(FeatureKind.AUTO, None) is None  # auto falls back to the domain network
    with pytest.raises(FeatureError, match="no such file"):
        resolve_inception_weights(FeatureKind.INCEPTION, str(tmp_path / "missing.pth"))
