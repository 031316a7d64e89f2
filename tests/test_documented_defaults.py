"""Docs that cannot drift (13/14): every default that `--help`, the README or docs/ states is checked against the
config dataclasses. A flag's stated default D is checked by behaviour: the config a command builds with `--flag D`
equals the one it builds without the flag, whatever the field is called inside. A `Config.field` stated with a
value is checked against the dataclass field's default."""
from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

import pytest

from jobs import evaluate as evaluate_cli
from jobs import nightly as nightly_cli
from jobs import preprocess as preprocess_cli
from jobs import report as report_cli
from jobs import sample_data as sample_data_cli
from jobs import train as train_cli
from jobs.report_data import ReportConfig
from jobs.sample_data import SampleDataConfig
from training.evaluate import EvalConfig

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _evaluate(argv: list[str]) -> Any:
    ns = vars(evaluate_cli.build_parser().parse_args(["--checkpoint", "C", "--data", "D", *argv]))
    ns.pop("json")
    return EvalConfig(**ns)


# command -> (its parser, the config it builds from its required arguments plus `argv`)
COMMANDS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[list[str]], Any]]] = {
    "preprocess": (preprocess_cli.build_parser, lambda argv: preprocess_cli.config_from_args(
        preprocess_cli.build_parser().parse_args(["IN", "--output", "OUT", *argv]))),
    "train": (train_cli.build_parser, lambda argv: train_cli.config_from_args(["--data", "D", *argv])[0]),
    "nightly": (nightly_cli.build_parser, lambda argv: nightly_cli.config_from_args(["--input", "I", "--root", "R", *argv])[0]),
    "evaluate": (evaluate_cli.build_parser, _evaluate),
    "report": (report_cli.build_parser, lambda argv: ReportConfig(**vars(report_cli.build_parser().parse_args(["P", *argv])))),
    "sample-data": (sample_data_cli.build_parser, lambda argv: SampleDataConfig(
        **vars(sample_data_cli.build_parser().parse_args(["--kind", "shapes", "--out", "OUT", *argv])))),
}
CONFIGS = {cls.__name__: cls for cls in (EvalConfig, ReportConfig, SampleDataConfig, nightly_cli.NightlyConfig)}


def _config_classes() -> dict[str, type]:
    from pipelines.config import PreprocessConfig
    from pipelines.dedup.common import DedupConfig
    from training.config import TrainConfig
    from training.data.loader import LoaderConfig

    return {**CONFIGS, **{c.__name__: c for c in (PreprocessConfig, DedupConfig, TrainConfig, LoaderConfig)}}


# A stated literal: the whole token up to a delimiter, so "default: 3 x Spark's cores" or "default 64 Mpx" (prose,
# not a literal) is not read as a claim that the default is 3 or 64.
_LITERAL = r"(?P<value>[^\s,;()`]+?)(?=[,;)]|\.(?:\s|$)|\s*$|\s+\|)"
_STATED_AFTER = re.compile(r"\bdefault:?\s+" + _LITERAL)
_STATED_BEFORE = re.compile(r"(?P<value>[\w.*\[\]-]+) \((?:the )?default\)")
_DOC_FLAG = re.compile(r"`(?P<flag>--[a-z0-9-]+)(?: [^`]*)?`(?P<rest>[^`;]{0,40})")
_DOC_FIELD = re.compile(r"`(?P<cls>[A-Z]\w*Config)\.(?P<field>\w+)`[^.;]{0,80}?\b(?:is|default|=)\s+"
                        r"(?P<value>-?\d[\w.+-]*|True|False|None)\b")


def _stated(text: str) -> list[str]:
    return [m["value"] for m in _STATED_AFTER.finditer(text)] + [m["value"] for m in _STATED_BEFORE.finditer(text)]


def _effective(config: Any) -> dict[str, Any]:
    """A config's fields with each None the code resolves later replaced by what it resolves to (where that
    happens: pipelines/preprocess.py's dedup stage, TrainConfig.latent_dim)."""
    from pipelines.config import PreprocessConfig
    from pipelines.similarity import DEFAULT_MIN_SIMILARITY
    from training.config import TrainConfig

    values = dataclasses.asdict(config)
    if isinstance(config, PreprocessConfig) and config.min_similarity is None:
        values["min_similarity"] = DEFAULT_MIN_SIMILARITY
    if isinstance(config, TrainConfig):
        values["z_dim"] = config.latent_dim
    return values


