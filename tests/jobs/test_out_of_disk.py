"""A full disk, for real: a small tmpfs mounted as the preprocess OUT and as the training RUN/. Each job ends non-zero with
one line naming the path and the space it needs, no Python traceback, and leaves no partial file behind: no manifest or
partition in OUT; no .tmp and no sidecar without its payload in RUN/checkpoints, and the previous checkpoint stays valid
(7/9). Mounting needs root, as CI has: a failed mount FAILS these tests, it never skips them."""
from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pipelines.imagefactory import encode, photo_like
from tests.training.conftest import write_digits_dataset
from training import checkpoint

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a {size} tmpfs at {path} (exit {mounted.returncode}: {mounted.stderr.strip()}); "
                    "the out-of-disk tests need root, as CI runs them")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def _one_line(stderr: str, prefix: str) -> str:
    assert "Traceback" not in stderr, stderr[-4000:]
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"expected one line starting {prefix!r}, found {lines}\n{stderr[-4000:]}"
    return lines[0]


@pytest.mark.slow
def test_preprocess_into_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, venv_bin: Path, subprocess_env: dict) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(120):  # staged at 32 px: 120 x 3 KiB of raw pixels, about 3 x the disk
        (src / f"p{i:03d}.png").write_bytes(encode(photo_like(48, 48, seed=i), "PNG"))
    with tmpfs(tmp_path / "small", "128k") as disk:
        out = disk / "out"
        proc = subprocess.run([str(venv_bin / "imagegen"), "preprocess", str(src), "--output", str(out), "--resolution", "32",
                               "--partitions", "2", "--master", "local[2]"],
                              cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=600, check=False)
        print(f"stderr: {len(proc.stderr.splitlines())} lines (Spark's own log included)")
        assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        line = _one_line(proc.stderr, "imagegen preprocess:")
        print(line)
        assert line.startswith(f"imagegen preprocess: out of disk space writing {out}: needs about "), line
        assert "(120 inputs x ~7.0 KiB per stored row)" in line and re.search(r"[0-9.]+ KiB free there", line), line
        assert not (out / "manifest.json").exists()
        assert _files(disk) == [], "the failed run left files behind"


@pytest.mark.slow
def test_training_into_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path: Path, venv_bin: Path,
                                                                                  subprocess_env: dict) -> None:
    data = write_digits_dataset(tmp_path / "ds")
    # A checkpoint of this model is ~480 KiB: the first fits on the 700 KiB disk, the second does not.
    with tmpfs(tmp_path / "small", "700k") as disk:
        run = disk / "run"
        proc = subprocess.run([str(venv_bin / "imagegen"), "train", "--data", str(data), "--run-dir", str(run), "--backend", "single",
                               "--batch-size", "8", "--base-channels", "8", "--z-dim", "16", "--num-samples", "8",
                               "--sample-every", "0", "--ckpt-every", "2", "--steps", "4", "--progress", "false"],
                              cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        line = _one_line(proc.stderr, "imagegen train:")
        print(line)
        second = checkpoint.path_for(run, 4)
        match = re.match(rf"imagegen train: out of disk space writing {re.escape(str(second))}: "
                         r"No space left on device: this checkpoint needs (\d+) bytes; [0-9.]+ KiB free there\.", line)
        assert match, line
        first = checkpoint.path_for(run, 2)
        assert int(match.group(1)) == first.stat().st_size + 64  # the estimate is the real size (same model, same step)
        assert [p for p in _files(run) if p.startswith("checkpoints/")] == ["checkpoints/ckpt-00000002.pt",
                                                                             "checkpoints/ckpt-00000002.pt.sha256"]
        assert checkpoint.verify_error(first) is None and checkpoint.load(first)["step"] == 2
