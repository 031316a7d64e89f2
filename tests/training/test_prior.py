"""The VAE's fitted mixture prior (training/prior.py): its transform draws exactly from the mixture, a trained
VAE's prior samples have the latent statistics of its aggregate posterior, a labelled VAE's samples carry their
label (judged by a classifier trained on digits the VAE never saw), and it travels in the checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.generate import GenerateConfig
from jobs.generate import run as generate_run
from tests.training.conftest import write_digits_dataset
from training import models, prior, sample
from training.config import ModelKind, TrainConfig
from training.data import LoaderConfig, open_loader, to_model_input
from training.loop import train


def _moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.double()
    return z.mean(0), torch.cov(z.T)


def test_samples_follow_the_fitted_mixture_weights_means_and_covariances() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 3, generator=gen) @ torch.tensor([[2.0, 0, 0], [1.0, 0.5, 0], [0, 0, 0.3]]) + torch.tensor([12.0, 0, 0])
    b = torch.randn(1000, 3, generator=gen) * 0.5 + torch.tensor([-6.0, 3.0, 1.0])
    labels = torch.cat([torch.zeros(3000, dtype=torch.long), torch.ones(1000, dtype=torch.long)])
    p = prior.MixturePrior(3, num_classes=2)
    rows = p.fit(torch.cat([a, b]), labels, seed=0)
    assert rows == {0: 3000, 1: 1000, 2: 0} and p.conditional

    draws = p(torch.randn(40_000, 3, generator=gen))
    in_a = draws[:, 0] > 0
    assert abs(float(in_a.double().mean()) - 0.75) < 0.01  # the groups' weights
    for got, want in ((draws[in_a], a), (draws[~in_a], b)):
        (gm, gc), (wm, wc) = _moments(got), _moments(want)
        assert torch.allclose(gm, wm, atol=0.05) and torch.allclose(gc, wc, atol=0.08)

    only_b = p(torch.randn(5000, 3, generator=gen), torch.ones(5000, dtype=torch.long))
    assert bool((only_b[:, 0] < 0).all())  # by label: that class's components only
    with pytest.raises(ValueError, match="no training latents for label -1"):
        p(torch.randn(4, 3), torch.full((4,), -1))  # the unlabelled group had no rows


def test_a_class_with_a_single_row_gets_one_component_at_that_row() -> None:
    """A shard with one example of a class (a rank's slice of a tiny dataset) must not stop the checkpoint."""
    gen = torch.Generator().manual_seed(1)
    z = torch.cat([torch.randn(200, 4, generator=gen), torch.full((1, 4), 7.0)])
    labels = torch.cat([torch.zeros(200, dtype=torch.long), torch.ones(1, dtype=torch.long)])
    p = prior.MixturePrior(4, num_classes=2)
    assert p.fit(z, labels, seed=0) == {0: 200, 1: 1, 2: 0}
    draws = p(torch.randn(4000, 4, generator=gen), torch.ones(4000, dtype=torch.long))
    assert torch.allclose(draws.double().mean(0), torch.full((4,), 7.0, dtype=torch.double), atol=0.1)
    alone = prior.MixturePrior(4, num_classes=0)
    alone.fit(torch.full((1, 4), 2.0), None, seed=0)
    assert torch.allclose(alone(torch.zeros(3, 4)), torch.full((3, 4), 2.0), atol=1e-4)


def test_an_unfitted_prior_is_the_standard_normal_and_old_checkpoints_load_as_unfitted() -> None:
    spec = models.ModelSpec(kind=ModelKind.VAE, resolution=32, channels=1, z_dim=4, base_channels=8, num_classes=0)
    vae = models.VAE(spec)
    z = torch.randn(5, 4)
    assert torch.equal(vae.prior(z), z)
    with pytest.raises(ValueError, match="never fitted"):
        vae.prior(z, torch.zeros(5, dtype=torch.long))
    old = {k: v for k, v in vae.state_dict().items() if not k.startswith("prior.")}
    fresh = models.VAE(spec)
    fresh.prior.fitted.fill_(True)
    fresh.load_state_dict(old)  # strict: the prior's keys are filled in, unfitted
    assert not bool(fresh.prior.fitted)


@pytest.fixture(scope="module")
def labelled_vae(tmp_path_factory) -> tuple[Path, Path]:
    """A small VAE trained on 1,000 of scikit-learn's digits (labelled), with its prior fitted at the end."""
    root = tmp_path_factory.mktemp("prior")
    data = write_digits_dataset(root / "ds", n=1000, rows_per_group=100)
    run = root / "run"
    train(TrainConfig(data=str(data), run_dir=str(run), model="vae", steps=300, batch_size=32, base_channels=16, z_dim=8,
                      sample_every=0, ckpt_every=0, progress=False, backend="single"))
    return data, run


def test_prior_samples_match_the_aggregate_posterior_of_a_trained_vae(labelled_vae) -> None:
    data, run = labelled_vae
    spec, vae, _ = sample.load_sampler(next((run / "checkpoints").glob("ckpt-*.pt")))
    assert bool(vae.prior.fitted)
    loader = open_loader(LoaderConfig(data=str(data), batch_size=100, shuffle=False))
    gen = torch.Generator().manual_seed(7)  # other draws than the fit's
    zs, labels = [], []
    with torch.no_grad():
        for b in loader.epoch(0):
            mu, logvar = vae.encode(to_model_input(b.images))
            zs.append(vae.reparameterize(mu, logvar, torch.randn(mu.shape, generator=gen)))
            labels.append(b.labels)
    loader.close()
    posterior, labels = torch.cat(zs), torch.cat(labels)
    with torch.no_grad():
        draws = vae.prior(torch.randn(20_000, spec.z_dim, generator=gen))
        draws3 = vae.prior(torch.randn(5000, spec.z_dim, generator=gen), torch.full((5000,), 3))
    for got, want in ((draws, posterior), (draws3, posterior[labels == 3])):
        (gm, gc), (wm, wc) = _moments(got), _moments(want)
        scale = wc.diagonal().sqrt()
        assert float(((gm - wm).abs() / scale).max()) < 0.2
        assert float((gc - wc).norm() / wc.norm()) < 0.2
    # the standard normal the VAE was trained towards is measurably further from it
    (_, pc), (wm, wc) = _moments(posterior[labels == 3]), _moments(draws3)
    assert float((torch.eye(spec.z_dim, dtype=torch.double) - pc).norm()) > 2 * float((wc - pc).norm())


def test_a_labelled_vae_generates_the_digit_asked_for(labelled_vae, tmp_path: Path) -> None:
    """Judge: a logistic regression trained on digits 1000..1796 (never seen by the VAE), on 8x8 downsamples."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    _, run = labelled_vae
    digits = load_digits()
    judge = LogisticRegression(max_iter=2000).fit(digits.data[1000:] / 16.0, digits.target[1000:])
    correct = 0
    for d in range(10):
        out = generate_run(GenerateConfig(checkpoint=str(run), out=str(tmp_path / str(d)), num=20, label=str(d), seed=d))
        x = np.stack([np.asarray(Image.open(p).convert("L").resize((8, 8), Image.Resampling.BOX), np.float64) / 255.0
                      for p in out])
        correct += int((judge.predict(x.reshape(len(x), -1)) == d).sum())
    accuracy = correct / 200
    assert accuracy >= 0.6, f"conditional VAE samples: judge accuracy {accuracy:.2f} (chance 0.10)"
