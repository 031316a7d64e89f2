"""Strict, typed configuration (schemas/config.py): the real CLI refuses a bad value with one line naming the file,
the key, the expected type and the value found, and exits 2 before Spark or torch starts."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs import preprocess as preprocess_job
from jobs import train as train_job
from pipelines.config import ChannelMode, FitMode, PreprocessConfig
from schemas.config import ConfigError, check_fields
from tests.conftest import REPO
from training.config import ModelKind, TrainConfig


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


def _refused(proc: subprocess.CompletedProcess) -> list[str]:
    """A refusal: exit 2, no traceback, Spark never started; returns the stderr lines."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "Spark" not in proc.stderr and "Spark" not in proc.stdout  # no SparkContext / SparkSession log lines
    return proc.stderr.strip().splitlines()


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- the five measured cases
def test_dedup_string_no_is_refused_not_read_as_true(tmp_path, subprocess_env):
    cfg = _yaml(tmp_path, 'dedup: "no"\n')
    lines = _refused(_cli(["preprocess", str(tmp_path), "--output", str(tmp_path / "out"), "--config", str(cfg)], subprocess_env))
    assert lines == [f"imagegen preprocess: {cfg}: key 'dedup' expects true or false, found 'no' (string)"]
    assert not (tmp_path / "out").exists()


def test_fractional_steps_are_refused_not_rounded(tmp_path, subprocess_env):
    cfg = _yaml(tmp_path, "data: /d\nsteps: 2.5\n")
    lines = _refused(_cli(["train", "--config", str(cfg)], subprocess_env))
    assert lines == [f"imagegen train: {cfg}: key 'steps' expects an integer or null, found 2.5 (float)"]
    # the flag: argparse's int type refuses it with the same facts (flag, expected type, value) on its last line
    lines = _refused(_cli(["train", "--data", "/d", "--steps", "2.5"], subprocess_env))
    assert lines[-1] == "imagegen train: error: argument --steps: invalid int value: '2.5'"


def test_fractional_resolution_is_refused(tmp_path, subprocess_env):
    cfg = _yaml(tmp_path, "resolution: 48.5\n")
    lines = _refused(_cli(["preprocess", str(tmp_path), "--output", str(tmp_path / "out"), "--config", str(cfg)], subprocess_env))
    assert lines == [f"imagegen preprocess: {cfg}: key 'resolution' expects an integer, found 48.5 (float)"]
    lines = _refused(_cli(["preprocess", str(tmp_path), "--output", str(tmp_path / "out"), "--resolution", "48.5"], subprocess_env))
    assert lines[-1] == "imagegen preprocess: error: argument --resolution: invalid int value: '48.5'"


def test_a_numeric_string_is_a_number_where_a_float_is_expected(tmp_path):
    """min_std: "2" (quoted) and --min-std 2 both give 2.0; a word is still refused."""
    cfg = preprocess_job.config_from_args(preprocess_job.build_parser().parse_args(
        ["in", "--output", "out", "--config", str(_yaml(tmp_path, 'min_std: "2"\nresolution: 32\n'))]))
    assert cfg.min_std == 2.0 and type(cfg.min_std) is float and cfg.resolution == 32
    cfg = preprocess_job.config_from_args(preprocess_job.build_parser().parse_args(["in", "--output", "out", "--min-std", "2"]))
    assert cfg.min_std == 2.0
    with pytest.raises(ConfigError, match=r"key 'min_std' expects a number, found 'two' \(string\)$"):
        PreprocessConfig.from_yaml(_yaml(tmp_path, "min_std: two\n"))


def test_yaml_1_1_exponent_learning_rate_is_accepted(tmp_path):
    assert yaml.safe_load("lr_d: 2e-4") == {"lr_d": "2e-4"}  # the trap: PyYAML reads it as a string
    cfg, _ = train_job.config_from_args(["--config", str(_yaml(tmp_path, "data: /d\nlr_d: 2e-4\nlr_g: 1E-4\n"))])
    assert (cfg.lr_d, cfg.lr_g) == (2e-4, 1e-4) and type(cfg.lr_d) is float
    cfg, _ = train_job.config_from_args(["--data", "/d", "--lr-d", "2e-4"])
    assert cfg.lr_d == 2e-4


# ----------------------------------------------------------------------------- the rules
def test_unknown_keys_get_a_did_you_mean(tmp_path, subprocess_env):
    cfg = _yaml(tmp_path, "resolutoin: 64\nzzz: 1\n")
    lines = _refused(_cli(["preprocess", str(tmp_path), "--output", str(tmp_path / "out"), "--config", str(cfg)], subprocess_env))
    assert lines == [(f"imagegen preprocess: {cfg}: unknown preprocess config keys: 'resolutoin' (did you mean 'resolution'?), "
                      "'zzz' (no close match)")]
    cfg = _yaml(tmp_path, "data: /d\nstesp: 3\n")
    lines = _refused(_cli(["train", "--config", str(cfg)], subprocess_env))
    assert lines == [f"imagegen train: {cfg}: unknown training config keys: 'stesp' (did you mean 'steps'?)"]


