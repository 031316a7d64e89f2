"""What every `imagegen` subcommand's parser shares: a typo'd option is named with a suggestion before anything else
(`--ouput` -> "unknown option --ouput; did you mean --output?", not "the following arguments are required: --output"),
and --help shows defaults next to the examples in the module docstring."""
from __future__ import annotations

import argparse
import difflib
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples in the description kept as written; `(default: X)` appended to options that have a real default (not
    None / False / suppressed, which mean "from the config")."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # `--out` must not silently mean `--output`
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        known = set(self._option_string_actions)
        for token in argv:
            if token == "--":
                break
            if token.startswith("--") and token.split("=", 1)[0] not in known:
                name = token.split("=", 1)[0]
                close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
                self.error(f"unknown option {name}" + (f"; did you mean {close[0]}?" if close else ""))
        return super().parse_known_args(argv, namespace)
