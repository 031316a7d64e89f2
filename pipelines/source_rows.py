"""What reading an input yields, shared by the input kinds (pipelines/sources/), the decode stage and the label
sidecar reader: the source row schema, the source_error form of a refusal, and a byte stream for any URI.
It imports neither of them (schemas and pyarrow only)."""
from __future__ import annotations

import pyarrow as pa

from schemas.images import RejectReason
from schemas.uri import uri_to_path

# The source rows the decode stage reads (pipelines/sources/ builds them).
SOURCE_ARROW = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("rel_path", pa.string(), nullable=True),      # path below the input root (labels)
        pa.field("content", pa.binary(), nullable=True),       # null when the bytes could not be read
        pa.field("length", pa.int64(), nullable=True),
        pa.field("source_error", pa.string(), nullable=True),  # why the bytes could not be read
        # A local file: URI whose bytes the decode stage reads itself (content is null then): the JVM only
        # lists the file, so the bytes cross no JVM -> Arrow -> Python copy (see PreprocessConfig.read_local_in_worker).
        pa.field("read_uri", pa.string(), nullable=True),
    ]
)


def source_error(reason: RejectReason, detail: str) -> str:
    """A source row's source_error naming a reject reason other than read_error ("<reason>: <detail>"):
    the input kinds refuse some inputs without reading them (a tar member above max_file_bytes or with an unsafe
    path); the decode stage turns it back into that reason (SOURCE_REASONS), any other error is a read_error."""
    return f"{reason.value}: {detail}"


SOURCE_REASONS = frozenset({RejectReason.TOO_LARGE.value, RejectReason.UNSAFE_PATH.value})


def open_stream(uri: str):
    """A binary input stream for a shard URI (pyarrow.fs; s3a: is Hadoop's name for s3:)."""
    import pyarrow.fs as pafs

    if uri.startswith("file:"):
        return open(uri_to_path(uri), "rb")
    if uri.startswith("s3a://"):
        uri = "s3://" + uri[len("s3a://"):]
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs.open_input_stream(path)
