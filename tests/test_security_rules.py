"""Rules that keep untrusted bytes from running code, checked over the source (7/9 "stays under test"): YAML only
through safe_load, no shell=True, torch.load only with weights_only=True, no pickle.load(s) of anything (MNIST goes
through jobs/corpus.py's numpy-only unpickler). The behaviour itself is tested where it lives (checkpoints,
petastorm metadata, tar members, the MNIST unpickler)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "training", "jobs", "schemas", "bench", "scripts")


def _calls():
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    yield path.relative_to(REPO).as_posix(), node


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def test_no_unsafe_deserialisation_or_shell():
    problems = []
    for where, call in _calls():
        name = _name(call.func)
        kwargs = {k.arg: k.value for k in call.keywords}
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "pickle.load", "pickle.loads"):
            problems.append(f"{where}:{call.lineno} {name}")
        if name == "torch.load" and not (isinstance(kwargs.get("weights_only"), ast.Constant) and kwargs["weights_only"].value is True):
            problems.append(f"{where}:{call.lineno} torch.load without weights_only=True")
        if isinstance(kwargs.get("shell"), ast.Constant) and kwargs["shell"].value is True:
            problems.append(f"{where}:{call.lineno} shell=True")
    assert problems == []


def test_the_rule_finds_what_it_looks_for(tmp_path):
    # the checker itself can fail: these lines are what it must catch
    bad = ast.parse("import yaml, torch, subprocess\nyaml.load(s)\ntorch.load(f)\nsubprocess.run('x', shell=True)\n")
    names = [_name(n.func) for n in ast.walk(bad) if isinstance(n, ast.Call)]
    assert names == ["yaml.load", "torch.load", "subprocess.run"]
