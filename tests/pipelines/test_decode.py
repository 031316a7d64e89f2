"""The per-image function on real files: every conversion case, every reject reason, orientation, bombs, fits."""
from __future__ import annotations

import io
import tracemalloc

import imagehash
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipelines.config import FitMode, LabelMode, PixelEncoding, PreprocessConfig
from pipelines.decode import STAGED_ARROW, Decoded, Reject, decode_batch, process_image
from pipelines.labels import LabelResolver
from pipelines.phash import hex_to_int64
from pipelines.source_rows import SOURCE_ARROW
from schemas.images import RejectReason
from tests.pipelines.imagefactory import corpus_members, encode, halves, jpeg_with_orientation, photo_like, png_bomb_header

CFG = PreprocessConfig(resolution=32)


def _decode(data: bytes, cfg: PreprocessConfig = CFG) -> Decoded:
    result = process_image(data, "mem:test", cfg)
    assert isinstance(result, Decoded), f"expected an image, got {result}"
    return result


def test_every_corpus_case_gets_its_expected_outcome():
    members = corpus_members()
    reasons_seen = set()
    for name, data, exp in members:
        result = process_image(data, name, CFG)
        if exp.kind == "reject":
            assert isinstance(result, Reject), f"{name}: expected reject {exp.reason}, got an image"
            assert result.reason.value == exp.reason, f"{name}: expected {exp.reason}, got {result.reason.value}: {result.detail}"
            assert result.detail
            reasons_seen.add(result.reason)
        else:
            assert isinstance(result, Decoded), f"{name}: expected an image, got {result}"
            assert result.row["orig_mode"] == exp.orig_mode, name
            assert result.rgb.shape == (32, 32, 3) and result.rgb.dtype == np.uint8
    # every reason of the vocabulary is exercised except those decided before any byte is decoded: read_error (a
    # filesystem failure, covered in test_sources), unsafe_path (a tar member's path, covered in test_tar_safety)
    # and the URL fetch outcomes (covered against a loopback server in test_urls)
    fetch_reasons = {RejectReason.HTTP_ERROR, RejectReason.TIMEOUT, RejectReason.DNS_ERROR, RejectReason.CONNECT_ERROR,
                     RejectReason.OPTED_OUT}
    assert reasons_seen == set(RejectReason) - {RejectReason.READ_ERROR, RejectReason.UNSAFE_PATH} - fetch_reasons


def _corpus(name: str) -> bytes:
    return next(data for n, data, _ in corpus_members() if n == name)


def test_exif_orientation_is_applied():
    # upright: red top, blue bottom; stored rotated with orientation 6
    stored = Image.open(io.BytesIO(_corpus("birds/rotated.jpg")))
    assert stored.size == (80, 120)  # stored sideways
    px = _decode(_corpus("birds/rotated.jpg")).rgb.astype(int)
    assert np.abs(px[2, 16] - [255, 0, 0]).max() < 30, px[2, 16]
    assert np.abs(px[-3, 16] - [0, 0, 255]).max() < 30, px[-3, 16]


@pytest.mark.parametrize("orientation", [3, 8])
def test_other_orientations(orientation):
    data = jpeg_with_orientation(halves(96, 64, (255, 0, 0), (0, 0, 255)), orientation)
    px = _decode(data).rgb.astype(int)
    assert np.abs(px[2, 16] - [255, 0, 0]).max() < 30 and np.abs(px[-3, 16] - [0, 0, 255]).max() < 30


def test_alpha_and_palette_transparency_composite_on_white():
    px = _decode(_corpus("dogs/palette_transparent.png")).rgb
    assert px[2, 16].tolist() == [255, 255, 255] and px[-3, 16].tolist() == [0, 0, 255]
    px = _decode(_corpus("dogs/rgba.png")).rgb
    assert px[2, 16].tolist() == [255, 255, 255] and px[-3, 16].tolist() == [200, 0, 0]
    px = _decode(_corpus("dogs/la.png")).rgb
    assert px[16, 2].tolist() == [255, 255, 255] and px[16, -3].tolist() == [0, 0, 0]


def test_animated_uses_first_frame_and_16_bit_keeps_the_top_byte():
    px = _decode(_corpus("birds/animated.gif")).rgb
    assert px[2, 16].tolist() == [255, 0, 0] and px[-3, 16].tolist() == [0, 0, 255]
    # ramp 0..65535 left to right, 64 px wide, at resolution 64 (no resampling): value >> 8, replicated to RGB
    d = _decode(_corpus("dogs/gray16.png"), PreprocessConfig(resolution=64))
    expected = (np.linspace(0, 65535, 64).astype(np.uint16) >> 8).astype(np.uint8)
    assert (d.rgb[5, :, 0] == expected).all() and (d.rgb[..., 0] == d.rgb[..., 2]).all()


