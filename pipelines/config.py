"""The preprocessing job's configuration: one frozen dataclass, loadable from YAML, overridable by CLI flags."""
from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.config import check_fields, read_yaml
from schemas.images import TRAINABLE_RESOLUTIONS
from schemas.pixels import PixelEncoding

if TYPE_CHECKING:
    from pipelines.fetch import FetchSettings


class FitMode(str, enum.Enum):
    """How a WxH image becomes resolution x resolution."""

    CENTER_CROP = "center-crop"  # scale the short side to the target, crop the centre
    PAD = "pad"                  # scale the long side to the target, pad with black, image centred
    STRETCH = "stretch"          # scale each axis independently (aspect ratio not kept)


class ChannelMode(str, enum.Enum):
    """How many channels the dataset stores."""

    AUTO = "auto"  # 1 when every image the run writes is grey (R == G == B after conversion), else 3
    GREY = "1"     # one channel: ITU-R 601 luma of the RGB image (PIL's convert("L"), bit for bit)
    RGB = "3"      # three channels, grey images replicated


class LabelMode(str, enum.Enum):
    NONE = "none"        # no labels: label and label_index are null
    DIRS = "dirs"        # the name of the file's parent directory (below the input root)
    SIDECAR = "sidecar"  # a CSV/JSON file mapping path -> label (PreprocessConfig.labels_path)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    resolution: int = 64                      # output side in pixels (square)
    fit: FitMode = FitMode.CENTER_CROP
    labels: LabelMode = LabelMode.NONE
    labels_path: str | None = None            # the sidecar file when labels == SIDECAR
    pixel_encoding: PixelEncoding = PixelEncoding.RAW
    channels: ChannelMode = ChannelMode.AUTO  # stored channels (incremental runs keep the dataset's)
    # Reject (too_small) when the original short side is below this, pixels. 16: the smallest common icon
    # size, and half of the pHash grid (32 px), so a candidate's hash still sees real structure; MNIST
    # (28 px) and CIFAR (32 px) must pass at --resolution 32 and 64 (a 2-4x upscale), and below 16 px an
    # image carries too little detail to be worth a 4x or larger upscale.
    min_size: int = 16
    max_pixels: int = 64_000_000              # decompression-bomb limit on declared width*height (too_large)
    max_file_bytes: int = 64 * 1024 * 1024    # files above this are rejected as too_large, bytes
    max_aspect: float = 4.0                   # reject (bad_aspect) when long side / short side exceeds this
    min_std: float = 2.0                      # reject (blank) when the std of the grey image (0..255) is below this
    image_column: str | None = None           # Parquet inputs: the column with the image bytes (None: guess)
    # URL tables (pipelines/sources/urls.py, pipelines/fetch.py): with url_column set, a Parquet, CSV, TSV, JSONL or
    # text input is a table of URLs that the decode stage fetches (text: one URL per line, any url_column).
    url_column: str | None = None
    fetch_timeout_s: float = 10.0             # per connect and read; twice this for a whole response
    fetch_retries: int = 2                    # more attempts after 429, 5xx, a timeout or a reset (Retry-After honoured)
    fetch_threads: int = 16                   # concurrent requests per decode task
    fetch_per_host: int = 4                   # of which at most this many to one host
    fetch_max_redirects: int = 5
    fetch_user_agent: str = "imagegen/0.1 (image dataset preprocessing; honours X-Robots-Tag noai, noimageai)"
    respect_opt_out: bool = True              # X-Robots-Tag: noai / noimageai -> opted_out
    disallowed_domains: tuple[str, ...] = ()  # hosts (and their subdomains) never fetched: opted_out
    arrow_batch_rows: int = 32                # rows per Arrow batch into the decode stage
    arrow_batch_bytes: int = 256 * 1024 * 1024  # and at most this many bytes per batch (far below Arrow's 2 GB)
    partitions: int | None = None             # decode-stage partitions; None: 3 x the cores Spark has
    # Local (file:) inputs: our listing (pipelines/sources/local.py) hands the decode stage their URIs and it reads
    # the bytes itself, instead of binaryFile carrying them JVM -> Arrow -> Python (that copy cost the JVM
    # ~1 ms of CPU per image). Off: the listing step reads the bytes into `content` (a separate Python pass).
    # Other schemes (hdfs:, s3a:) always go through binaryFile, i.e. Hadoop's filesystems.
    read_local_in_worker: bool = True
    dedup: bool = True                        # drop exact and near duplicates (pipelines/dedup/); off: keep every valid image
    near_dup_distance: int = 8                # pHash Hamming distance D for near duplicates; 0 = exact only (docs/dedup.md)
    # A candidate pair (pHash within near_dup_distance) is a near duplicate only when the pixel similarity of
    # the stored normalised images (pipelines/similarity.py) is at least this; measured in docs/dedup.md.
    min_similarity: float | None = None       # None: pipelines.similarity.DEFAULT_MIN_SIMILARITY
    incremental: bool = False                 # append a run: only inputs no earlier run has seen, dedup against earlier runs
    overwrite: bool = False                   # replace an existing complete dataset at OUT
    progress_interval_s: float = 5.0          # how often the progress line is printed, seconds

    def __post_init__(self) -> None:
        # Accept plain strings (from YAML/CLI) for the enums, then validate.
        for name, kind in (("fit", FitMode), ("labels", LabelMode), ("pixel_encoding", PixelEncoding), ("channels", ChannelMode)):
            value = getattr(self, name)
            if not isinstance(value, kind):
                try:
                    object.__setattr__(self, name, kind(str(value)))
                except ValueError:
                    raise ValueError(f"{name}: expected one of {[k.value for k in kind]}, got {value!r}") from None
        if self.labels == LabelMode.SIDECAR and not self.labels_path:
            raise ValueError("labels=sidecar needs labels_path (a .csv or .json file)")
        if self.resolution < 8 or self.resolution > 4096:
            raise ValueError(f"resolution: expected 8..4096 pixels, got {self.resolution}")
        if self.min_similarity is not None and not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"min_similarity: expected -1.0..1.0 (a correlation), got {self.min_similarity}")
        if self.min_size < 1:
            raise ValueError(f"min_size: expected >= 1, got {self.min_size}")
        if self.max_aspect < 1.0:
            raise ValueError(f"max_aspect: expected >= 1.0, got {self.max_aspect}")
        if self.arrow_batch_rows < 1 or self.arrow_batch_bytes < 1024:
            raise ValueError(f"arrow batch bounds too small: rows={self.arrow_batch_rows} bytes={self.arrow_batch_bytes}")
        if self.arrow_batch_bytes >= 2**31 - 1:
            raise ValueError(f"arrow_batch_bytes must stay below 2 GiB, got {self.arrow_batch_bytes}")
        if self.incremental and self.overwrite:
            raise ValueError("incremental and overwrite contradict each other: incremental appends to OUT, overwrite replaces it")
        if self.partitions is not None and self.partitions < 1:
            raise ValueError(f"partitions: expected >= 1 or None, got {self.partitions}")
        object.__setattr__(self, "disallowed_domains", tuple(str(d).strip().lower().rstrip(".") for d in self.disallowed_domains))
        if self.fetch_timeout_s <= 0 or self.fetch_retries < 0 or self.fetch_threads < 1 or self.fetch_per_host < 1 or self.fetch_max_redirects < 0:
            raise ValueError("fetch settings: need fetch_timeout_s > 0, fetch_retries >= 0, fetch_threads >= 1, "
                             "fetch_per_host >= 1, fetch_max_redirects >= 0")

    def fetch_settings(self) -> "FetchSettings":
        """What the decode stage's fetcher needs (pipelines/fetch.py)."""
        from pipelines.fetch import FetchSettings

        return FetchSettings(timeout_s=self.fetch_timeout_s, retries=self.fetch_retries, threads=self.fetch_threads,
                             per_host=self.fetch_per_host, max_redirects=self.fetch_max_redirects,
                             max_bytes=self.max_file_bytes, user_agent=self.fetch_user_agent,
                             respect_opt_out=self.respect_opt_out, disallowed_domains=frozenset(self.disallowed_domains))

    def check_job(self) -> None:
        """What a whole job needs beyond a valid per-image config: a resolution the models train on, so a
        dataset never passes preprocessing and then fails in `train`. Checked before Spark starts."""
        if self.resolution not in TRAINABLE_RESOLUTIONS:
            raise ValueError(f"resolution {self.resolution}: the models train on {', '.join(map(str, TRAINABLE_RESOLUTIONS))} pixels; "
                             f"pass --resolution {next((r for r in TRAINABLE_RESOLUTIONS if r >= self.resolution), TRAINABLE_RESOLUTIONS[-1])}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: enums as their values, tuples as lists (what a JSON round trip gives back)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> "PreprocessConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "PreprocessConfig":
        """Typed and strict (schemas/config.py): an unknown key or a value of the wrong type raises ConfigError,
        one line per problem naming `source` and the key."""
        return cls(**check_fields(cls, d, source, what="preprocess config"))

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "PreprocessConfig":
        """YAML file, then `overrides` (CLI flags that were given) on top; each checked under its own source."""
        data = read_yaml(path)
        values = check_fields(cls, data, str(path), what="preprocess config")
        values.update(check_fields(cls, overrides, "command line", what="preprocess config"))
        return cls(**values)


def parse_labels_arg(value: str) -> tuple[LabelMode, str | None]:
    """--labels dirs|none|PATH.csv|PATH.json -> (mode, sidecar path)."""
    if value in (LabelMode.NONE.value, LabelMode.DIRS.value):
        return LabelMode(value), None
    if value.lower().endswith((".csv", ".json")):
        return LabelMode.SIDECAR, value
    raise ValueError(f"--labels: expected 'dirs', 'none' or a .csv/.json sidecar path, got {value!r}")