def _holds(command: str, flag: str, value: str) -> bool | None:
    """Does `command --flag value` build the config that `command` builds without the flag? None when the flag
    refuses `value`: a computed default described in words ("default: today"), not a stated literal."""
    build = COMMANDS[command][1]
    if re.search(r"[A-Z]{3,}", value):  # "default PATH/report.html": a path made from an argument
        return None
    try:
        given = build([flag, value])
    except (SystemExit, ValueError):
        return None
    return _effective(given) == _effective(build([]))


def _flags() -> dict[str, list[str]]:
    """Each option string -> the commands that take it with a value."""
    found: dict[str, list[str]] = {}
    for name, (parser, _) in COMMANDS.items():
        for action in parser()._actions:
            if action.nargs != 0 and action.option_strings:
                for flag in action.option_strings:
                    found.setdefault(flag, []).append(name)
    return found


def test_every_default_help_states_is_the_configs():
    checked, wrong = 0, []
    for name, (parser, _) in COMMANDS.items():
        for action in parser()._actions:
            if action.nargs == 0 or not action.option_strings or not action.help:
                continue
            text = action.help % {"default": action.default} if "%(default)" in action.help else action.help
            for value in _stated(text):
                checked += 1
                if _holds(name, action.option_strings[-1], value) is False:
                    wrong.append(f"{name} {action.option_strings[-1]}: help says default {value!r}")
    assert checked >= 10, f"only {checked} stated defaults found in --help: the pattern no longer reads them"
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_parser_default_is_the_configs(name):
    """A flag left out gives the dataclass default: the parser holds no default of its own that could drift."""
    parser, build = COMMANDS[name]
    config = build([])
    for action in parser()._actions:
        if action.nargs == 0 or not action.option_strings or action.default in (None, argparse.SUPPRESS):
            continue
        value = action.default.value if hasattr(action.default, "value") else action.default
        given = build([action.option_strings[-1], str(value)])
        assert _effective(given) == _effective(config), f"{name} {action.option_strings[-1]}"


def test_every_default_the_docs_state_is_the_configs():
    flags, classes = _flags(), _config_classes()
    checked, wrong = 0, []
    for doc in DOCS:
        for lineno, line in enumerate(doc.read_text().splitlines(), 1):
            where = f"{doc.relative_to(REPO)}:{lineno}"
            for m in _DOC_FLAG.finditer(line):
                for value in _stated(m["rest"]):
                    checked += 1
                    takers = flags.get(m["flag"])
                    if not takers:
                        wrong.append(f"{where}: {m['flag']} is no command's option")
                    elif not any(_holds(c, m["flag"], value) in (True, None) for c in takers):
                        wrong.append(f"{where}: says {m['flag']} defaults to {value!r}; not so in {takers}")
            for m in _DOC_FIELD.finditer(line):
                checked += 1
                cls = classes.get(m["cls"])
                fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
                if m["field"] not in fields:
                    wrong.append(f"{where}: {m['cls']}.{m['field']} is no config field")
                elif str(fields[m["field"]].default) != m["value"]:
                    wrong.append(f"{where}: says {m['cls']}.{m['field']} = {m['value']}, "
                                 f"the dataclass has {fields[m['field']].default!r}")
    assert checked >= 4, f"only {checked} stated defaults found in the docs: the patterns no longer read them"
    assert not wrong, "\n".join(wrong)


def test_the_patterns_read_what_they_should_and_skip_prose():
    assert _stated("output side in pixels (default 64)") == ["64"]
    assert _stated("Spark master (default local[*]; under spark-submit") == ["local[*]"]
    assert _stated("center-crop (default), pad or stretch") == ["center-crop"]
    assert _stated("dirs | none (default) | PATH.csv") == ["none"]
    assert _stated("`--near-dup-distance` 12 (the default)") == ["12"]
    assert _stated("decode partitions (default: 3 x Spark's cores)") == []
    assert _stated("is checked against `max_pixels` (default 64 Mpx) before") == []
    m = _DOC_FIELD.search("(default 8; `DedupConfig.near_distance`, the library default for callers of `deduplicate`, is 12)")
    assert m is not None and (m["cls"], m["field"], m["value"]) == ("DedupConfig", "near_distance", "12")
    assert _holds("preprocess", "--near-dup-distance", "9") is False  # the check can fail
    assert _holds("nightly", "--date", "today") is None
