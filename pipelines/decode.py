"""The per-image work: original bytes -> one validated, normalised image row, or one reject row.

`process_image(content, source_uri, cfg)` is a pure function. Each image is decoded once
(JPEG at reduced scale via draft/DCT scaling) and everything is derived from that one pass:
validation, sha256, the pHash input, the normalised pixels, quality scores and the pixel sums
for the dataset mean/std. `decode_batch` maps it over an Arrow batch of source rows (what the
Spark stage's mapInArrow calls) and emits ONE table (`STAGED_ARROW`) with a `kind` column, so
images and rejects come from the same pass.

Conversion to RGB (also in docs/preprocess.md):
  1. the header is read first (PIL opens lazily): format, mode, declared size. The declared
     width*height is checked against `max_pixels` before any pixel is allocated (too_large),
     then too_small / bad_aspect on those original dimensions;
  2. animations: the first frame (PIL opens at frame 0); TIFFs with CCITT fax compression (group3/4) are
     rejected (decode_error) undecoded: libtiff can hand back a corrupt fax strip as success with undefined pixels;
  3. JPEG: draft() picks the largest DCT scale (1/2, 1/4, 1/8) that keeps both sides >=
     max(2 * resolution, 32), so the image is decoded once at reduced scale;
  4. EXIF orientation is applied (ImageOps.exif_transpose);
  5. mode -> RGB:  RGB as is;  L -> replicated;  1 -> L -> RGB;  P -> RGBA if it has
     transparency else RGB;  RGBA / LA / PA / RGBa / La -> composited on WHITE (white is the
     conventional background of cut-outs and icons; dropping alpha or using black leaves the
     black halos of premultiplied edges);  CMYK / YCbCr / LAB / HSV -> RGB through PIL's
     converters;  I;16* (16-bit grey) and I (32-bit int, how 16-bit files often load) ->
     clipped to 0..65535 and shifted right by 8 bits -> L -> RGB;  anything else (F: float
     with no defined range, ...) -> unsupported_mode;
  6. fit to resolution x resolution with LANCZOS (center-crop: the centred square of side
     min(w, h) is resampled; pad: the long side is scaled to the target and the image centred
     on black; stretch: both axes scaled independently).
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import io
import math
import warnings
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.config import FitMode, PreprocessConfig
from pipelines.fetch import Fetched, fetch_all, is_fetchable
from pipelines.labels import LabelResolver
from pipelines.source_rows import SOURCE_REASONS
from pipelines.phash import SMALL, canonical_gray, phash_batch
from schemas.images import IMAGES_ARROW, RejectReason
from schemas.pixels import PixelEncoding, decode_pixels, encode_pixels
from schemas.uri import uri_to_path

KIND_IMAGE = "image"
KIND_REJECT = "reject"

# The decode stage's single output table: every image column (nullable here, because reject rows
# leave them empty) plus what the later stages need. label_index is filled when images are written
# (the class map is known only after all labels are seen); run_id comes from the driver.
_IMAGE_FIELDS = [f.with_nullable(True) for f in IMAGES_ARROW if f.name not in ("source_uri",)]
STAGED_ARROW = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),       # "image" | "reject"
        pa.field("source_uri", pa.string(), nullable=False),
        *_IMAGE_FIELDS,
        pa.field("reason", pa.string(), nullable=True),      # reject rows: a RejectReason value
        pa.field("detail", pa.string(), nullable=True),      # reject rows: the message
        pa.field("label_key", pa.string(), nullable=True),   # the sidecar key that gave the label (unmatched-entry report)
        # Per-image channel sums of the written pixels (0..255 values), summed by Spark for the
        # dataset mean/std without reading the pixels again. int64 is exact: 255^2 * 4096^2 * 3 < 2^63.
        pa.field("sum_r", pa.int64(), nullable=True),
        pa.field("sum_g", pa.int64(), nullable=True),
        pa.field("sum_b", pa.int64(), nullable=True),
        pa.field("sumsq_r", pa.int64(), nullable=True),
        pa.field("sumsq_g", pa.int64(), nullable=True),
        pa.field("sumsq_b", pa.int64(), nullable=True),
        pa.field("n_pixels", pa.int64(), nullable=True),     # pixels per channel (width * height)
        # The grey (luma, `to_grey`) sums, for a dataset stored with one channel; equal to sum_r when is_grey.
        pa.field("sum_l", pa.int64(), nullable=True),
        pa.field("sumsq_l", pa.int64(), nullable=True),
        pa.field("is_grey", pa.bool_(), nullable=True),      # R == G == B at every normalised pixel (--channels auto)
    ]
)

# Grey levels 0..255 for statistics from histograms (exact integer sums, float moments).
_LEVELS = np.arange(256, dtype=np.int64)
_LEVELS_SQ = _LEVELS * _LEVELS
_FLEVELS = _LEVELS.astype(np.float64)
_FLEVELS_SQ = _FLEVELS * _FLEVELS

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_PIL_CONVERTIBLE = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_GREY_MODES = {"L", "1"} | _SIXTEEN_BIT  # to_rgb replicates these: R == G == B by construction


class UnsupportedModeError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Reject:
    source_uri: str
    reason: RejectReason
    detail: str


@dataclasses.dataclass(frozen=True)
class Decoded:
    row: dict[str, Any]   # STAGED_ARROW columns except kind/phash/label/label_key/run_id
    gray: np.ndarray      # (32, 32) uint8 canonical grey image, hashed per batch
    rgb: np.ndarray       # (resolution, resolution, 3) uint8, the normalised pixels (a read-only view of the stored bytes)
    decoded_size: tuple[int, int]  # (width, height) actually decoded (JPEG: after DCT scaling, before orientation)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any supported PIL mode -> RGB, by the rule in the module docstring."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "L":
        return image.convert("RGB")
    if mode == "1":
        return image.convert("L").convert("RGB")
    if mode == "P":
        if "transparency" in image.info or image.palette is not None and image.palette.mode == "RGBA":
            return _on_white(image.convert("RGBA"))
        return image.convert("RGB")
    if mode in _ALPHA_MODES:
        return _on_white(image.convert("RGBA"))
    if mode in _PIL_CONVERTIBLE:
        return image.convert("RGB")
    if mode in _SIXTEEN_BIT:
        # 16-bit grey: keep the top 8 bits (value >> 8) of the 0..65535 range.
        wide = np.asarray(image, dtype=np.int64)
        grey = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    raise UnsupportedModeError(f"pixel mode {mode!r} has no RGB rule (supported: RGB, L, 1, P, RGBA, LA, PA, CMYK, YCbCr, LAB, HSV, I;16, I)")


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def fit(image: Image.Image, resolution: int, mode: FitMode) -> Image.Image:
    """RGB image -> resolution x resolution RGB image (LANCZOS)."""
    w, h = image.size
    if mode == FitMode.STRETCH:
        return image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    if mode == FitMode.CENTER_CROP:
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        # resize(box=...) resamples just the centred square: crop and scale in one pass.
        return image.resize((resolution, resolution), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
    if mode == FitMode.PAD:
        scale = resolution / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        canvas = Image.new("RGB", (resolution, resolution), (0, 0, 0))
        canvas.paste(image.resize(size, Image.Resampling.LANCZOS), ((resolution - size[0]) // 2, (resolution - size[1]) // 2))
        return canvas
    raise ValueError(f"fit: expected a FitMode, got {mode!r}")


# CCITT (fax) TIFF codecs are not decoded. On a corrupt or early-terminated strip libtiff returns success after
# the first line (fax3.c: "don't error on badly-terminated strips"), often without any message, and Pillow keeps
# the unfilled rest of its strip buffer uninitialised: the pixels then change from run to run (found by
# tests/pipelines/test_fuzz_decode.py). Bi-level document scans are no training data for these models anyway.
_FAX_COMPRESSIONS = {"group3", "group4", "tiff_ccitt"}


def _reason_for_load_error(exc: BaseException) -> RejectReason:
    text = str(exc).lower()
    if isinstance(exc, EOFError) or "truncat" in text or "premature end" in text:
        return RejectReason.TRUNCATED
    return RejectReason.DECODE_ERROR


def process_image(content: bytes | None, source_uri: str, cfg: PreprocessConfig) -> Decoded | Reject:
    """Original bytes -> Decoded (row + grey for pHash + pixels) or Reject(reason, detail)."""
    if content is None:
        return Reject(source_uri, RejectReason.READ_ERROR, "no bytes could be read")
    size = len(content)
    if size == 0:
        return Reject(source_uri, RejectReason.EMPTY_FILE, "expected image bytes, found a 0-byte file")
    if size > cfg.max_file_bytes:
        return Reject(source_uri, RejectReason.TOO_LARGE, f"file is {size} bytes, limit max_file_bytes={cfg.max_file_bytes}")

    # 1. header only
    try:
        with warnings.catch_warnings():
            # We enforce our own (lower, configurable) limit from the header; PIL's warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(content))
    except UnidentifiedImageError:
        head = bytes(content[:16])
        return Reject(source_uri, RejectReason.NOT_AN_IMAGE, f"expected an image header (JPEG, PNG, GIF, WebP, TIFF, BMP, ...), found bytes {head!r}")
    except Image.DecompressionBombError as exc:
        return Reject(source_uri, RejectReason.TOO_LARGE, str(exc))
    except Exception as exc:  # a recognised signature with a broken header
        reason = RejectReason.TRUNCATED if _reason_for_load_error(exc) == RejectReason.TRUNCATED else RejectReason.NOT_AN_IMAGE
        return Reject(source_uri, reason, f"unreadable header: {type(exc).__name__}: {exc}")
    orig_w, orig_h = image.size
    orig_format, orig_mode = image.format or "unknown", image.mode
    if orig_w * orig_h > cfg.max_pixels:
        return Reject(
            source_uri, RejectReason.TOO_LARGE,
            f"declared {orig_w}x{orig_h} = {orig_w * orig_h} pixels, limit max_pixels={cfg.max_pixels}",
        )
    short, long_ = min(orig_w, orig_h), max(orig_w, orig_h)
    if short < cfg.min_size:
        return Reject(source_uri, RejectReason.TOO_SMALL, f"{orig_w}x{orig_h}: short side {short} < min_size={cfg.min_size}")
    if long_ / short > cfg.max_aspect:
        return Reject(
            source_uri, RejectReason.BAD_ASPECT, f"{orig_w}x{orig_h}: aspect {long_ / short:.2f} > max_aspect={cfg.max_aspect}"
        )

    if orig_format == "TIFF" and image.info.get("compression") in _FAX_COMPRESSIONS:
        return Reject(source_uri, RejectReason.DECODE_ERROR,
                      f"TIFF {orig_w}x{orig_h} with CCITT fax compression ({image.info['compression']}): not decoded, "
                      "libtiff can return a corrupt fax strip as success with undefined pixels")

    # 2.-5. one decode, at reduced scale where the format allows it
    try:
        if orig_format == "JPEG":
            # At least twice the target side: LANCZOS then does the last 2x or more, as it does for every
            # other format, so a JPEG and a PNG of one picture normalise to nearly the same pixels (decoding
            # straight at the target size leaves DCT scaling's softer low-pass; docs/dedup.md measures it).
            need = max(2 * cfg.resolution, SMALL)
            image.draft(image.mode, (need, need))
        image.load()
    except Exception as exc:
        return Reject(source_uri, _reason_for_load_error(exc), f"{orig_format} {orig_w}x{orig_h}: {type(exc).__name__}: {exc}")
    decoded_size = image.size
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception:
        oriented = image  # a corrupt EXIF block: keep the stored orientation rather than lose the image
    try:
        rgb = to_rgb(oriented)
    except UnsupportedModeError as exc:
        return Reject(source_uri, RejectReason.UNSUPPORTED_MODE, str(exc))
    except Exception as exc:
        return Reject(source_uri, RejectReason.DECODE_ERROR, f"converting {orig_mode} to RGB: {type(exc).__name__}: {exc}")

    # 6. derive everything from the decoded image
    gray32 = canonical_gray(rgb)
    out = fit(rgb, cfg.resolution, cfg.fit)
    raw = out.tobytes()  # HWC uint8, resolution * resolution * 3 bytes: the one copy out of PIL
    pixels = np.frombuffer(raw, dtype=np.uint8).reshape(cfg.resolution, cfg.resolution, 3)  # a view of `raw`
    # Every statistic comes from PIL's C histograms (one pass over the 3 x res^2 bytes each, no int64
    # copy of the pixels): 256 bins per channel give exact integer sums and sums of squares.
    rgb_hist = np.asarray(out.histogram(), dtype=np.int64).reshape(3, 256)  # (channel, level) pixel counts
    sums = rgb_hist @ _LEVELS                # (3,) exact sum of values per channel
    sumsq = rgb_hist @ _LEVELS_SQ            # (3,) exact sum of squares per channel
    grey_hist = np.asarray(out.convert("L").histogram(), dtype=np.int64)
    hist = grey_hist.astype(np.float64)
    n = hist.sum()
    grey_mean = float((hist * _FLEVELS).sum() / n)
    contrast = math.sqrt(max(0.0, float((hist * _FLEVELS_SQ).sum() / n) - grey_mean * grey_mean))
    if contrast < cfg.min_std:
        return Reject(source_uri, RejectReason.BLANK, f"grey std {contrast:.3f} < min_std={cfg.min_std} (a near-uniform image)")
    p = hist[hist > 0] / n
    entropy = float(-(p * np.log2(p)).sum())

    stored = encode_pixels(pixels, cfg.pixel_encoding) if cfg.pixel_encoding is not PixelEncoding.RAW else raw
    # Grey: PIL's L, 1 and 16-bit modes are grey by construction; anything else is grey when its three
    # channels agree everywhere (an RGB file of a grey picture). Two comparisons of res^2 bytes each.
    is_grey = orig_mode in _GREY_MODES or bool(np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2]))
    sha = hashlib.sha256(content).hexdigest()
    row = {
        "source_uri": source_uri,
        "image_id": sha[:32],
        "sha256": sha,
        "pixels_sha256": hashlib.sha256(raw).hexdigest(),
        "orig_width": orig_w,
        "orig_height": orig_h,
        "orig_format": orig_format,
        "orig_mode": orig_mode,
        "file_size": size,
        "width": cfg.resolution,
        "height": cfg.resolution,
        "channels": 3,
        "pixel_encoding": cfg.pixel_encoding.value,
        "pixels": stored,
        "brightness": float(sums.sum()) / (3 * cfg.resolution * cfg.resolution),
        "contrast": contrast,
        "entropy": entropy,
        "sum_r": int(sums[0]), "sum_g": int(sums[1]), "sum_b": int(sums[2]),
        "sumsq_r": int(sumsq[0]), "sumsq_g": int(sumsq[1]), "sumsq_b": int(sumsq[2]),
        "n_pixels": cfg.resolution * cfg.resolution,
        "sum_l": int(grey_hist @ _LEVELS), "sumsq_l": int(grey_hist @ _LEVELS_SQ),
        "is_grey": is_grey,
    }
    return Decoded(row=row, gray=gray32, rgb=pixels, decoded_size=decoded_size)


def read_local(uri: str) -> bytes:
    """Bytes of a local file given as a file: URI (file:/x, file:///x) or a plain path."""
    with open(uri_to_path(uri), "rb") as f:
        return f.read()


# ITU-R 601-2 luma in PIL's fixed point (Convert.c, rgb2l): L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16.
# The weights sum to 65536, so a grey pixel (R == G == B == v) maps to v exactly.
_LUMA = np.array([19595, 38470, 7471], dtype=np.uint32)


def to_grey(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> (H, W, 1), bit for bit what PIL's convert("L") gives (tests check it)."""
    luma = (pixels.astype(np.uint32) @ _LUMA + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


def reduce_to_grey(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: images/ rows stored with 3 channels -> the same rows with 1 channel (luma)."""
    for batch in batches:
        cols = batch.to_pydict()
        out = []
        for data, w, h, c, enc in zip(cols["pixels"], cols["width"], cols["height"], cols["channels"], cols["pixel_encoding"]):
            px = decode_pixels(data, h, w, c, enc)
            out.append(encode_pixels(px if c == 1 else to_grey(px), enc))
        cols["pixels"] = out
        cols["channels"] = [1] * len(out)
        yield pa.RecordBatch.from_pydict(cols, schema=batch.schema)


def _source_reject(uri: str, error: str) -> Reject:
    reason, sep, detail = error.partition(": ")
    if sep and reason in SOURCE_REASONS:
        return Reject(uri, RejectReason(reason), detail)
    return Reject(uri, RejectReason.READ_ERROR, error)


def _fetch_urls(read_uris: list[str | None], errors: list[str | None], contents: pa.Array, cfg: PreprocessConfig) -> dict[int, Fetched]:
    """The rows of a URL table (an http(s) read_uri, no bytes, no error; local rows carry file: URIs) fetched
    concurrently -> {row: outcome}."""
    todo = [i for i, u in enumerate(read_uris)
            if u is not None and errors[i] is None and not contents[i].is_valid and is_fetchable(u)]
    return dict(zip(todo, fetch_all([read_uris[i] for i in todo], cfg.fetch_settings()))) if todo else {}


def decode_batch(batch: pa.RecordBatch, cfg: PreprocessConfig, run_id: str, labels: LabelResolver | None) -> pa.RecordBatch:
    """SOURCE_ARROW rows -> STAGED_ARROW rows, exactly one output row per input row."""
    uris = batch.column("source_uri").to_pylist()
    rel_paths = batch.column("rel_path").to_pylist()
    errors = batch.column("source_error").to_pylist()
    lengths = batch.column("length").to_pylist()
    # Sidecar labels arrive as columns joined to the source rows (labels.Sidecar.attach), not in the closure.
    given = (batch.column("label").to_pylist(), batch.column("label_key").to_pylist()) if "label_key" in batch.schema.names else None
    contents = batch.column("content")
    read_uris = batch.column("read_uri").to_pylist() if "read_uri" in batch.schema.names else [None] * len(uris)
    fetched = _fetch_urls(read_uris, errors, contents, cfg)
    rows: list[dict[str, Any]] = []
    grays: list[np.ndarray] = []
    image_rows: list[dict[str, Any]] = []
    for i, uri in enumerate(uris):
        if errors[i] is not None:
            result: Decoded | Reject = _source_reject(uri, errors[i])
        elif i in fetched:
            got = fetched[i]
            result = Reject(uri, got.reason, got.detail) if got.reason is not None else process_image(got.data, uri, cfg)
        elif read_uris[i] is not None and not contents[i].is_valid and (lengths[i] or 0) > cfg.max_file_bytes:
            # the listed size is over the limit: not read at all (a 10 GB file would otherwise be held whole)
            result = Reject(uri, RejectReason.TOO_LARGE, f"file is {lengths[i]} bytes, limit max_file_bytes={cfg.max_file_bytes}; it is not read")
        elif read_uris[i] is not None and not contents[i].is_valid:
            try:
                data = read_local(read_uris[i])
            except OSError as exc:
                result = Reject(uri, RejectReason.READ_ERROR, f"reading {read_uris[i]}: {type(exc).__name__}: {exc}")
            else:
                result = process_image(data, uri, cfg)
        else:
            value = contents[i]
            # as_buffer() hands PIL the Arrow memory without a copy
            result = process_image(value.as_buffer() if value.is_valid else None, uri, cfg)
        if isinstance(result, Reject):
            row = {"kind": KIND_REJECT, "source_uri": uri, "reason": result.reason.value, "detail": result.detail, "run_id": run_id}
            if labels is not None:  # the sidecar key a rejected file matched still matched a file
                row["label_key"] = given[1][i] if given is not None else labels.resolve(rel_paths[i], uri)[1]
            rows.append(row)
            continue
        row = result.row
        row["kind"] = KIND_IMAGE
        row["run_id"] = run_id
        if labels is not None:
            row["label"], row["label_key"] = (given[0][i], given[1][i]) if given is not None else labels.resolve(rel_paths[i], uri)
        rows.append(row)
        image_rows.append(row)
        grays.append(result.gray)
    if grays:
        hashes = phash_batch(np.stack(grays))
        for row, h in zip(image_rows, hashes.tolist()):
            row["phash"] = h
    if len(rows) != len(uris):  # the conservation invariant, per batch
        raise AssertionError(f"decode_batch produced {len(rows)} rows for {len(uris)} inputs")
    return pa.RecordBatch.from_pylist(rows, schema=STAGED_ARROW)


_FROZEN = False


def decode_partition(batches: Iterator[pa.RecordBatch], cfg: PreprocessConfig, run_id: str,
                     labels: LabelResolver | None) -> Iterator[pa.RecordBatch]:
    """The mapInArrow function body."""
    global _FROZEN
    if not _FROZEN:
        # PySpark's daemon runs gc.collect() after every task in a reused worker; once numpy/scipy/PIL
        # are imported that walks ~10^5 long-lived objects (tens of ms per task). Freezing them (what
        # gc.freeze is for in pre-fork servers) keeps that collection cheap. Once per worker process.
        gc.freeze()
        _FROZEN = True
    for batch in batches:
        yield decode_batch(batch, cfg, run_id, labels)