def test_cmyk_grey_and_bilevel_follow_pil_conversions():
    for name, mode in (("cats/cmyk.jpg", "CMYK"), ("cats/gray.jpg", "L"), ("cats/bilevel.png", "1")):
        data = _corpus(name)
        ref = Image.open(io.BytesIO(data))
        assert ref.mode == mode and ref.size[0] == ref.size[1]
        d = _decode(data, PreprocessConfig(resolution=ref.size[0]))  # native size: no resampling
        ref_rgb = np.asarray(ref.convert("L").convert("RGB") if mode == "1" else ref.convert("RGB"))
        assert np.abs(d.rgb.astype(int) - ref_rgb).max() <= 1, name


def test_pixels_round_trip_exactly_at_native_resolution():
    src = photo_like(48, 48, seed=21)
    for encoding in PixelEncoding:
        d = _decode(encode(src, "PNG"), PreprocessConfig(resolution=48, pixel_encoding=encoding))
        assert (d.rgb == np.asarray(src)).all()
        stored = d.row["pixels"]
        back = np.frombuffer(stored, np.uint8).reshape(48, 48, 3) if encoding == PixelEncoding.RAW else np.asarray(Image.open(io.BytesIO(stored)))
        assert (back == np.asarray(src)).all(), encoding


def test_jpeg_is_decoded_at_reduced_scale():
    big = encode(photo_like(1024, 768, seed=5), "JPEG", quality=85)
    # Both sides stay >= twice the target: 1/4 DCT scaling for 64 (1/8 would give 96 < 128 high)
    assert _decode(big, PreprocessConfig(resolution=64)).decoded_size == (256, 192)
    assert _decode(big, PreprocessConfig(resolution=32)).decoded_size == (128, 96)   # 1/8
    # 1/2 would give 512x384 (< 400 high), so PIL decodes at full size for 200
    assert _decode(big, PreprocessConfig(resolution=200)).decoded_size == (1024, 768)
    png = encode(photo_like(256, 192, seed=5), "PNG")
    assert _decode(png, PreprocessConfig(resolution=64)).decoded_size == (256, 192)  # PNG has no reduced decode


@pytest.mark.parametrize("w,h", [(10_000, 10_000), (100_000, 100_000)])
def test_bomb_header_rejected_without_allocating(w, h):
    """Rejected from the header alone: the memory peak shows nothing was decoded (speed lives in bench/)."""
    data = png_bomb_header(w, h)
    assert len(data) < 200_000
    tracemalloc.start()
    result = process_image(data, "mem:bomb", CFG)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(result, Reject) and result.reason == RejectReason.TOO_LARGE, result
    assert peak < 16 * 1024 * 1024, peak  # a decoded 10000x10000 RGB image would be 300 MB


def test_fit_modes():
    wide = halves(128, 64, (255, 0, 0), (0, 0, 255))  # 2:1, red top / blue bottom
    wide_arr = np.asarray(wide).copy()
    wide_arr[:, :64] = wide_arr[:, :64] // 2  # left half darker, to see the crop/pad
    data = encode(Image.fromarray(wide_arr), "PNG")
    pad = _decode(data, PreprocessConfig(resolution=32, fit=FitMode.PAD)).rgb
    assert pad[:6].max() == 0 and pad[-6:].max() == 0          # 8 black rows on top and bottom
    assert pad[9, 24].tolist() == [255, 0, 0] and pad[22, 24].tolist() == [0, 0, 255]
    crop = _decode(data, PreprocessConfig(resolution=32, fit=FitMode.CENTER_CROP)).rgb
    assert crop[2, 2].tolist() == [127, 0, 0] and crop[2, -3].tolist() == [255, 0, 0]  # centre square spans both halves
    stretch = _decode(data, PreprocessConfig(resolution=32, fit=FitMode.STRETCH)).rgb
    assert stretch[2, 4].tolist() == [127, 0, 0] and stretch[-3, -5].tolist() == [0, 0, 255]


def test_validation_uses_original_dimensions_and_thresholds():
    data = encode(photo_like(100, 30, seed=1), "PNG")
    assert process_image(data, "x", PreprocessConfig(min_size=31)).reason == RejectReason.TOO_SMALL
    assert process_image(data, "x", PreprocessConfig(min_size=16, max_aspect=3.0)).reason == RejectReason.BAD_ASPECT
    assert isinstance(process_image(data, "x", PreprocessConfig(min_size=16, max_aspect=3.5)), Decoded)
    assert process_image(data, "x", PreprocessConfig(min_size=16, max_aspect=3.5, max_pixels=2999)).reason == RejectReason.TOO_LARGE
    assert process_image(data, "x", PreprocessConfig(min_size=16, max_aspect=3.5, max_file_bytes=100)).reason == RejectReason.TOO_LARGE
    assert process_image(None, "x", CFG).reason == RejectReason.READ_ERROR


