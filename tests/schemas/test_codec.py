"""The contract's pixel codec and file: URI rule: one definition, used by writers and readers."""
from __future__ import annotations

import numpy as np
import pytest

from schemas.pixels import PixelEncoding, decode_pixels, encode_pixels
from schemas.uri import has_scheme, is_local, path_to_uri, uri_to_path


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("encoding", list(PixelEncoding))
def test_pixels_round_trip(channels, encoding):
    rng = np.random.default_rng(channels)
    img = rng.integers(0, 256, size=(5, 7, channels), dtype=np.uint8)
    data = encode_pixels(img, encoding)
    if encoding is PixelEncoding.RAW:
        assert data == img.tobytes()
    back = decode_pixels(data, height=5, width=7, channels=channels, encoding=encoding.value)
    np.testing.assert_array_equal(back, img)


def test_pixels_errors_name_expected_and_found():
    with pytest.raises(ValueError, match=r"raw pixels hold 10 bytes, expected height\*width\*channels = 2\*2\*3"):
        decode_pixels(b"\0" * 10, 2, 2, 3, "raw")
    png = encode_pixels(np.zeros((2, 2, 3), np.uint8), "png")
    with pytest.raises(ValueError, match="expected mode L 2x2, found RGB 2x2"):
        decode_pixels(png, 2, 2, 1, "png")
    with pytest.raises(ValueError, match="'jpeg' is not a valid PixelEncoding"):
        encode_pixels(np.zeros((2, 2, 3), np.uint8), "jpeg")


@pytest.mark.parametrize("name", ["a b.png", "caf\u00e9.png", "cafe\u0301.png", "100%.png", "x#1?.png", "[a].png", "new\nline.png", "-lead.png"])
def test_file_uri_is_one_spelling(tmp_path, name):
    path = tmp_path / name
    uri = path_to_uri(path)
    assert uri == "file:" + str(path)  # no percent-encoding, no // authority
    assert uri_to_path(uri) == str(path)
    assert uri_to_path("file://" + str(path)) == str(path)  # file:/// as Spark's inputFiles() spells it


def test_scheme_rules():
    assert has_scheme("hdfs://nn/x") and has_scheme("file:/x") and not has_scheme("/x") and not has_scheme("C:/x")
    assert is_local("/x") and is_local("file:/x") and not is_local("s3a://b/x")
    with pytest.raises(ValueError, match="expected a local path or file: URI, got 's3a://b/x'"):
        uri_to_path("s3a://b/x")
