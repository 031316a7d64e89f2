"""Bounded input, bounded output for config files (13/14, item 3): hostile YAML is refused in one short message,
fast, never a traceback; every echoed value is truncated."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.config import PreprocessConfig
from schemas.config import MAX_CONFIG_BYTES, MAX_YAML_ALIASES, ConfigError, check_fields, read_yaml
from training.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def alias_bomb(levels: int, width: int) -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + f"\nresolution: *a{levels}\n"


def _load(path: Path, cls) -> str:
    """What a command does with a --config file before any work: the message it would print, or '' if accepted."""
    try:
        check_fields(cls, read_yaml(path), str(path), "config")
    except ConfigError as e:
        return str(e)
    return ""


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(9, 12))  # 108 aliases, 12^9 nodes if expanded
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=rf"more than {MAX_YAML_ALIASES} aliases"):
        read_yaml(path)
    assert time.monotonic() - t0 < 2


def test_a_config_past_the_size_bound_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("resolution: 64\n" + "# padding\n" * (MAX_CONFIG_BYTES // 10))
    with pytest.raises(ConfigError, match=rf"more than a config file holds \(at most {MAX_CONFIG_BYTES}\)"):
        read_yaml(path)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=3000),
                     st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=50), inner, max_size=5),
                       max_leaves=40)
_keys = st.one_of(st.sampled_from(["resolution", "min-std", "steps", "lr_d", "labels", "batch_size", "seed"]), st.text(max_size=3000))


@st.composite
def hostile_yaml(draw) -> bytes:
    kind = draw(st.sampled_from(["mapping", "nested", "bomb", "raw", "nul"]))
    if kind == "bomb":
        return alias_bomb(draw(st.integers(1, 9)), draw(st.integers(1, 15))).encode()
    if kind == "raw":
        return draw(st.binary(max_size=2000))
    if kind == "nul":
        return b"resolution: 64\x00\nsteps: \x00\n"
    if kind == "nested":
        depth = draw(st.integers(1, 400))
        return ("resolution: " + "[" * depth + "1" + "]" * depth + "\n").encode()
    import json  # JSON is YAML: a mapping of hostile keys and values

    return json.dumps(draw(st.dictionaries(_keys, _values, max_size=8))).encode()


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=hostile_yaml(), cls=st.sampled_from([PreprocessConfig, TrainConfig]))
def test_a_thousand_hostile_configs_give_short_messages_fast(tmp_path_factory, data, cls):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(data)
    t0 = time.monotonic()
    message = _load(path, cls)
    assert time.monotonic() - t0 < 10
    assert len(message) < 10_000
    assert all(len(line) < 1_000 for line in message.splitlines())


@pytest.mark.parametrize("name,text", [("bomb", alias_bomb(9, 12)), ("wide", alias_bomb(3, 30)),
                                       ("nested", "resolution: " + "[" * 5000 + "]" * 5000 + "\n"),
                                       ("longkey", "k" * 50_000 + ": 1\n"), ("nul", "resolution: 64\x00\n")],
                         ids=["bomb", "wide", "nested", "longkey", "nul"])
@pytest.mark.parametrize("command", ["preprocess", "train"])
def test_the_cli_refuses_hostile_configs_in_a_few_lines(tmp_path, name, text, command):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    args = {"preprocess": ["preprocess", str(tmp_path), "--output", str(tmp_path / "o")],
            "train": ["train", "--data", str(tmp_path), "--run-dir", str(tmp_path / "r")]}[command]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "jobs.cli", *args, "--config", str(path)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 10
    assert r.returncode == 2, (r.stdout + r.stderr)[-2000:]
    assert "Traceback" not in r.stderr and len(r.stdout) + len(r.stderr) < 10_000
