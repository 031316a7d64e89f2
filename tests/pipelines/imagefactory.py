"""Generators of test images and corpora (reusable by any test or benchmark).

Everything is generated from seeds; no downloads. `write_corpus` writes one file per conversion
case and per reject reason and returns what each file must become, known by construction.
"""
from __future__ import annotations

import dataclasses
import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


# ----------------------------------------------------------------------------- pixels
def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth-ish RGB image with structure and noise (compresses like a photo, not like a flat fill)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.5, 6, 2).tolist() + [rng.uniform(0, 6.28)]
        img[..., c] = 127 + 80 * np.sin(fx * 6.28 * x / width + phase) * np.cos(fy * 6.28 * y / height)
    for _ in range(6):  # a few blobs
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.3) * min(width, height)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def halves(width: int, height: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    """Top half one colour, bottom half another: orientation is visible after any fit."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[: height // 2] = top
    arr[height // 2:] = bottom
    return Image.fromarray(arr, "RGB")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def jpeg_with_orientation(upright: Image.Image, orientation: int, quality: int = 95) -> bytes:
    """Store `upright` transformed so that applying EXIF `orientation` gives `upright` back."""
    # exif_transpose applies these to the stored image; store the inverse.
    inverse = {
        1: None,
        3: Image.Transpose.ROTATE_180,
        6: Image.Transpose.ROTATE_90,   # tag 6 = "rotate 90 CW to display": store it rotated CCW
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = upright.transpose(inverse) if inverse is not None else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=quality, exif=exif.tobytes())


def png_bomb_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    # a few KB of zlib stream for the first rows only: the file is tiny, the declared image is not
    idat = zlib.compress(b"\x00" * (width * 3 + 1) * 2, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def corrupt_png(seed: int = 0) -> bytes:
    """A PNG with a valid header whose compressed pixel data is garbage (decode_error)."""
    good = encode(photo_like(64, 64, seed), "PNG")
    start = good.index(b"IDAT") + 4
    data = bytearray(good)
    rng = np.random.default_rng(seed)
    data[start + 10: start + 400] = rng.integers(0, 256, 390, dtype=np.uint8).tobytes()
    # fix the chunk CRC so the failure is in the zlib/pixel data, not the chunk checksum
    length = struct.unpack(">I", bytes(data[start - 8: start - 4]))[0]
    body = bytes(data[start - 4: start + length])
    data[start + length: start + length + 4] = struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return bytes(data)


# ----------------------------------------------------------------------------- corpus
@dataclasses.dataclass(frozen=True)
class Expected:
    name: str                      # relative path under the corpus root
    kind: str                      # "image" | "reject"
    reason: str | None = None      # RejectReason value for rejects
    label: str | None = None       # the dirs label (parent directory) for images
    orig_mode: str | None = None   # PIL mode before conversion, for images
    rgb: tuple[int, int, int] | None = None  # the colour every output pixel must have (flat cases), else None


def _files(min_size: int = 32) -> list[tuple[str, bytes, Expected]]:
    """(relative path, bytes, expectation). Images are 48..120 px so tests stay fast."""
    files: list[tuple[str, bytes, Expected]] = []

    def add(name: str, data: bytes, **exp) -> None:
        files.append((name, data, Expected(name=name, **exp)))

    photo = photo_like(96, 80, seed=1)
    add("cats/rgb.jpg", encode(photo, "JPEG", quality=90), kind="image", label="cats", orig_mode="RGB")
    add("cats/rgb.png", encode(photo_like(80, 96, seed=2), "PNG"), kind="image", label="cats", orig_mode="RGB")
    add("cats/gray.jpg", encode(photo_like(72, 72, seed=3).convert("L"), "JPEG"), kind="image", label="cats", orig_mode="L")
    add("cats/cmyk.jpg", encode(photo_like(64, 64, seed=4).convert("CMYK"), "JPEG"), kind="image", label="cats", orig_mode="CMYK")
    add("cats/bilevel.png", encode(photo_like(64, 64, seed=5).convert("1"), "PNG"), kind="image", label="cats", orig_mode="1")
    add("dogs/palette.gif", encode(photo_like(64, 64, seed=6).convert("P"), "GIF"), kind="image", label="dogs", orig_mode="P")
    # palette with a transparent index: the transparent area must come out white
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 32, 64, 64))  # bottom half blue, top half index 0 = transparent
    add("dogs/palette_transparent.png", encode(pal, "PNG", transparency=0), kind="image", label="dogs", orig_mode="P")
    # fully transparent RGBA -> white; LA half transparent
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:32, :, 3] = 0      # top transparent -> white
    rgba[32:, :, 3] = 255    # bottom opaque red-ish
    add("dogs/rgba.png", encode(Image.fromarray(rgba, "RGBA"), "PNG"), kind="image", label="dogs", orig_mode="RGBA")
    la = np.zeros((64, 64, 2), np.uint8)
    la[..., 0] = 0
    la[:, :32, 1] = 0         # left transparent -> white
    la[:, 32:, 1] = 255       # right opaque black
    add("dogs/la.png", encode(Image.fromarray(la, "LA"), "PNG"), kind="image", label="dogs", orig_mode="LA")
    # 16-bit grey: a ramp 0..65535 across x
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    add("dogs/gray16.png", encode(Image.fromarray(ramp, "I;16"), "PNG"), kind="image", label="dogs", orig_mode="I;16")
    # animated GIF: first frame red/blue halves, second frame green
    frames = [halves(64, 64, (255, 0, 0), (0, 0, 255)).convert("P"), Image.new("RGB", (64, 64), (0, 255, 0)).convert("P")]
    add("birds/animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
        kind="image", label="birds", orig_mode="P")
    add("birds/webp.webp", encode(photo_like(64, 64, seed=7), "WEBP", quality=90), kind="image", label="birds", orig_mode="RGB")
    # EXIF orientation 6: upright is red on top, blue at the bottom
    add("birds/rotated.jpg", jpeg_with_orientation(halves(120, 80, (255, 0, 0), (0, 0, 255)), 6),
        kind="image", label="birds", orig_mode="RGB")
    add("top_level.png", encode(photo_like(64, 64, seed=8), "PNG"), kind="image", label=None, orig_mode="RGB")

    # rejects, one per reason
    add("bad/empty.jpg", b"", kind="reject", reason="empty_file")
    add("bad/notes.txt", b"this is not an image\n" * 10, kind="reject", reason="not_an_image")
    full = encode(photo_like(96, 96, seed=9), "JPEG", quality=95)
    add("bad/truncated.jpg", full[: len(full) // 2], kind="reject", reason="truncated")
    add("bad/corrupt.png", corrupt_png(seed=10), kind="reject", reason="decode_error")
    add("bad/tiny.png", encode(photo_like(12, 12, seed=11), "PNG"), kind="reject", reason="too_small")
    add("bad/bomb.png", png_bomb_header(100_000, 100_000), kind="reject", reason="too_large")
    add("bad/wide.png", encode(photo_like(400, 40, seed=12), "PNG"), kind="reject", reason="bad_aspect")
    add("bad/blank.png", encode(Image.new("RGB", (64, 64), (90, 90, 90)), "PNG"), kind="reject", reason="blank")
    float_img = Image.fromarray(np.random.default_rng(13).random((48, 48), dtype=np.float32), "F")
    add("bad/float.tif", encode(float_img, "TIFF"), kind="reject", reason="unsupported_mode")
    return files


def write_corpus(root: Path) -> dict[str, Expected]:
    """Write every conversion case and every reject reason under root; {relative path: Expected}."""
    out = {}
    for name, data, exp in _files():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[name] = exp
    return out


def corpus_members() -> list[tuple[str, bytes, Expected]]:
    """The same cases as (name, bytes, Expected), for tar shards and Parquet inputs."""
    return _files()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_photo_jpegs(root: Path, n: int, sizes: tuple[tuple[int, int], ...] = ((512, 512), (1024, 768)),
                      quality: int = 85, seed: int = 0) -> list[Path]:
    """n photo-like JPEGs cycling through `sizes` (for benchmarks)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        path = root / f"img_{i:06d}.jpg"
        path.write_bytes(encode(photo_like(w, h, seed=seed + i), "JPEG", quality=quality))
        paths.append(path)
    return paths
