"""Strict, typed loading of a frozen config dataclass (PreprocessConfig, TrainConfig) from YAML or flags.

One function, `check_fields(cls, values, source, what)`, derives every check from the dataclass's field types
(typing.get_type_hints), so both configs follow one rule set, checked before any Spark or torch work starts:

  * unknown keys are refused, with a did-you-mean suggestion (difflib); `min-std` is read as `min_std`;
  * bool:  only a real boolean (YAML true/false). The strings "no"/"yes"/"false" are refused: YAML 1.1 reads
    unquoted no/yes as booleans already, so a quoted one is a mistake, not a boolean;
  * int:   only an integer. 2.5, 3.0 and "3" are refused (nothing is rounded or parsed);
  * float: a number, or a string that spells a finite decimal number. YAML 1.1 (PyYAML) reads `2e-4` and `1e3`
    as strings (its float pattern needs a dot), so `lr_d: 2e-4` must work. This is the only place a string
    is read as a number;
  * enum:  one of its values; a whole number is read as its decimal string (`channels: 3`), since an enum
    whose values are digits is still spelled as a number in YAML;
  * str:   only a string (a number where a path or a name is expected is refused: quote it);
  * tuple[str, ...]: a list of strings (`disallowed_domains: [example.com]`);
  * `X | None`: null (YAML `null` or `~`) as well.

Every problem is one line naming the source (the file, or "command line"), the key, the expected type and the
value found: `config.yaml: key 'steps' expects an integer, found 2.5 (float)`. Pure: imports neither
`pipelines` nor `training`.
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml

# A finite decimal number as written in a config file: 2e-4, -1.5, .5, 3 (no "nan", "inf", "0x10", "1_000").
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


# Bounds on what a config file may be (13/14): a config is a few dozen keys, so anything past these is not one.
MAX_CONFIG_BYTES = 64 * 1024   # file size
MAX_YAML_ALIASES = 100         # `*alias` references: nine levels of nine aliases expand to 9^9 nodes
MAX_YAML_DEPTH = 32            # nesting levels (PyYAML's composer recurses, and dies of RecursionError near 300)
_SHOWN = reprlib.Repr()        # a value echoed in a message: at most ~200 characters, however large it is
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxlevel = 160, 160, 6, 6, 3


def shown(value: Any) -> str:
    """repr(value), truncated (reprlib) so that no message echoing a user value grows past ~200 characters."""
    text = _SHOWN.repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses a document with more than MAX_YAML_ALIASES alias references (before expanding them)."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases (*name): not a config file")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels: not a config file")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class ConfigError(ValueError):
    """One or more bad config values; str() is one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _describe(value: Any) -> str:
    """How a found value is shown: the value as written, then its YAML/Python type."""
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", type(None): "null", list: "list",
            dict: "mapping"}.get(type(value), type(value).__name__)
    text = str(value).lower() if isinstance(value, bool) or value is None else shown(value)
    return f"{text} ({kind})"


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); X -> (X, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _expects(kind: Any, optional: bool) -> str:
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        text = "one of " + ", ".join(repr(m.value) for m in kind)
    elif kind == tuple[str, ...]:
        text = "a list of strings"
    else:
        text = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
    return text + (" or null" if optional else "")


def _coerce(kind: Any, value: Any) -> Any:
    """The value converted to `kind`, or raise TypeError when the rule in the module docstring refuses it."""
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        if isinstance(value, kind):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                pass
        raise TypeError
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()) and math.isfinite(float(value)):
            return float(value)
        raise TypeError
    if kind is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if kind == tuple[str, ...]:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise TypeError
    raise NotImplementedError(f"no config rule for field type {kind!r}")  # a new field type needs a rule here


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML config file -> its mapping (empty file: {}); a syntax error or a non-mapping is one ConfigError line."""
    try:
        size = os.path.getsize(path)
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([f"{os.fspath(path)}: {size} bytes, more than a config file holds (at most {MAX_CONFIG_BYTES})"])
        with open(path, encoding="utf-8", errors="strict") as f:
            loader = _BoundedLoader(f)  # what yaml.safe_load does, with the alias bound
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{os.fspath(path)}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except RecursionError:  # the scanner's own recursion, before the composer's depth bound is reached
        raise ConfigError([f"{os.fspath(path)}: nested too deep to be a config file"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError([f"{os.fspath(path)}: not valid YAML{where}: {shown(str(getattr(exc, 'problem', None) or exc))[1:-1]}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{os.fspath(path)}: expected a YAML mapping of config keys, found {_describe(data)}"])
    return data


def check_fields(cls: type, values: Mapping[str, Any], source: str, what: str = "config") -> dict[str, Any]:
    """`values` (from YAML or flags) checked and converted against the fields of dataclass `cls`.

    Keys may use dashes (`min-std`). Returns {field name: converted value}; raises ConfigError listing every
    problem, one line each. Cross-field rules (steps xor epochs, ranges) stay in the dataclass."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, Any] = {}
    problems: list[str] = []
    unknown: list[str] = []
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in hints or name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            unknown.append(f"{shown(str(key))} (did you mean {close[0]!r}?)" if close else f"{shown(str(key))} (no close match)")
            continue
        if name in out:
            problems.append(f"{source}: key {name!r} is given twice (as {str(key)!r} and its other spelling)")
            continue
        kind, optional = _split_optional(hints[name])
        if value is None and optional:
            out[name] = None
            continue
        try:
            out[name] = _coerce(kind, value)
        except TypeError:
            problems.append(f"{source}: key {shown(str(key))} expects {_expects(kind, optional)}, found {_describe(value)}")
    if unknown:
        problems.insert(0, f"{source}: unknown {what} keys: {', '.join(unknown)}")
    if problems:
        raise ConfigError(problems)
    return out
