"""The registry takes only its own names, names a damaged file in one line, and stays consistent under two writers
(13/14, item 5)."""
from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.registry import Registry, RegistryError

REPO = Path(__file__).resolve().parents[2]


def _registry(root: Path, n: int = 3) -> Registry:
    """Versions as register() leaves them (the checkpoint itself is not read by these commands)."""
    reg = Registry.at(root)
    for i in range(1, n + 1):
        d = reg.root / "versions" / f"v{i:04d}"
        d.mkdir(parents=True)
        (d / "version.json").write_text(json.dumps({"version": f"v{i:04d}", "status": "candidate", "metrics": {},
                                                    "manifest_id": "m", "code_version": "c", "night": None}))
    return reg


def _models(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", "models", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["../../../outside", "v0001/../../x", "/etc/passwd", "v1", "v00001", "current", "v0009x", "x" * 5000])
def test_promote_takes_only_version_names(tmp_path, name):
    reg = _registry(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "version.json").write_text(json.dumps({"version": "x", "status": "candidate"}))
    r = _models("promote", name, "--root", str(tmp_path))
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr and len(r.stderr) < 400
    assert "is not a version name" in r.stderr
    assert reg.current() is None and not (reg.root / "current.json").exists()


def test_an_unknown_version_is_one_line(tmp_path):
    _registry(tmp_path)
    r = _models("promote", "v0042", "--root", str(tmp_path))
    assert r.returncode == 2 and "no version 'v0042'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("damage", ["truncated", "not-an-object", "other-version"])
def test_a_damaged_version_record_is_named_and_the_others_still_listed(tmp_path, damage):
    reg = _registry(tmp_path)
    path = reg.root / "versions" / "v0002" / "version.json"
    path.write_text({"truncated": '{"version": "v0002", "sta', "not-an-object": "[1, 2]",
                     "other-version": json.dumps({"version": "v0003", "status": "x"})}[damage])
    r = _models("list", "--root", str(tmp_path))
    assert r.returncode == 0 and "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["v0001", "v0002", "v0003"]
    assert "damaged" in lines[1] and str(path) in lines[1]
    with pytest.raises(RegistryError, match="the version record"):
        reg.get("v0002")


@pytest.mark.parametrize("file,text", [("current.json", '{"vers'), ("current.json", '{"version": "../x"}'),
                                       ("history.jsonl", '{"time": 1}\n{"broken')])
def test_a_damaged_pointer_or_history_is_one_line(tmp_path, file, text):
    reg = _registry(tmp_path)
    (reg.root / file).write_text(text)
    r = _models("list", "--root", str(tmp_path))
    assert "Traceback" not in r.stderr
    if file == "current.json":
        assert r.returncode == 0 and str(reg.root / file) in r.stderr and len(r.stdout.splitlines()) == 3
    else:
        reg.promote("v0001", "x")  # history is only read by rollback
        r = _models("rollback", "--root", str(tmp_path))
        assert r.returncode == 2 and f"{reg.root / file}:2" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _flip(root: str, rounds: int, start) -> None:
    start.wait()
    reg = Registry(Path(root))
    for i in range(rounds):
        reg.promote(f"v{1 + i % 3:04d}", "race")
        if i % 4 == 3:
            reg.rollback("race")


def test_two_processes_promoting_and_rolling_back_leave_pointer_and_history_consistent(tmp_path):
    reg = _registry(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_flip, args=(str(reg.root), 40, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    history = reg.history()
    assert len(history) == 2 * (40 + 10)  # every promotion and rollback wrote exactly one whole line
    for before, after in zip(history, history[1:]):  # each event starts where the one before it ended
        assert after["from"] == before["to"]
    assert reg.current() == history[-1]["to"]
