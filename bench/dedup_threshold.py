"""Measure pHash distances of photo variants vs distinct images, to choose --near-dup-distance D
and the verification threshold (numbers go to docs/dedup.md).

    .venv/bin/python bench/dedup_threshold.py [--resolution 64] [--generated 2400]

Variants: every bundled photo (scikit-image, scikit-learn samples) resized, JPEG re-encoded
(q40..q95), brightness/contrast changed a little, cropped a little, watermarked. Distinct images:
non-overlapping tiles of those photos, upscaled digits, and generated images (smooth random fields
plus random shapes). For each pair: d64 = distance of the 64-bit pHash of the decoded image (what
images/.phash holds) and d256 = distance of the 256-bit pHash of the normalised pixels (the
verification of pipelines/dedup.py). Offline, no downloads.
"""
from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.dedup import phash_int64, verify_hash_words  # noqa: E402

# (skimage.data.cat() is chelsea(): listed once.)
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "clock", "page", "text",
          "brick", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle", "colorwheel"]


def load_photos() -> dict[str, Image.Image]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = {}
    for name in PHOTOS:
        arr = getattr(skimage.data, name)()
        arr = arr[0] if isinstance(arr, tuple) else arr
        out[name] = Image.fromarray(arr).convert("RGB")
    for name, arr in zip(["china", "flower"], load_sample_images().images):
        out[name] = Image.fromarray(arr).convert("RGB")
    return out


