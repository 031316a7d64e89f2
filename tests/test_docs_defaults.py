"""Defaults the README and docs state are the config dataclasses' (13/14, item 7): a changed default fails here."""
from __future__ import annotations

import re
from pathlib import Path

from pipelines.config import PreprocessConfig
from pipelines.similarity import DEFAULT_MIN_SIMILARITY

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_command_table_states_the_preprocess_defaults():
    text = (ROOT / "README.md").read_text()
    assert re.findall(r"\[--near-dup-distance (\d+)\]", text) == [str(PreprocessConfig.near_dup_distance)]
    assert re.findall(r"\[--min-similarity ([0-9.]+)\]", text) == [str(DEFAULT_MIN_SIMILARITY)]


def test_docs_dedup_states_the_job_default_distance():
    text = (ROOT / "docs" / "dedup.md").read_text()
    stated = re.findall(r"`--near-dup-distance D` \(default (\d+)", text)
    assert stated == [str(PreprocessConfig.near_dup_distance)]
