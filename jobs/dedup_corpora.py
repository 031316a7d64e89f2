"""Near-duplicate test corpora with ground truth: real image files written from offline data.

Two kinds of data, because near-dup rules fail differently on them:

* `write_digit_corpus`: low-entropy images (handwritten digits, MNIST or scikit-learn's 8x8 digits).
  Distinct digits of one class look alike and share pHashes, so a rule that is loose enough for
  photos merges distinct digits. A fraction of the digits get planted duplicates (DIGIT_VARIANTS).
* `write_photo_corpus`: photos (scikit-image / scikit-learn bundled photos and non-overlapping large
  crops of them) with every variant of PHOTO_VARIANTS.

Both return a `Corpus`: the ground truth {file URI -> group} (the group is the URI of the original the
file was made from; originals are their own group), the variant kind of every file and the list of
distinct originals. URIs are spelled as the preprocess job spells a local file: "file:" + abspath.
Offline: MNIST comes from jobs.corpus.load_mnist (restricted unpickler), the rest from packages.
"""
from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from schemas.uri import path_to_uri

DIGIT_SOURCES = ("mnist-test", "mnist-train", "sklearn")
ORIGINAL = "original"
# Planted duplicates of a digit (the original is a 28x28 / 32x32 grey PNG).
DIGIT_VARIANTS = ("byte_copy", "upscale_2x", "jpeg", "darker", "rgb_blur")
# Variants of a photo (the original is an RGB PNG).
PHOTO_VARIANTS = ("byte_copy", "resize_0.5", "resize_0.75", "jpeg_q40", "jpeg_q60", "jpeg_q75", "jpeg_q95",
                  "png_resave", "brightness_1.04", "crop_2pct", "crop_3pct", "crop_5pct", "crop_4pct_kept",
                  "crop_mixed", "blur_r1", "watermark", "logo_corner", "logo_centre", "text_centre")
# Variants that cover part of the picture (an overlay).
OVERLAY_VARIANTS = ("watermark", "logo_corner", "logo_centre", "text_centre")
MAX_OVERLAY_AREA = 0.05  # an opaque overlay covers at most this fraction of the picture

MIN_PHOTO_SIDE = 256  # photo bases (and crops of them) are at least this many pixels on the short side


@dataclasses.dataclass(frozen=True)
class Corpus:
    root: Path
    groups: dict[str, str]     # file URI -> group (the URI of the original it was made from)
    kinds: dict[str, str]      # file URI -> ORIGINAL or the variant name
    originals: list[str]       # URIs of the distinct originals (one per group)

    def write_truth(self, path: Path) -> Path:
        """The ground truth as `imagegen dedup-eval --truth` reads it (CSV source_uri,group)."""
        lines = ["source_uri,group"] + [f"{uri},{group}" for uri, group in sorted(self.groups.items())]
        path.write_text("\n".join(lines) + "\n")
        return path


def file_uri(path: Path) -> str:
    """The source_uri the preprocess job gives a local file (schemas/uri.py: the one spelling)."""
    return path_to_uri(path)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------- digits
def _digit_images(source: str) -> np.ndarray:
    """(N, H, W) uint8 digits, white on black, exact repeats removed (they are not distinct pictures)."""
    if source in ("mnist-test", "mnist-train"):
        from jobs.corpus import load_mnist

        images, _ = load_mnist(source.split("-", 1)[1])
    elif source == "sklearn":
        from sklearn.datasets import load_digits

        # 8x8 at 0..16 is below the preprocess min_size: write them 4x larger (32x32, bicubic), as
        # a low-resolution icon would be stored.
        small = load_digits().images
        images = np.stack([
            np.asarray(Image.fromarray((im * 255.0 / 16.0).round().astype(np.uint8)).resize((32, 32), Image.Resampling.BICUBIC))
            for im in small
        ])
    else:
        raise ValueError(f"source: expected one of {DIGIT_SOURCES}, got {source!r}")
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    return images[np.sort(first)]


