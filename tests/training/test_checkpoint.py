"""Checkpoint files: atomic write, keep-K, integrity (corrupt/truncated newest skipped), safe loading, RNG states."""
from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpoint


def _payload(step: int) -> dict:
    torch.manual_seed(step)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"step": step, "models": {"m": model.state_dict()}, "optimizers": {"m": opt.state_dict()},
            "rng": checkpoint.rng_state(), "config": {"a": 1, "b": "x"}}


def test_save_load_roundtrip_atomic_and_keep(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        checkpoint.save(tmp_path, step, _payload(step), keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["ckpt-00000003.pt", "ckpt-00000003.pt.sha256", "ckpt-00000004.pt", "ckpt-00000004.pt.sha256"]
    loaded = checkpoint.load(tmp_path / "checkpoints" / "ckpt-00000004.pt")
    ref = _payload(4)
    assert loaded["step"] == 4 and loaded["config"] == {"a": 1, "b": "x"}
    for k, v in ref["models"]["m"].items():
        assert torch.equal(loaded["models"]["m"][k], v)
    assert torch.equal(loaded["optimizers"]["m"]["state"][0]["exp_avg"], ref["optimizers"]["m"]["state"][0]["exp_avg"])


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_sidecar"])
def test_damaged_newest_is_skipped(tmp_path: Path, damage: str) -> None:
    for step in (10, 20):
        checkpoint.save(tmp_path, step, _payload(step), keep=0)
    newest = tmp_path / "checkpoints" / "ckpt-00000020.pt"
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    elif damage == "truncate":
        newest.write_bytes(bytes(data[: len(data) // 3]))
    else:
        newest.with_name(newest.name + ".sha256").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="ckpt-00000020"):
        checkpoint.load(newest)
    path, loaded = checkpoint.find_latest_valid(tmp_path)
    assert path.name == "ckpt-00000010.pt" and loaded["step"] == 10


def test_no_checkpoint_means_none(tmp_path: Path) -> None:
    assert checkpoint.find_latest_valid(tmp_path) is None
    with pytest.raises(checkpoint.CheckpointError, match="no such"):
        checkpoint.load(tmp_path / "ckpt-00000001.pt")


class _Evil:
    """An arbitrary class: weights_only loading must refuse to construct it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_arbitrary_objects_are_never_unpickled(tmp_path: Path, capsys) -> None:
    d = tmp_path / "checkpoints"
    d.mkdir()
    buf = io.BytesIO()
    torch.save({"step": 1, "evil": _Evil()}, buf)
    (d / "ckpt-00000001.pt").write_bytes(buf.getvalue())
    (d / "ckpt-00000001.pt.sha256").write_text(hashlib.sha256(buf.getvalue()).hexdigest())  # hash is fine
    with pytest.raises(checkpoint.CheckpointError, match="weights_only"):
        checkpoint.load(d / "ckpt-00000001.pt")
    assert "unpickled!" not in capsys.readouterr().out


def test_rng_state_roundtrip_through_a_file(tmp_path: Path) -> None:
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    checkpoint.save(tmp_path, 1, {"step": 1, "rng": checkpoint.rng_state()})
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "checkpoints" / "ckpt-00000001.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_rotation_never_deletes_a_valid_checkpoint_for_an_invalid_one(tmp_path: Path) -> None:
    # A previous life left invalid checkpoints at higher steps; this life resumed from step 2 and saves 3, 4, 5.
    for step in (2, 8, 9):
        checkpoint.save(tmp_path, step, _payload(step), keep=0)
    for step in (8, 9):
        _corrupt(checkpoint.path_for(tmp_path, step))
    for step in (3, 4, 5):
        checkpoint.save(tmp_path, step, _payload(step), keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["ckpt-00000004.pt", "ckpt-00000004.pt.sha256", "ckpt-00000005.pt", "ckpt-00000005.pt.sha256"]
    path, loaded = checkpoint.find_latest_valid(tmp_path)
    assert path.name == "ckpt-00000005.pt" and loaded["step"] == 5


def test_every_checkpoint_invalid_is_refused_not_restarted(tmp_path: Path) -> None:
    for step in (1, 2):
        checkpoint.save(tmp_path, step, _payload(step), keep=0)
        _corrupt(checkpoint.path_for(tmp_path, step))
    with pytest.raises(checkpoint.CheckpointError, match=r"none of the 2 checkpoint\(s\) in .* is valid .*--resume fresh"):
        checkpoint.find_latest_valid(tmp_path)
    aside = checkpoint.move_aside(tmp_path)
    assert sorted(p.name for p in aside.iterdir()) == [
        "ckpt-00000001.pt", "ckpt-00000001.pt.sha256", "ckpt-00000002.pt", "ckpt-00000002.pt.sha256"]
    assert checkpoint.find_latest_valid(tmp_path) is None
