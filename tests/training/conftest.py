"""Datasets for training tests.

`digits_dataset` writes a small dataset in the schemas/ layout straight with pyarrow, from
scikit-learn's digits (8x8 grey, upscaled, 10 classes), with a row-group layout the reader tests
control. Training tests use `tiny_dataset` (tests/conftest.py), made by the real preprocess job.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from schemas import IMAGES_ARROW, SCHEMA_VERSION, DatasetLayout, Manifest


def write_digits_dataset(root: Path, n: int = 96, resolution: int = 32, rows_per_group: int = 16, files: int = 2) -> Path:
    """n digit images at `resolution`, RGB, raw pixels, labels "0".."9", in `files` Parquet files."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[:n] * (255.0 / 16.0)).astype(np.uint8)  # (n, 8, 8), 0..16 -> 0..255
    targets = digits.target[:n]
    classes = [str(i) for i in range(10)]
    rows = []
    for i, (img, target) in enumerate(zip(images, targets)):
        rgb = Image.fromarray(img, "L").resize((resolution, resolution), Image.Resampling.BICUBIC).convert("RGB")
        pixels = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
        buf = io.BytesIO()
        rgb.save(buf, "PNG")
        raw = buf.getvalue()
        sha = hashlib.sha256(raw + i.to_bytes(4, "little")).hexdigest()  # distinct even for identical digits
        grey = pixels.mean(axis=2)
        hist = np.bincount(grey.astype(np.uint8).ravel(), minlength=256) / grey.size
        rows.append(
            {
                "image_id": sha[:32],
                "source_uri": f"file:/digits/{target}/{i:05d}.png",
                "sha256": sha,
                "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
                "phash": int(i),
                "label": str(target),
                "label_index": int(target),
                "orig_width": 8,
                "orig_height": 8,
                "orig_format": "PNG",
                "orig_mode": "L",
                "file_size": len(raw),
                "width": resolution,
                "height": resolution,
                "channels": 3,
                "pixel_encoding": "raw",
                "pixels": pixels.tobytes(),
                "brightness": float(pixels.mean()),
                "contrast": float(grey.std()),
                "entropy": float(-(hist[hist > 0] * np.log2(hist[hist > 0])).sum()),
                "run_id": "r0",
            }
        )
    layout = DatasetLayout(str(root))
    part_dir = Path(layout.images) / "run_id=r0"
    part_dir.mkdir(parents=True)
    per_file = (n + files - 1) // files
    listed = []
    for f in range(files):
        chunk = rows[f * per_file : (f + 1) * per_file]
        table = pa.Table.from_pylist(chunk, schema=IMAGES_ARROW)
        pq.write_table(table.drop(["run_id"]), part_dir / f"part-{f:05d}.parquet", row_group_size=rows_per_group)
        listed.append({"path": f"images/run_id=r0/part-{f:05d}.parquet", "rows": len(chunk)})
    stack = np.stack([np.frombuffer(r["pixels"], np.uint8).reshape(resolution, resolution, 3) for r in rows]) / 255.0
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        run_id="r0",
        resolution=resolution,
        channels=3,
        pixel_encoding="raw",
        classes=classes,
        counts={"inputs": n, "written": n, "rejected": {}, "duplicates": {"exact": 0, "near": 0}},
        label_counts={c: int((targets == int(c)).sum()) for c in classes},
        pixel_mean=stack.mean(axis=(0, 1, 2)).tolist(),
        pixel_std=stack.std(axis=(0, 1, 2)).tolist(),
        config={"resolution": resolution},
        input_fingerprint="digits",
        timings={},
        versions={},
        files={"images": listed, "rejects": [], "duplicates": []},
    )
    Path(layout.manifest).write_text(manifest.to_json())
    return root


@pytest.fixture(scope="session")
def digits_dataset(tmp_path_factory) -> Path:
    return write_digits_dataset(tmp_path_factory.mktemp("digits") / "ds")
