"""Warm start across a grown dataset: old classes keep their label-embedding rows (matched by name), new ones are
fresh, every other weight is carried over exactly."""
from __future__ import annotations

import pytest
import torch

from training import models, warmstart
from training.config import ModelKind


def _nets(n_classes: int, seed: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    return models.build(models.ModelSpec(kind=ModelKind.CDCGAN, resolution=32, channels=1, z_dim=8, base_channels=8,
                                         num_classes=n_classes, mbstd_group=0))


def test_label_embeddings_grow_by_class_name_and_everything_else_is_copied():
    old = _nets(3, seed=0)
    ck = {"models": {k: n.state_dict() for k, n in old.items()}, "classes": ["a", "b", "c"]}
    new = _nets(4, seed=1)
    fresh_d = new["D"].state_dict()["embed.parametrizations.weight.original"].clone()
    report = warmstart.warm_start(new, ck, ["a", "b", "c", "d"])  # "d" is new, appended (indices are stable)
    assert report["new_classes"] == ["d"] and report["from_classes"] == 3 and report["to_classes"] == 4
    g_old, g_new = old["G"].embed.weight, new["G"].embed.weight
    assert torch.equal(g_new[:3], g_old[:3]) and torch.equal(g_new[4], g_old[3])  # classes, then the unlabelled row
    assert not torch.equal(g_new[3], g_old[3])  # the new class keeps its fresh row
    d_new = new["D"].state_dict()["embed.parametrizations.weight.original"]
    assert torch.equal(d_new[3], fresh_d[3])
    for name in ("G", "D"):
        for key, value in old[name].state_dict().items():
            if "embed" not in key:
                assert torch.equal(new[name].state_dict()[key], value), key


def test_classes_never_shrink_and_architectures_must_match():
    old = _nets(3, seed=0)
    ck = {"models": {k: n.state_dict() for k, n in old.items()}, "classes": ["a", "b", "c"]}
    with pytest.raises(warmstart.WarmStartError, match=r"knows classes the dataset lacks: \['c'\]"):
        warmstart.warm_start(_nets(2, seed=1), ck, ["a", "b"])
    torch.manual_seed(0)
    wider = models.build(models.ModelSpec(kind=ModelKind.CDCGAN, resolution=32, channels=1, z_dim=8, base_channels=16,
                                          num_classes=3, mbstd_group=0))
    with pytest.raises(warmstart.WarmStartError, match="a different architecture"):
        warmstart.warm_start(wider, ck, ["a", "b", "c"])
