"""Parquet inputs with an image-bytes column.
"""
from __future__ import annotations

import contextlib
import re
from typing import Iterator

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import PreprocessConfig
from pipelines.sources.hadoop import hadoop_spelling
from pipelines.sources.spec import (
    IMAGE_COLUMN_GUESSES,
    InputSpec,
)


def _parquet_frame(spark: SparkSession, spec: InputSpec, cfg: PreprocessConfig) -> DataFrame:
    df = spark.read.parquet(spec.uri)
    names = {f.name.lower(): f for f in df.schema.fields}
    if cfg.image_column:
        if cfg.image_column.lower() not in names:
            raise ValueError(f"{spec.uri}: image_column {cfg.image_column!r} not found; columns: {df.columns}")
        field = names[cfg.image_column.lower()]
    else:
        field = next((names[n] for n in IMAGE_COLUMN_GUESSES if n in names), None)
        if field is None:
            raise ValueError(f"{spec.uri}: no image column found (tried {IMAGE_COLUMN_GUESSES}); pass --image-column; columns: {df.columns}")
    col = F.col(f"`{field.name}`")
    type_name = field.dataType.typeName()
    if type_name == "struct":
        sub = {f.name for f in field.dataType.fields}
        if "bytes" not in sub:
            raise ValueError(f"{spec.uri}: struct column {field.name!r} has no 'bytes' field; fields: {sorted(sub)}")
        content = col.getField("bytes")
        rel = col.getField("path") if "path" in sub else F.lit(None).cast("string")
    elif type_name == "binary":
        content, rel = col, F.lit(None).cast("string")
    else:
        raise ValueError(f"{spec.uri}: image column {field.name!r} must be binary or struct{{bytes, path}}, found {field.dataType.simpleString()}")
    uri = F.concat(F.col("_metadata.file_path"), F.lit("#row="), F.col("_metadata.row_index").cast("string"))
    return df.select(
        uri.alias("source_uri"),
        rel.alias("rel_path"),
        content.alias("content"),
        F.length(content).cast("long").alias("length"),
        F.when(content.isNull(), F.lit("null image bytes in the Parquet row")).alias("source_error"),
        F.lit(None).cast("string").alias("read_uri"),
    )




class UnreadableInputError(ValueError):
    """An input the job cannot read at all (a corrupt Parquet file), in one line naming it."""


@contextlib.contextmanager
def _unreadable_parquet(spec: InputSpec) -> Iterator[None]:
    """Spark's footer and scan failures (CANNOT_READ_FILE_FOOTER, FAILED_READ_FILE, ...) reach Python as a
    Py4J error with a JVM trace; this turns them into one line naming the file Spark names."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        yield
    except (Py4JJavaError, PySparkException) as exc:
        text = str(exc)
        found = re.search(r"\bfile:? +(\S+?)\.?(?:\s|$)", text)
        name = hadoop_spelling(found.group(1)) if found else spec.uri
        kind = re.search(r"\[([A-Z][A-Z_.]+)\]", text)
        raise UnreadableInputError(f"{name}: not a readable Parquet file ({kind.group(1) if kind else type(exc).__name__}, "
                                   f"input {spec.uri}); repair or remove it") from None