def test_every_problem_is_one_line_and_enums_list_their_choices(tmp_path, subprocess_env):
    cfg = _yaml(tmp_path, 'data: /d\nmodel: gan\nprogress: "yes"\nbatch_size: "64"\ndeterministic: 1\nlr_g: .nan\n')
    lines = _refused(_cli(["train", "--config", str(cfg)], subprocess_env))
    assert lines == [
        f"imagegen train: {cfg}: key 'model' expects one of 'dcgan', 'cdcgan', 'vae', found 'gan' (string)",
        f"imagegen train: {cfg}: key 'progress' expects true or false, found 'yes' (string)",
        f"imagegen train: {cfg}: key 'batch_size' expects an integer, found '64' (string)",
        f"imagegen train: {cfg}: key 'deterministic' expects true or false, found 1 (integer)",
        f"imagegen train: {cfg}: key 'lr_g' expects a number, found nan (float)",
    ]


def test_broken_yaml_is_one_line(tmp_path, subprocess_env):
    cfg = _yaml(tmp_path, "resolution: [32\n")
    lines = _refused(_cli(["preprocess", str(tmp_path), "--output", str(tmp_path / "out"), "--config", str(cfg)], subprocess_env))
    assert len(lines) == 1 and lines[0].startswith(f"imagegen preprocess: {cfg}: not valid YAML at line 2")
    cfg = _yaml(tmp_path, "- 1\n- 2\n")
    lines = _refused(_cli(["train", "--config", str(cfg)], subprocess_env))
    assert lines == [f"imagegen train: {cfg}: expected a YAML mapping of config keys, found [1, 2] (list)"]


def test_refusals_import_neither_spark_nor_torch(tmp_path, subprocess_env):
    """Checked before any heavy work: the process that refuses never imports pyspark or torch."""
    p_cfg, t_cfg = _yaml(tmp_path, 'dedup: "no"\n'), tmp_path / "t.yaml"
    t_cfg.write_text("data: /d\nsteps: 2.5\n")
    code = ("import sys; from jobs.cli import main; "
            f"rcs = [main(['preprocess', 'in', '--output', 'out', '--config', {str(p_cfg)!r}]), main(['train', '--config', {str(t_cfg)!r}])]; "
            "print(rcs, sorted(m for m in ('pyspark', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.stdout.strip() == "[2, 2] []", proc.stderr


def test_one_rule_set_derived_from_both_dataclasses():
    """Every field of both configs has a rule (no NotImplementedError), its default passes unchanged, and the rules
    come from the field types: the same value is refused for an int field and accepted for a float field."""
    for cls, required in ((PreprocessConfig, {}), (TrainConfig, {"data": "/d"})):
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        assert check_fields(cls, {**defaults, **required}, "defaults") == {**defaults, **required}
    assert check_fields(TrainConfig, {"ema_decay": 1}, "x") == {"ema_decay": 1.0}  # int -> float field
    with pytest.raises(ConfigError, match=r"^x: key 'seed' expects an integer, found 1.0 \(float\)$"):
        check_fields(TrainConfig, {"seed": 1.0}, "x")
    with pytest.raises(ConfigError, match=r"^x: key 'min_size' expects an integer, found true \(boolean\)$"):
        check_fields(PreprocessConfig, {"min_size": True}, "x")
    with pytest.raises(ConfigError, match=r"^x: key 'data' expects a string, found 5 \(integer\)$"):
        check_fields(TrainConfig, {"data": 5}, "x")
    with pytest.raises(ConfigError, match=r"^x: key 'max_aspect' expects a number, found '1e999' \(string\)$"):
        check_fields(PreprocessConfig, {"max_aspect": "1e999"}, "x")  # parses, but to inf
    # enums take their values (and an integer for a digit-valued enum), optional fields take null, dashes are read as _
    got = check_fields(PreprocessConfig, {"channels": 1, "fit": "pad", "min-similarity": None, "partitions": None}, "x")
    assert got == {"channels": ChannelMode.GREY, "fit": FitMode.PAD, "min_similarity": None, "partitions": None}
    assert check_fields(TrainConfig, {"model": ModelKind.VAE, "z_dim": None}, "x") == {"model": ModelKind.VAE, "z_dim": None}
    with pytest.raises(ConfigError, match=r"key 'channels' expects one of 'auto', '1', '3', found 2 \(integer\)"):
        check_fields(PreprocessConfig, {"channels": 2}, "x")
