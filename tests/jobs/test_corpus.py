"""The embedded corpora: MNIST through the numpy-only unpickler, and the demo's raw files."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from jobs.corpus import load_mnist, write_demo_corpus


def test_mnist_loads_as_uint8_digits():
    images, labels = load_mnist("valid")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and set(np.unique(labels)) == set(range(10))
    assert 0 < images.mean() < 60 and images.max() >= 250  # white strokes on black


def test_the_unpickler_refuses_anything_but_numpy(tmp_path):
    evil = tmp_path / "evil.pkl.gz"

    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    with gzip.open(evil, "wb") as f:
        pickle.dump(((np.zeros((1, 784), np.float32), Boom()), None, None), f)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        load_mnist("train", path=evil)


def test_demo_corpus_files(tmp_path):
    corpus = write_demo_corpus(tmp_path / "raw", per_class=3)
    files = [p for p in corpus.root.rglob("*") if p.is_file()]
    assert len(files) == corpus.files == 30 + corpus.duplicates + corpus.bad
    assert sorted(p.name for p in (corpus.root / "unsorted").iterdir()) == ["blank.png", "empty.png", "notes.jpg", "truncated.png"]


def test_demo_corpus_ground_truth_names_each_copy_with_its_original(tmp_path):
    corpus = write_demo_corpus(tmp_path / "raw", per_class=3)
    truth = corpus.write_truth(tmp_path / "truth.csv").read_text().splitlines()
    assert truth[0] == "source_uri,group" and len(truth) - 1 == corpus.images + corpus.duplicates
    copies = {u: g for u, g in corpus.groups.items() if u != g}
    assert len(copies) == corpus.duplicates == 10
    for uri, group in copies.items():
        name = uri.rsplit("/", 1)[1]
        original = group.rsplit("/", 1)[1]
        assert name in (f"copy-of-{original}", original.replace(".png", "-reencoded.jpg"))
        assert corpus.groups[group] == group and Path(group.removeprefix("file:")).exists()