def test_row_fields_and_quality_scores():
    src = photo_like(40, 40, seed=9)
    data = encode(src, "PNG")
    d = _decode(data, PreprocessConfig(resolution=40))
    import hashlib

    assert d.row["sha256"] == hashlib.sha256(data).hexdigest() and d.row["image_id"] == d.row["sha256"][:32]
    assert d.row["pixels_sha256"] == hashlib.sha256(np.asarray(src).tobytes()).hexdigest()
    grey = np.asarray(src.convert("L"), dtype=np.float64)
    assert d.row["contrast"] == pytest.approx(grey.std(), rel=1e-6)
    assert d.row["brightness"] == pytest.approx(np.asarray(src, dtype=np.float64).mean(), rel=1e-6)
    counts = np.bincount(grey.astype(int).ravel(), minlength=256) / grey.size
    p = counts[counts > 0]
    assert d.row["entropy"] == pytest.approx(-(p * np.log2(p)).sum(), rel=1e-6)
    assert (d.row["orig_width"], d.row["orig_height"], d.row["orig_format"], d.row["file_size"]) == (40, 40, "PNG", len(data))


def test_decode_batch_one_row_per_input_with_phash_and_labels():
    names = ["cats/rgb.png", "bad/empty.jpg", "top_level.png", "bad/notes.txt", "dogs/rgba.png"]
    data = {n: d for n, d, _ in corpus_members() if n in names}
    batch = pa.RecordBatch.from_pylist(
        [{"source_uri": f"file:/c/{n}", "rel_path": n, "content": data[n], "length": len(data[n]), "source_error": None} for n in names]
        + [{"source_uri": "file:/c/gone.jpg", "rel_path": "gone.jpg", "content": None, "length": None, "source_error": "not found"},
           {"source_uri": "file:/nonexistent/x.jpg", "rel_path": "x.jpg", "content": None, "length": 10, "source_error": None,
            "read_uri": "file:/nonexistent/x.jpg"}],
        schema=SOURCE_ARROW,
    )
    out = decode_batch(batch, CFG, "run-1", LabelResolver(LabelMode.DIRS)).to_pylist()
    assert batch.schema == SOURCE_ARROW and len(out) == 7
    by_uri = {r["source_uri"]: r for r in out}
    assert [by_uri[f"file:/c/{n}"]["kind"] for n in names] == ["image", "reject", "image", "reject", "image"]
    assert by_uri["file:/c/gone.jpg"]["reason"] == "read_error" and by_uri["file:/c/gone.jpg"]["detail"] == "not found"
    assert by_uri["file:/nonexistent/x.jpg"]["reason"] == "read_error" and "FileNotFoundError" in by_uri["file:/nonexistent/x.jpg"]["detail"]
    assert by_uri["file:/c/cats/rgb.png"]["label"] == "cats" and by_uri["file:/c/top_level.png"]["label"] is None
    assert all(r["run_id"] == "run-1" for r in out)
    # pHash of a plain RGB PNG == imagehash.phash of the file itself (no draft, no orientation)
    for n in ("cats/rgb.png", "top_level.png"):
        assert by_uri[f"file:/c/{n}"]["phash"] == hex_to_int64(str(imagehash.phash(Image.open(io.BytesIO(data[n])))))
    assert pa.RecordBatch.from_pylist(out, schema=STAGED_ARROW).num_rows == 7


def test_to_grey_is_pils_luma_bit_for_bit():
    from pipelines.decode import to_grey

    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    rgb[0] = np.repeat(np.arange(0, 256, 4, dtype=np.uint8), 3).reshape(64, 3)  # a row of grey pixels
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    np.testing.assert_array_equal(to_grey(rgb)[..., 0], expected)
    ramp = np.repeat(np.arange(256, dtype=np.uint8), 3).reshape(16, 16, 3)
    np.testing.assert_array_equal(to_grey(ramp)[..., 0], ramp[..., 0])


def test_is_grey_and_luma_sums():
    digit = Image.fromarray((np.add.outer(np.arange(40), np.arange(40)) * 3 % 256).astype(np.uint8), "L")
    grey = _decode(encode(digit, "PNG"))
    assert grey.row["is_grey"] and grey.row["sum_l"] == grey.row["sum_r"] == grey.row["sum_b"]
    as_rgb = _decode(encode(digit.convert("RGB"), "PNG"))  # an RGB file of a grey picture
    assert as_rgb.row["is_grey"] and as_rgb.row["pixels_sha256"] == grey.row["pixels_sha256"]
    colour = _decode(encode(photo_like(40, 40, seed=3), "PNG"))
    assert not colour.row["is_grey"]
    assert colour.row["sum_l"] == int(np.asarray(Image.fromarray(colour.rgb).convert("L"), np.int64).sum())
