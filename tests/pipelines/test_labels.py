"""Label sources: directory names and CSV/JSON sidecars."""
from __future__ import annotations

import json

import pytest

from pipelines.config import LabelMode, PreprocessConfig, parse_labels_arg
from pipelines.labels import LabelResolver, label_from_dirs, parse_sidecar


def test_label_from_dirs_is_the_parent_directory_below_the_root():
    assert label_from_dirs("cat/001.jpg") == "cat"
    assert label_from_dirs("animals/dog/002.jpg") == "dog"
    assert label_from_dirs("003.jpg") is None
    assert label_from_dirs(None) is None
    assert label_from_dirs("file:/data/cat/x.jpg") == "cat"  # URI-list entries: the URI's parent


def test_csv_sidecar():
    text = "path,label\ncat/001.jpg,cat\n./dog/002.jpg,dog\n003.jpg,\n"
    assert parse_sidecar(text, "labels.csv") == {"cat/001.jpg": "cat", "dog/002.jpg": "dog"}
    assert parse_sidecar("filename,Label\na.jpg,x\n", "l.CSV") == {"a.jpg": "x"}
    with pytest.raises(ValueError, match="'label'"):
        parse_sidecar("path,klass\na.jpg,x\n", "labels.csv")


def test_json_sidecar_object_and_list():
    assert parse_sidecar(json.dumps({"a.jpg": "x", "b.jpg": 3}), "l.json") == {"a.jpg": "x", "b.jpg": "3"}
    assert parse_sidecar(json.dumps([{"path": "a.jpg", "label": "x"}]), "l.json") == {"a.jpg": "x"}
    with pytest.raises(ValueError, match="JSON object"):
        parse_sidecar("42", "l.json")
    with pytest.raises(ValueError, match=".csv or .json"):
        parse_sidecar("", "labels.yaml")


def test_dirs_resolver_and_sidecar_matching_is_a_spark_join():
    # Sidecar matching (URI, then relative path, then basename; literal keys) runs as a Spark join and is
    # tested in test_labels_strict.py; the resolver itself only labels from directories.
    assert LabelResolver(LabelMode.DIRS).resolve("k/z.jpg", "file:/d/k/z.jpg") == ("k", None)
    assert LabelResolver(LabelMode.SIDECAR).resolve("a/x.jpg", "file:/d/a/x.jpg") == (None, None)


def test_labels_argument_and_config_validation():
    assert parse_labels_arg("dirs") == (LabelMode.DIRS, None)
    assert parse_labels_arg("none") == (LabelMode.NONE, None)
    assert parse_labels_arg("/x/l.json") == (LabelMode.SIDECAR, "/x/l.json")
    with pytest.raises(ValueError, match="dirs"):
        parse_labels_arg("folders")
    with pytest.raises(ValueError, match="labels_path"):
        PreprocessConfig(labels=LabelMode.SIDECAR)
    with pytest.raises(ValueError, match="fit: expected one of"):
        PreprocessConfig(fit="squash")


def test_yaml_config_with_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("resolution: 96\nfit: pad\nmin-std: 4.5\n")
    cfg = PreprocessConfig.from_yaml(path, resolution=48)
    assert (cfg.resolution, cfg.fit.value, cfg.min_std) == (48, "pad", 4.5)
    path.write_text("resolutoin: 96\n")
    with pytest.raises(ValueError, match="unknown preprocess config keys"):
        PreprocessConfig.from_yaml(path)
