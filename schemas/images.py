"""Parquet schemas of a preprocessed dataset, version SCHEMA_VERSION.

Each table is written twice, side by side: the pyarrow schema (what readers and the
Arrow batch functions inside Spark produce) and the Spark StructType (what the Spark job
declares to `mapInArrow` and writes). tests/schemas/test_schemas.py checks they agree.
Bump SCHEMA_VERSION on any change a reader could notice, and say what changed below.

Version history:
  1  first version.
  2  duplicates/ gains `similarity` (the pixel test that verified a near pair; 1.0 for exact
     duplicates); a dataset may be stored with 1 channel (manifest `channels`, `--channels`).
  3  the manifest lists every data file with its row count (`files`); readers read exactly those
     files, so a file the manifest does not list (a crashed run's orphan) does not exist for them.
     Later additions a version-3 reader still reads: reject reasons http_error, timeout, dns_error,
     connect_error and opted_out (URL tables); the tables' columns are unchanged.
"""
from __future__ import annotations

import enum

import pyarrow as pa

SCHEMA_VERSION = 3

# Square resolutions the models can train on (training/models.py builds its towers from these:
# 4x4 up by stride-2 layers). Preprocessing refuses any other --resolution when the job starts, so a
# dataset never passes preprocessing and then fails in `train`.
TRAINABLE_RESOLUTIONS = (32, 64, 128)


class RejectReason(str, enum.Enum):
    """Why an input file is in `rejects/`. A fixed vocabulary: readers may switch on it."""

    EMPTY_FILE = "empty_file"              # zero bytes
    READ_ERROR = "read_error"              # the filesystem could not give us the bytes
    NOT_AN_IMAGE = "not_an_image"          # no image format recognises the header
    TRUNCATED = "truncated"                # header fine, data ends early
    DECODE_ERROR = "decode_error"          # any other failure while decoding
    TOO_SMALL = "too_small"                # a side below --min-size
    TOO_LARGE = "too_large"                # pixel count above the decompression-bomb limit
    BAD_ASPECT = "bad_aspect"              # long side / short side above --max-aspect
    BLANK = "blank"                        # (almost) a single colour: std below --min-std
    UNSUPPORTED_MODE = "unsupported_mode"  # a pixel mode with no documented RGB rule
    UNSAFE_PATH = "unsafe_path"            # a tar member path that is absolute or has a ".." component: never read (docs/preprocess.md)
    # URL tables (pipelines/fetch.py): a URL whose fetch failed
    HTTP_ERROR = "http_error"              # a 4xx/5xx status (in the detail), or too many redirects / a redirect loop
    TIMEOUT = "timeout"                    # no answer, or no whole response, within fetch_timeout_s
    DNS_ERROR = "dns_error"                # the host name does not resolve
    CONNECT_ERROR = "connect_error"        # the connection was refused or could not be made
    OPTED_OUT = "opted_out"                # X-Robots-Tag noai/noimageai, or a host in disallowed_domains


class DuplicateKind(str, enum.Enum):
    EXACT = "exact"  # same sha256 of the original bytes, or same decoded pixels at the target resolution
    NEAR = "near"    # pHash Hamming distance <= --near-dup-distance AND pixel similarity >= --min-similarity


