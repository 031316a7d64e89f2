"""Step 4 of the dedup: the pixel test of every candidate pair (pipelines/similarity.py), as batch mapInArrows.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines import similarity
from pipelines.dedup.common import _checkpoint
from schemas.pixels import decode_pixels

SIGNATURE_SCHEMA = "id long, signature binary"
SCORED_SCHEMA = "src long, dst long, distance int, similarity float"


def _signature_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """(id, width, height, channels, pixel_encoding, pixels) -> (id, signature): the stored pixels, not the file."""
    for batch in batches:
        c = batch.to_pydict()
        images = [decode_pixels(p, h, w, ch, e) for p, w, h, ch, e in zip(c["pixels"], c["width"], c["height"], c["channels"], c["pixel_encoding"])]
        yield pa.RecordBatch.from_pydict({"id": c["id"], "signature": similarity.signatures(images)},
                                         schema=pa.schema([("id", pa.int64()), ("signature", pa.binary())]))


def _score_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """(src, dst, distance, sig_a, sig_b) -> (src, dst, distance, similarity), vectorised over the pairs of a batch."""
    for batch in batches:
        c = batch.to_pydict()
        scores = similarity.similarities(c["sig_a"], c["sig_b"]) if c["src"] else np.zeros(0, np.float32)
        yield pa.RecordBatch.from_pydict(
            {"src": c["src"], "dst": c["dst"], "distance": c["distance"], "similarity": np.asarray(scores, np.float32)},
            schema=pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("distance", pa.int32()), ("similarity", pa.float32())]),
        )


def verify(edges: DataFrame, pixels: DataFrame, min_similarity: float) -> DataFrame:
    """Keep the candidate edges whose stored normalised images are similar enough.

    edges: (src, dst, distance); pixels: (id, width, height, channels, pixel_encoding, pixels) of at least
    the edges' ends. Each end's signature is computed once (a batch mapInArrow over the stored pixels, no
    decode of the original file), joined to both sides of its edges, and the pairs scored in batches.
    -> (src, dst, distance, similarity) with similarity >= min_similarity.
    """
    ends = edges.select(F.col("src").alias("id")).unionByName(edges.select(F.col("dst").alias("id"))).distinct()
    signed = (
        pixels.join(ends, "id", "left_semi")
        .select("id", "width", "height", "channels", "pixel_encoding", "pixels")
        .mapInArrow(_signature_batches, SIGNATURE_SCHEMA)
    )
    signed = _checkpoint(signed)
    a = signed.select(F.col("id").alias("src"), F.col("signature").alias("sig_a"))
    b = signed.select(F.col("id").alias("dst"), F.col("signature").alias("sig_b"))
    scored = (
        edges.join(a, "src").join(b, "dst")
        .select("src", "dst", F.col("distance").cast("int").alias("distance"), "sig_a", "sig_b")
        .mapInArrow(_score_batches, SCORED_SCHEMA)
    )
    return scored.filter(F.col("similarity") >= F.lit(min_similarity))
