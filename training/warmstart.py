"""Warm start: a new run's networks from an earlier checkpoint's weights, across a grown dataset.

The nightly loop (jobs/nightly.py) trains each night's candidate from the promoted model. The new night's manifest
may add classes: class indices are stable (a class keeps its index, new ones are appended; pipelines/labels.py), so
a conditional model's label embeddings (G's and D's, rows = classes + 1 "unlabelled" row) grow: each old class's
row is copied to that class's row in the new table (matched by name, not index), the unlabelled row moves to the
end, and new classes keep their fresh initialisation. Every other tensor must have the same shape. Optimizer state,
step and RNG start fresh: a warm start is a new run, not a resume.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["WarmStartError", "warm_start"]


class WarmStartError(ValueError):
    pass


def _grow_rows(key: str, new: torch.Tensor, old: torch.Tensor, row_of_old: list[int | None]) -> torch.Tensor:
    """Rows of `old` (old classes + the unlabelled row) placed into a copy of `new` (new classes + unlabelled)."""
    out = new.clone()
    if old.dim() == 0 or new.dim() == 0 or old.shape[1:] != new.shape[1:]:
        raise WarmStartError(f"{key}: shape {tuple(old.shape)} cannot grow to {tuple(new.shape)}")
    for i, j in enumerate(row_of_old):
        if j is not None:
            out[j] = old[i]
    out[-1] = old[-1]  # the unlabelled row
    return out


def warm_start(nets: dict[str, nn.Module], ck: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """Load checkpoint `ck`'s model weights into `nets` (in place), growing label embeddings from ck["classes"] to
    `classes`. Returns what was done: {"from_classes", "to_classes", "new_classes", "grown": [keys]}."""
    old_classes = list(ck.get("classes") or [])
    missing = [c for c in old_classes if c not in classes]
    if missing:
        raise WarmStartError(f"the warm-start checkpoint knows classes the dataset lacks: {missing[:5]}; classes only grow")
    row_of_old = [classes.index(c) for c in old_classes]
    grown: list[str] = []
    for name, net in nets.items():
        if name not in ck["models"]:
            raise WarmStartError(f"the warm-start checkpoint has no {name!r} network (it has {sorted(ck['models'])})")
        # A VAE's fitted prior belongs to the data it was fitted on: it starts unfitted and is fitted again on the
        # new data before the run's first checkpoint (training/prior.py).
        state = {k: v for k, v in net.state_dict().items() if not k.startswith("prior.")}
        old_state = {k: v for k, v in ck["models"][name].items() if not k.startswith("prior.")}
        if set(old_state) != set(state):
            raise WarmStartError(f"{name}: the checkpoint's parameters differ from this model's "
                                 f"(only there: {sorted(set(old_state) - set(state))[:3]}, only here: {sorted(set(state) - set(old_state))[:3]})")
        merged = {}
        for key, new in state.items():
            old = old_state[key]
            if old.shape == new.shape:
                merged[key] = old
            elif "embed" in key and old.shape[0] == len(old_classes) + 1 and new.shape[0] == len(classes) + 1:
                merged[key] = _grow_rows(f"{name}.{key}", new, old, row_of_old)
                grown.append(f"{name}.{key}")
            else:
                raise WarmStartError(f"{name}.{key}: checkpoint shape {tuple(old.shape)}, this model {tuple(new.shape)} "
                                     "(a different architecture: use the same model settings)")
        net.load_state_dict(merged)  # a VAE fills its missing prior.* keys with an unfitted prior (models.VAE)
    return {"from_classes": len(old_classes), "to_classes": len(classes),
            "new_classes": [c for c in classes if c not in old_classes], "grown": grown}