def _digit_variant(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[str, bytes]:
    """-> (file suffix, bytes) of one planted duplicate of a grey digit image."""
    w, h = img.size
    if kind == "upscale_2x":
        return ".png", _encode(img.resize((2 * w, 2 * h), Image.Resampling.BICUBIC), "PNG")
    if kind == "jpeg":
        return ".jpg", _encode(img, "JPEG", quality=int(rng.choice([75, 85, 95])))
    if kind == "darker":
        return ".png", _encode(ImageEnhance.Brightness(img).enhance(0.9), "PNG")
    if kind == "rgb_blur":
        return ".png", _encode(img.convert("RGB").filter(ImageFilter.GaussianBlur(0.5)), "PNG")
    raise ValueError(f"unknown digit variant {kind!r}")


def write_digit_corpus(root: Path, n_distinct: int, seed: int, source: str = "mnist-test",
                       dup_fraction: float = 0.25) -> Corpus:
    """`n_distinct` distinct digits (random, by `seed`) as grey PNGs under root/originals; for
    round(dup_fraction * n_distinct) of them, every DIGIT_VARIANTS duplicate under root/variants.
    The MNIST splits hold 10,000 (test) and 50,000 (train) digits, sklearn 1,797 (fewer after removing
    exact repeats); asking for more raises ValueError."""
    root = Path(root)
    images = _digit_images(source)
    if not 1 <= n_distinct <= len(images):
        raise ValueError(f"n_distinct: {source} has {len(images)} distinct digits, asked for {n_distinct}")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(images), size=n_distinct, replace=False)
    with_dups = set(rng.choice(picks, size=round(dup_fraction * n_distinct), replace=False).tolist())
    (root / "originals").mkdir(parents=True, exist_ok=True)
    (root / "variants").mkdir(parents=True, exist_ok=True)
    groups: dict[str, str] = {}
    kinds: dict[str, str] = {}
    originals: list[str] = []
    for i in picks.tolist():
        img = Image.fromarray(images[i], mode="L")
        data = _encode(img, "PNG")
        path = root / "originals" / f"{source}-{i:05d}.png"
        path.write_bytes(data)
        base = file_uri(path)
        groups[base], kinds[base] = base, ORIGINAL
        originals.append(base)
        if i not in with_dups:
            continue
        for kind in DIGIT_VARIANTS:
            suffix, blob = (".png", data) if kind == "byte_copy" else _digit_variant(img, kind, rng)
            vpath = root / "variants" / f"{source}-{i:05d}-{kind}{suffix}"
            vpath.write_bytes(blob)
            groups[file_uri(vpath)], kinds[file_uri(vpath)] = base, kind
    return Corpus(root, groups, kinds, originals)


# ----------------------------------------------------------------------------- photos
def _skimage(name: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        import skimage.data

        arr = getattr(skimage.data, name)()
        if name == "stereo_motorcycle":
            arr = arr[0]  # (left, right, disparity): the right view is nearly the left one, keep one
        img = Image.fromarray(arr)
        if img.mode == "RGBA":  # logo: composite on white, as the preprocess job does
            img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
        return img.convert("RGB")
    return load


def _sklearn(index: int) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        from sklearn.datasets import load_sample_images

        return Image.fromarray(load_sample_images().images[index]).convert("RGB")
    return load


# Bundled photos with a short side >= MIN_PHOTO_SIDE (skimage's page and text are smaller).
_PHOTO_LOADERS: dict[str, Callable[[], Image.Image]] = {
    **{n: _skimage(n) for n in ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "clock", "brick",
                                "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "retina",
                                "stereo_motorcycle", "colorwheel", "cell", "logo"]},
    "china": _sklearn(0),
    "flower": _sklearn(1),
}


def photo_families() -> dict[str, list[str]]:
    """{photo: [base names]}: each bundled photo and, when its short side is >= 2 * MIN_PHOTO_SIDE,
    its four non-overlapping quadrant crops ("name@q0".."name@q3"), distinct pictures with the same
    statistics. Split held-out sets by family, so no crop shares pixels with a tuning image."""
    out: dict[str, list[str]] = {}
    for name, load in _PHOTO_LOADERS.items():
        w, h = load().size
        out[name] = [name] + ([f"{name}@q{k}" for k in range(4)] if min(w, h) >= 2 * MIN_PHOTO_SIDE else [])
    return out


