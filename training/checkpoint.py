"""Checkpoints: RUN/checkpoints/ckpt-<step:08d>.pt with a sha256 sidecar, written atomically, loaded safely.

Format: ``torch.save`` of a dict holding only state_dicts, tensors and plain Python values (no classes),
so :func:`load` uses ``torch.load(weights_only=True)``, which never unpickles arbitrary objects.

Integrity: the payload is serialised in memory, its sha256 is written to ``ckpt-<step>.pt.sha256``
and then the payload to ``ckpt-<step>.pt``; each through ``<name>.tmp`` + ``os.replace`` (atomic on POSIX),
sidecar first. A checkpoint is valid when both exist, the hash matches and ``torch.load`` succeeds; a
truncated or corrupted newest file therefore fails the hash and :func:`find_latest_valid` falls back to
the previous one. Only rank 0 calls :func:`save` (the loop ensures it).
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    pass


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def path_for(run_dir: str | os.PathLike, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"ckpt-{step:08d}.pt"


def _atomic_write(path: Path, data: bytes) -> None:
    """`data` to `path` through `path.tmp` + os.replace; a failed write removes its .tmp."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk (ENOSPC), an interrupt: no partial .tmp stays behind
        tmp.unlink(missing_ok=True)
        raise


def save(run_dir: str | os.PathLike, step: int, payload: dict[str, Any], keep: int = 3) -> Path:
    """Write checkpoint `step` atomically, then rotate: keep the newest `keep` VALID checkpoints (keep <= 0: keep all).
    Invalid files (hash mismatch, missing sidecar) are removed, never counted among the kept, so a valid checkpoint is
    never deleted in favour of an invalid one."""
    path = path_for(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    sidecar = path.with_name(path.name + ".sha256")
    try:
        _atomic_write(sidecar, hashlib.sha256(data).hexdigest().encode())
        _atomic_write(path, data)
    except BaseException as e:  # no sidecar without its payload (a full disk, an interrupt)
        sidecar.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # name the file and the space it needs
            raise OSError(errno.ENOSPC, f"No space left on device: this checkpoint needs {len(data) + 64} bytes", str(path)) from e
        raise
    if keep > 0:
        kept = 0
        for old in reversed(list_checkpoints(run_dir)):
            if old != path and verify_error(old) is not None:
                print(f"[checkpoint] removing invalid checkpoint {old.name}: {verify_error(old)}", flush=True)
            elif kept < keep:
                kept += 1
                continue
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    for orphan in checkpoint_dir(run_dir).glob("*.tmp"):  # a write killed before its os.replace
        orphan.unlink(missing_ok=True)
    return path


def verify_error(path: Path) -> str | None:
    """Why `path` fails its sha256 sidecar check, or None when it passes (reads the file; no unpickling)."""
    side = path.with_name(path.name + ".sha256")
    if not path.is_file():
        return "no such file"
    if not side.is_file():
        return f"missing integrity sidecar {side.name} (incomplete write?)"
    expected, found = side.read_text().strip(), hashlib.sha256(path.read_bytes()).hexdigest()
    if expected != found:
        return f"sha256 is {found}, sidecar says {expected}: corrupt or truncated"
    return None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint files (valid or not), oldest first by step."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify the sha256 sidecar, then torch.load(weights_only=True). Raises CheckpointError when invalid."""
    path = Path(path)
    side = path.with_name(path.name + ".sha256")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not side.is_file():
        raise CheckpointError(f"{path}: missing integrity sidecar {side.name} (incomplete write?)")
    data = path.read_bytes()
    expected, found = side.read_text().strip(), hashlib.sha256(data).hexdigest()
    if expected != found:
        raise CheckpointError(f"{path}: sha256 is {found}, sidecar says {expected} ({len(data)} bytes): corrupt or truncated")
    try:
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # a hash-consistent file that still does not load (e.g. written by other code)
        raise CheckpointError(f"{path}: torch.load(weights_only=True) failed: {e}") from e
    if not isinstance(obj, dict) or "step" not in obj:
        raise CheckpointError(f"{path}: expected a dict with 'step', found {type(obj).__name__}")
    return obj


def find_latest_valid(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """Newest checkpoint that verifies and loads; invalid newer ones are reported and skipped. None when there are no
    checkpoint files at all; CheckpointError when there are some and none is valid (a silent restart at step 0 would
    then rotate the invalid files away and lose the run's history)."""
    problems = []
    candidates = list_checkpoints(run_dir)
    for path in reversed(candidates):
        try:
            return path, load(path)
        except CheckpointError as e:
            problems.append(str(e))
            print(f"[checkpoint] skipping invalid checkpoint: {e}", flush=True)
    if candidates:
        raise CheckpointError(
            f"none of the {len(candidates)} checkpoint(s) in {checkpoint_dir(run_dir)} is valid (newest: {problems[0]}); "
            "pass --resume fresh to start over at step 0 (they are moved aside, not deleted), or --resume PATH"
        )
    return None


def move_aside(run_dir: str | os.PathLike) -> Path | None:
    """--resume fresh: move every checkpoint file (and sidecar) to checkpoints/replaced-<time>/; returns that folder."""
    files = [p for p in checkpoint_dir(run_dir).glob("ckpt-*") if p.is_file()]
    if not files:
        return None
    dest = checkpoint_dir(run_dir) / time.strftime("replaced-%Y%m%dT%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for p in files:
        os.replace(p, dest / p.name)
    return dest


# ----------------------------------------------------------------------------- RNG states as plain values
def rng_state() -> dict[str, Any]:
    """torch (CPU + every CUDA device), numpy and python `random` states as tensors/lists (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