def reencode(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def crop(img: Image.Image, frac: float, corner: bool = False) -> Image.Image:
    w, h = img.size
    dx, dy = int(w * frac), int(h * frac)
    return img.crop((0, 0, w - dx, h - dy)) if corner else img.crop((dx // 2, dy // 2, w - (dx - dx // 2), h - (dy - dy // 2)))


def watermark(img: Image.Image, frac: float) -> Image.Image:
    """Semi-transparent white box with dark text over `frac` of the width at the lower right."""
    out = img.copy().convert("RGBA")
    w, h = out.size
    bw, bh = int(w * frac), int(h * frac / 3)
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    d.rectangle((w - bw - 8, h - bh - 8, w - 8, h - 8), fill=(255, 255, 255, 140))
    d.text((w - bw, h - bh - 4), "(c) imagegen", fill=(20, 20, 20, 230))
    return Image.alpha_composite(out, layer).convert("RGB")


def variants(img: Image.Image) -> dict[str, Image.Image]:
    w, h = img.size
    v = {
        "resize_0.5": img.resize((w // 2, h // 2), Image.BILINEAR),
        "resize_0.25": img.resize((max(w // 4, 16), max(h // 4, 16)), Image.LANCZOS),
        "resize_2x": img.resize((w * 2, h * 2), Image.BICUBIC),
        "png_resave": reencode(img, "PNG"),
        "blur_r1": img.filter(ImageFilter.GaussianBlur(1)),
    }
    for q in (40, 60, 75, 95):
        v[f"jpeg_q{q}"] = reencode(img, "JPEG", quality=q)
    v["resize_0.5+jpeg_q50"] = reencode(v["resize_0.5"], "JPEG", quality=50)
    for f in (0.9, 0.95, 1.05, 1.1):
        v[f"brightness_{f}"] = ImageEnhance.Brightness(img).enhance(f)
    for f in (0.9, 1.1):
        v[f"contrast_{f}"] = ImageEnhance.Contrast(img).enhance(f)
    for f in (0.02, 0.05, 0.08):
        v[f"crop_center_{f}"] = crop(img, f)
    v["crop_corner_0.05"] = crop(img, 0.05, corner=True)
    for f in (0.15, 0.3):
        v[f"watermark_{f}"] = watermark(img, f)
    return v


def normalise(img: Image.Image, resolution: int) -> np.ndarray:
    """Centre square crop, then resize: a stand-in for the preprocess job's normalisation."""
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(img.crop(box).resize((resolution, resolution), Image.BILINEAR))


def generated(n: int, rng: np.random.Generator) -> list[Image.Image]:
    """Smooth random colour fields at random scales with random shapes: distinct, photo-like spectra."""
    from scipy.ndimage import gaussian_filter, zoom

    out = []
    for _ in range(n):
        size = int(rng.integers(96, 200))
        coarse = int(rng.integers(3, 12))
        field = rng.normal(size=(coarse, coarse, 3))
        img = zoom(field, (size / coarse, size / coarse, 1), order=3)[:size, :size]
        img = gaussian_filter(img + 0.3 * rng.normal(size=img.shape), sigma=(1.5, 1.5, 0))
        img = (img - img.min()) / (np.ptp(img) + 1e-9) * 255
        pil = Image.fromarray(img.astype(np.uint8))
        d = ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(0, 5))):
            x0, y0 = rng.integers(0, size, 2)
            x1, y1 = x0 + rng.integers(10, size // 2), y0 + rng.integers(10, size // 2)
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)((int(x0), int(y0), int(x1), int(y1)), fill=fill)
        out.append(pil)
    return out


MIN_STD = 8.0  # grey std below which a tile is (almost) blank: the preprocess job rejects those as BLANK


def tiles(photos: dict[str, Image.Image]) -> list[Image.Image]:
    """Non-overlapping quarter-size tiles: distinct content with natural-image statistics. Near-blank
    tiles (black sky, white page margins) are left out: they are identical pictures, and rejected upstream."""
    out = []
    for img in photos.values():
        w, h = img.size
        tw, th = w // 4, h // 4
        out += [img.crop((i * tw, j * th, (i + 1) * tw, (j + 1) * th)) for i in range(4) for j in range(4)]
    return [t for t in out if np.asarray(t.convert("L"), dtype=np.float32).std() >= MIN_STD]


def digits() -> list[Image.Image]:
    from sklearn.datasets import load_digits

    imgs = load_digits().images[:400]
    return [Image.fromarray((im * 16).clip(0, 255).astype(np.uint8)).resize((64, 64), Image.BICUBIC).convert("RGB") for im in imgs]


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount64(x: np.ndarray) -> np.ndarray:
    b = x.astype(np.uint64).view(np.uint8).reshape(*x.shape, 8)
    return _POP8[b].sum(-1, dtype=np.int32)


def pairwise(words: np.ndarray) -> np.ndarray:
    """words (n, k) int64 -> condensed pair distances (n*(n-1)/2,) over k*64 bits."""
    n = len(words)
    iu = np.triu_indices(n, 1)
    out = np.zeros(len(iu[0]), dtype=np.int32)
    u = words.view(np.uint64)
    for k in range(words.shape[1]):
        for start in range(0, len(out), 2_000_000):
            sl = slice(start, start + 2_000_000)
            out[sl] += popcount64(u[iu[0][sl], k] ^ u[iu[1][sl], k])
    return out


def hashes(img: Image.Image, resolution: int) -> tuple[int, list[int]]:
    return phash_int64(img), verify_hash_words(normalise(img, resolution))


def dist(a: int, b: int) -> int:
    return bin((a ^ b) & ((1 << 64) - 1)).count("1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--generated", type=int, default=2400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    photos = load_photos()

    # ---- variants: distance of each variant to its original
    per_kind: dict[str, list[tuple[int, int]]] = {}
    for img in photos.values():
        h0, v0 = hashes(img, args.resolution)
        for kind, var in variants(img).items():
            h1, v1 = hashes(var, args.resolution)
            per_kind.setdefault(kind, []).append((dist(h0, h1), sum(dist(a, b) for a, b in zip(v0, v1))))
    print(f"# variants of {len(photos)} photos: distance to the original (d64 of 64 bits, d256 of 256 bits)")
    print("| variant | max d64 | mean d64 | max d256 | mean d256 |")
    print("|---|---|---|---|---|")
    all_var = []
    for kind, ds in per_kind.items():
        a = np.array(ds)
        all_var.append(a)
        print(f"| {kind} | {a[:, 0].max()} | {a[:, 0].mean():.1f} | {a[:, 1].max()} | {a[:, 1].mean():.1f} |")
    var = np.concatenate(all_var)
    print(f"variant pairs: {len(var)}; d64 quantiles p50/p90/p95/p99/max = {np.percentile(var[:, 0], [50, 90, 95, 99, 100]).tolist()}")
    print(f"variant d256 quantiles p50/p90/p95/p99/max = {np.percentile(var[:, 1], [50, 90, 95, 99, 100]).tolist()}")

    print("\n# variants caught (d64 <= D, and with verification also d256 <= V), excluding png_resave (exact)")
    lossy = np.concatenate([np.array(ds) for kind, ds in per_kind.items() if kind != "png_resave"])
    mild = np.concatenate([np.array(ds) for kind, ds in per_kind.items() if not kind.startswith(("crop", "watermark", "png"))])
    print("| D | all variants | no verify: resize/jpeg/brightness/contrast/blur | V=48 | V=64 | V=80 |")
    print("|---|---|---|---|---|---|")
    for D in (4, 6, 8, 10, 12, 14, 16):
        c = lossy[:, 0] <= D
        print(f"| {D} | {c.mean():.3f} | {(mild[:, 0] <= D).mean():.3f} | " + " | ".join(f"{(c & (lossy[:, 1] <= V)).mean():.3f}" for V in (48, 64, 80)) + " |")

    # ---- distinct images
    groups = {"photo": tiles(photos) + list(photos.values()), "digit": digits(), "generated": generated(args.generated, rng)}
    distinct = [im for g in groups.values() for im in g]
    category = np.array([name for name, g in groups.items() for _ in g])
    hs = [hashes(im, args.resolution) for im in distinct]
    h64 = np.array([h for h, _ in hs], dtype=np.int64)[:, None]
    h256 = np.array([v for _, v in hs], dtype=np.int64)
    d64 = pairwise(h64)
    d256 = pairwise(h256)
    n_pairs = len(d64)
    print(f"\n# distinct images: {len(distinct)} ({len(tiles(photos))} photo tiles, {len(photos)} photos, 400 digits, {args.generated} generated); {n_pairs} pairs")
    print(f"d64: mean {d64.mean():.2f}, std {d64.std():.2f}, min {d64.min()}; d256: mean {d256.mean():.2f}, std {d256.std():.2f}, min {d256.min()}")
    iu = np.triu_indices(len(distinct), 1)
    pair_cat = np.char.add(np.char.add(category[iu[0]], "-"), category[iu[1]])
    print("| pair categories | pairs | mean d64 | min d64 | d64<=8 | d64<=10 | d64<=12 | d64<=10 and d256<=64 |")
    print("|---|---|---|---|---|---|---|---|")
    for pc in sorted(set(pair_cat.tolist())):
        sel = pair_cat == pc
        print(f"| {pc} | {int(sel.sum())} | {d64[sel].mean():.1f} | {d64[sel].min()} | {int((d64[sel] <= 8).sum())} | "
              f"{int((d64[sel] <= 10).sum())} | {int((d64[sel] <= 12).sum())} | {int(((d64[sel] <= 10) & (d256[sel] <= 64)).sum())} |")
    # False merges at scale, on the photo-like population (photos, tiles, generated; digits apart:
    # 8x8 handwriting upscaled is not a photo and collides at any hash length, see the table above).
    photo_like = ~(np.char.find(pair_cat, "digit") >= 0)
    p64, p256 = d64[photo_like], d256[photo_like]
    n_pl = len(p64)
    close = p64 <= 16
    print(f"\n# photo-like distinct pairs: {n_pl}; d64 mean {p64.mean():.2f} std {p64.std():.2f}; {int(close.sum())} pairs with d64 <= 16")
    print("| D | pairs d64<=D | P(d64<=D) | false-merge pairs 1M, no verify | 100M, no verify | V | P(d256<=V given d64<=16) | pairs d64<=D and d256<=V | false-merge pairs 1M, verified | 100M, verified | variants caught |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for D in (6, 8, 10, 12):
        k = int((p64 <= D).sum())
        p = max(k, 1) / n_pl  # at least one pair's worth: 0 observed is not 0 probability
        for V in (48, 56, 64):
            cond = max(int((close & (p256 <= V)).sum()), 1) / max(int(close.sum()), 1)
            joint = int(((p64 <= D) & (p256 <= V)).sum())
            caught = float(((lossy[:, 0] <= D) & (lossy[:, 1] <= V)).mean())
            print(f"| {D} | {k} | {p:.2e} | {p * 5e11:.3g} | {p * 5e15:.3g} | {V} | {cond:.3g} | {joint} | {p * cond * 5e11:.3g} | {p * cond * 5e15:.3g} | {caught:.3f} |")
    # Tail model for what 1M/100M images would meet: a normal fit of d64 (continuity-corrected),
    # reported next to the empirical fraction (which is 0 below a few bits on this sample).
    mu, sd = d64.mean(), d64.std()
    print("| D | distinct pairs with d64<=D (empirical) | fraction | normal-fit P(d64<=D) | expected false merges 1M | 100M | with verify: empirical pairs |")
    print("|---|---|---|---|---|---|---|")
    for D in range(0, 17):
        k = int((d64 <= D).sum())
        p_fit = 0.5 * math.erfc(-((D + 0.5 - mu) / sd) / math.sqrt(2))
        p = max(k / n_pairs, p_fit)
        kv = {V: int(((d64 <= D) & (d256 <= V)).sum()) for V in (48, 64, 80)}
        print(f"| {D} | {k} | {k / n_pairs:.2e} | {p_fit:.2e} | {p * 1e6 * (1e6 - 1) / 2:.3g} | {p * 1e8 * (1e8 - 1) / 2:.3g} | "
              + ", ".join(f"V={V}: {c}" for V, c in kv.items()) + " |")
    # Verification: P(d256 <= V | d64 small) measured on the closest distinct pairs we have.
    near = d64 <= 16
    print(f"\n# verification on the {int(near.sum())} distinct pairs with d64 <= 16 (the ones 64 bits would nearly merge)")
    for V in (32, 48, 56, 64, 72, 80, 96):
        frac_var = float((var[:, 1] <= V).mean())
        c = int((d256[near] <= V).sum())
        cond = c / max(int(near.sum()), 1)
        print(f"V={V}: variants passing {frac_var:.3f}; distinct pairs (d64<=16) passing {c} -> P(pass | d64 small) = {cond:.3g}; "
              f"all distinct pairs with d256<=V: {int((d256 <= V).sum())} ({(d256 <= V).mean():.2e})")
    print(f"\nelapsed {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