def load_photo(base: str) -> Image.Image:
    """An RGB photo base by name: a bundled photo or a quadrant crop "name@qK" (K = 0..3, row-major)."""
    name, _, quadrant = base.partition("@q")
    img = _PHOTO_LOADERS[name]()
    if not quadrant:
        return img
    w, h = img.size
    k = int(quadrant)
    x, y = (k % 2) * (w // 2), (k // 2) * (h // 2)
    return img.crop((x, y, x + w // 2, y + h // 2))


def watermark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A small translucent white text mark (about 4% of the height, 20-25% of the width) in a random
    corner, with a dark 1-px outline, as stock sites stamp photos."""
    w, h = img.size
    text = str(rng.choice(["(c) imagegen", "© stockphotos", "sample", "www.example.com"]))
    font = ImageFont.load_default(size=max(10, round(0.045 * h)))
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    left, top, right, bottom = d.textbbox((0, 0), text, font=font, stroke_width=1)
    margin = round(0.03 * min(w, h))
    corner = int(rng.integers(4))
    x = margin if corner % 2 == 0 else w - margin - (right - left)
    y = margin if corner // 2 == 0 else h - margin - (bottom - top)
    d.text((x - left, y - top), text, font=font, fill=(255, 255, 255, 200), stroke_width=1, stroke_fill=(0, 0, 0, 160))
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def _overlay_box(w: int, h: int, rng: np.random.Generator, where: str) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of an overlay of 3-5% of the picture's area, aspect 1:1 to 3:1 (wide), in a
    random corner 2-4% from the borders (where="corner") or centred (where="centre")."""
    area = rng.uniform(0.03, MAX_OVERLAY_AREA) * w * h
    aspect = rng.uniform(1.0, 3.0)
    bw = min(w - 2, max(4, round(np.sqrt(area * aspect))))
    bh = min(h - 2, max(4, round(area / bw)))
    if where == "centre":
        left, top = (w - bw) // 2, (h - bh) // 2
    else:
        margin = round(rng.uniform(0.02, 0.04) * min(w, h))
        corner = int(rng.integers(4))
        left = margin if corner % 2 == 0 else w - margin - bw
        top = margin if corner // 2 == 0 else h - margin - bh
    return left, top, left + bw, top + bh


def logo(img: Image.Image, rng: np.random.Generator, where: str) -> Image.Image:
    """An opaque logo: a solid rounded badge with a disc and a letter of another colour, 3-5% of the area."""
    out = img.copy()
    d = ImageDraw.Draw(out)
    box = _overlay_box(*img.size, rng, where)
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    ink = tuple(255 - v for v in fill)
    d.rounded_rectangle(box, radius=max(1, (box[3] - box[1]) // 5), fill=fill)
    side = box[3] - box[1]
    d.ellipse((box[0] + side // 6, box[1] + side // 6, box[0] + side - side // 6, box[3] - side // 6), fill=ink)
    font = ImageFont.load_default(size=max(8, side // 2))
    d.text((box[0] + side + 2, box[1] + side // 4), str(rng.choice(list("AKMQRSXZ"))), font=font, fill=ink)
    return _clip_to(out, img, box)


def text_banner(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Opaque text on an opaque banner at the centre, 3-5% of the area (a caption burnt in)."""
    out = img.copy()
    d = ImageDraw.Draw(out)
    box = _overlay_box(*img.size, rng, "centre")
    back = (0, 0, 0) if rng.random() < 0.5 else (255, 255, 255)
    d.rectangle(box, fill=back)
    text = str(rng.choice(["SAMPLE", "PREVIEW", "(c) 2026", "NOT FOR SALE"]))
    font = ImageFont.load_default(size=max(8, round(0.7 * (box[3] - box[1]))))
    d.text((box[0] + 2, box[1]), text, font=font, fill=tuple(255 - v for v in back))
    return _clip_to(out, img, box)  # the text stays inside its banner: the overlay is the banner


def _clip_to(edited: Image.Image, original: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """`edited` inside `box`, `original` elsewhere."""
    out = original.copy()
    out.paste(edited.crop(box), box[:2])
    return out


def photo_variant(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[str, bytes]:
    """-> (file suffix, bytes) of one PHOTO_VARIANTS variant (not byte_copy) of an RGB photo. Lossy
    variants are JPEG, every other edit is saved as PNG so that each file carries exactly one edit."""
    w, h = img.size
    if kind.startswith("resize_"):
        f = float(kind.split("_")[1])
        return ".png", _encode(img.resize((round(w * f), round(h * f)), Image.Resampling.LANCZOS), "PNG")
    if kind.startswith("jpeg_q"):
        return ".jpg", _encode(img, "JPEG", quality=int(kind[6:]))
    if kind == "png_resave":
        return ".png", _encode(img, "PNG", compress_level=1)  # same pixels, other bytes
    if kind == "brightness_1.04":
        return ".png", _encode(ImageEnhance.Brightness(img).enhance(1.04), "PNG")
    if kind in ("crop_2pct", "crop_3pct", "crop_5pct"):
        # a 2/3/5% border off every side, resized back to the original size.
        f = int(kind[5]) / 100
        dx, dy = round(f * w), round(f * h)
        return ".png", _encode(img.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.LANCZOS), "PNG")
    if kind == "crop_4pct_kept":
        dx, dy = round(0.04 * w), round(0.04 * h)  # 4% off every side, not resized back
        return ".png", _encode(img.crop((dx, dy, w - dx, h - dy)), "PNG")
    if kind == "crop_mixed":
        # 2-5% off each side independently (a shift as well as a zoom), not resized back
        left, top, right, bottom = (round(rng.uniform(0.02, 0.05) * s) for s in (w, h, w, h))
        return ".png", _encode(img.crop((left, top, w - right, h - bottom)), "PNG")
    if kind == "logo_corner":
        return ".png", _encode(logo(img, rng, "corner"), "PNG")
    if kind == "logo_centre":
        return ".png", _encode(logo(img, rng, "centre"), "PNG")
    if kind == "text_centre":
        return ".png", _encode(text_banner(img, rng), "PNG")
    if kind == "blur_r1":
        return ".png", _encode(img.filter(ImageFilter.GaussianBlur(1)), "PNG")
    if kind == "watermark":
        return ".png", _encode(watermark(img, rng), "PNG")
    raise ValueError(f"unknown photo variant {kind!r}")


def write_photo_corpus(root: Path, seed: int, photos: list[str] | None = None) -> Corpus:
    """Every base in `photos` (names from photo_families(); default all) as an RGB PNG under
    root/originals, and all PHOTO_VARIANTS of it under root/variants. `seed` picks the watermark's
    text and corner."""
    root = Path(root)
    bases = photos if photos is not None else [b for fam in photo_families().values() for b in fam]
    rng = np.random.default_rng(seed)
    (root / "originals").mkdir(parents=True, exist_ok=True)
    (root / "variants").mkdir(parents=True, exist_ok=True)
    groups: dict[str, str] = {}
    kinds: dict[str, str] = {}
    originals: list[str] = []
    for base in bases:
        img = load_photo(base)
        if min(img.size) < MIN_PHOTO_SIDE:
            raise ValueError(f"photo {base} is {img.size[0]}x{img.size[1]}, below MIN_PHOTO_SIDE={MIN_PHOTO_SIDE}")
        stem = base.replace("@", "-")
        data = _encode(img, "PNG")
        path = root / "originals" / f"{stem}.png"
        path.write_bytes(data)
        uri = file_uri(path)
        groups[uri], kinds[uri] = uri, ORIGINAL
        originals.append(uri)
        for kind in PHOTO_VARIANTS:
            suffix, blob = (".png", data) if kind == "byte_copy" else photo_variant(img, kind, rng)
            vpath = root / "variants" / f"{stem}-{kind}{suffix}"
            vpath.write_bytes(blob)
            groups[file_uri(vpath)], kinds[file_uri(vpath)] = uri, kind
    return Corpus(root, groups, kinds, originals)

