"""URL tables: Parquet, CSV, TSV, JSONL or text files whose rows name images by URL (the shape LAION, DataComp,
COYO and CC12M come in), local or on any Hadoop/pyarrow URI.

The table is read by Spark and never collected on the driver. One source row per distinct URL: `source_uri` and
`read_uri` are the URL, no bytes; the decode stage fetches it (pipelines/fetch.py). A row without a URL, or with
one that is not http(s) (a file:/// URL must never read a local file), is a read_error reject named by its
table row. A URL repeated in the tables is one input; the repeats are counted (manifest `repeated_inputs`).
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import PreprocessConfig
from pipelines.sources.spec import InputSpec

URL_TABLE_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "json",
                     ".json": "json", ".ndjson": "json", ".txt": "text", ".lst": "text", ".list": "text", ".uris": "text"}


def table_format(uri: str) -> str | None:
    """The reader for a URL table named `uri` (by suffix; a folder of Parquet files is `parquet`), or None."""
    lower = uri.lower().rstrip("/")
    return next((fmt for suffix, fmt in URL_TABLE_FORMATS.items() if lower.endswith(suffix)), None)


def _read(spark: SparkSession, uri: str, fmt: str) -> DataFrame:
    if fmt == "parquet":
        return spark.read.parquet(uri)
    if fmt in ("csv", "tsv"):
        return spark.read.option("header", True).option("sep", "\t" if fmt == "tsv" else ",").option("mode", "PERMISSIVE").csv(uri)
    if fmt == "json":
        return spark.read.option("mode", "PERMISSIVE").json(uri)
    return spark.read.text(uri).withColumnRenamed("value", "url")


def _url_column(df: DataFrame, spec: InputSpec, cfg: PreprocessConfig, fmt: str) -> Column:
    if fmt == "text":
        return F.col("url")
    names = {n.lower(): n for n in df.columns}
    name = names.get((cfg.url_column or "").lower())
    if name is None:
        raise ValueError(f"{spec.uri}: url_column {cfg.url_column!r} not found; columns: {df.columns[:20]}")
    return F.col(f"`{name}`").cast("string")


def url_table_frame(spark: SparkSession, spec: InputSpec, cfg: PreprocessConfig) -> tuple[DataFrame, int, int]:
    """(SOURCE_ARROW rows, inputs, repeated URLs) of one URL table."""
    fmt = table_format(spec.uri) or "parquet"
    df = _read(spark, spec.uri, fmt)
    url = F.trim(_url_column(df, spec, cfg, fmt))
    where = F.concat(F.col("_metadata.file_path"), F.lit("#row="), F.monotonically_increasing_id().cast("string"))
    has_url = url.isNotNull() & (F.length(url) > 0)
    fetchable = url.rlike(r"(?i)^https?://[^/\s]")
    rows = df.select(
        F.when(has_url, url).otherwise(where).alias("source_uri"),
        F.lit(None).cast("string").alias("rel_path"),
        F.lit(None).cast("binary").alias("content"),
        F.lit(None).cast("long").alias("length"),
        F.when(~has_url, F.lit("no URL in this table row"))  # a source_error is a read_error reject
         .when(~fetchable, F.lit("not an http(s) URL; URL tables fetch only http and https"))
         .alias("source_error"),
        F.when(has_url & fetchable, url).alias("read_uri"),
    )
    total = rows.count()
    distinct = rows.dropDuplicates(["source_uri"])
    inputs = distinct.count()
    return distinct, inputs, total - inputs