# ----------------------------------------------------------------------------- images/
# One row per written image. `pixels` holds `height * width * channels` uint8 values in
# HWC order (pixel_encoding="raw"), or a PNG file (pixel_encoding="png"): schemas/pixels.py.
IMAGES_ARROW = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),         # first 32 hex digits of sha256: stable, from content
        pa.field("source_uri", pa.string(), nullable=False),       # where the bytes came from (file URI, tar member, parquet row)
        pa.field("sha256", pa.string(), nullable=False),           # hex sha256 of the original file bytes
        pa.field("pixels_sha256", pa.string(), nullable=False),    # hex sha256 of the normalised pixels (exact dedup across re-encodes)
        pa.field("phash", pa.int64(), nullable=False),             # imagehash pHash, hash_size 8, 64 bits as a signed int64
        pa.field("label", pa.string(), nullable=True),
        pa.field("label_index", pa.int32(), nullable=True),        # index into manifest["classes"]
        pa.field("orig_width", pa.int32(), nullable=False),
        pa.field("orig_height", pa.int32(), nullable=False),
        pa.field("orig_format", pa.string(), nullable=False),      # PIL format name: JPEG, PNG, GIF, ...
        pa.field("orig_mode", pa.string(), nullable=False),        # PIL mode before conversion: RGB, L, P, CMYK, I;16, ...
        pa.field("file_size", pa.int64(), nullable=False),         # bytes
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("channels", pa.int32(), nullable=False),
        pa.field("pixel_encoding", pa.string(), nullable=False),   # "raw" | "png"
        pa.field("pixels", pa.binary(), nullable=False),
        pa.field("brightness", pa.float32(), nullable=False),      # mean of the normalised pixels, 0..255
        pa.field("contrast", pa.float32(), nullable=False),        # std of the grey image, 0..255
        pa.field("entropy", pa.float32(), nullable=False),         # Shannon entropy of the grey histogram, bits (0..8)
        pa.field("run_id", pa.string(), nullable=False),           # the run that wrote the row (incremental runs append)
    ],
    metadata={"imagegen.schema": "images", "imagegen.schema_version": str(SCHEMA_VERSION)},
)

# ----------------------------------------------------------------------------- rejects/
REJECTS_ARROW = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # a RejectReason value
        pa.field("detail", pa.string(), nullable=False),  # the message: what was expected and what was found
        pa.field("run_id", pa.string(), nullable=False),
    ],
    metadata={"imagegen.schema": "rejects", "imagegen.schema_version": str(SCHEMA_VERSION)},
)

# ----------------------------------------------------------------------------- duplicates/
DUPLICATES_ARROW = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),       # the dropped file
        pa.field("kept_source_uri", pa.string(), nullable=False),  # the kept image it duplicates
        pa.field("kind", pa.string(), nullable=False),             # a DuplicateKind value
        pa.field("distance", pa.int32(), nullable=False),          # 64-bit pHash Hamming distance to the kept image (0 for exact)
        pa.field("similarity", pa.float32(), nullable=False),      # pixel similarity to the kept image (pipelines/similarity.py; 1.0 for exact)
        pa.field("run_id", pa.string(), nullable=False),
    ],
    metadata={"imagegen.schema": "duplicates", "imagegen.schema_version": str(SCHEMA_VERSION)},
)


# The Spark twins. pyspark is imported lazily so that training nodes that only read
# Parquet never pay for it.
def images_spark():
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("image_id", T.StringType(), False),
            T.StructField("source_uri", T.StringType(), False),
            T.StructField("sha256", T.StringType(), False),
            T.StructField("pixels_sha256", T.StringType(), False),
            T.StructField("phash", T.LongType(), False),
            T.StructField("label", T.StringType(), True),
            T.StructField("label_index", T.IntegerType(), True),
            T.StructField("orig_width", T.IntegerType(), False),
            T.StructField("orig_height", T.IntegerType(), False),
            T.StructField("orig_format", T.StringType(), False),
            T.StructField("orig_mode", T.StringType(), False),
            T.StructField("file_size", T.LongType(), False),
            T.StructField("width", T.IntegerType(), False),
            T.StructField("height", T.IntegerType(), False),
            T.StructField("channels", T.IntegerType(), False),
            T.StructField("pixel_encoding", T.StringType(), False),
            T.StructField("pixels", T.BinaryType(), False),
            T.StructField("brightness", T.FloatType(), False),
            T.StructField("contrast", T.FloatType(), False),
            T.StructField("entropy", T.FloatType(), False),
            T.StructField("run_id", T.StringType(), False),
        ]
    )


def rejects_spark():
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("source_uri", T.StringType(), False),
            T.StructField("reason", T.StringType(), False),
            T.StructField("detail", T.StringType(), False),
            T.StructField("run_id", T.StringType(), False),
        ]
    )


def duplicates_spark():
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("source_uri", T.StringType(), False),
            T.StructField("kept_source_uri", T.StringType(), False),
            T.StructField("kind", T.StringType(), False),
            T.StructField("distance", T.IntegerType(), False),
            T.StructField("similarity", T.FloatType(), False),
            T.StructField("run_id", T.StringType(), False),
        ]
    )
