"""What every dedup piece shares: the configuration, the formats ranked lossy, Spark column helpers.
"""
from __future__ import annotations

import dataclasses
import enum

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import similarity

HASH_BITS = 64  # imagehash pHash, hash_size 8

# Original formats whose files are lossy re-encodes (a PNG, TIFF, BMP or GIF holds its pixels exactly).
# WebP may be either; its header does not say which cheaply, so it ranks as lossy.
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP", "JPEG2000")


class CandidateMethod(str, enum.Enum):
    AUTO = "auto"    # EXACT while its cost model is at most exact_max_rows_per_image, else LSH
    EXACT = "exact"  # multi-index hashing: every pair within D; rows per image grow with N
    LSH = "lsh"      # sorted-window LSH: bounded work per image, recall measured (docs/dedup.md)


class VerifyMode(str, enum.Enum):
    NONE = "none"      # trust the 64-bit pHash alone (similarity is recorded as NaN)
    PIXELS = "pixels"  # also require pixel similarity >= min_similarity (pipelines/similarity.py)


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    # --near-dup-distance D: pHash (64-bit) Hamming distance at or below which two images are near
    # duplicates; 0 disables near-dup (exact only). Default from bench/dedup_quality.py, see docs/dedup.md.
    near_distance: int = similarity.DEFAULT_NEAR_DISTANCE
    # Multi-index hashing bands m; None = choose_bands(N, D) (cost model). The radius is always D // m.
    bands: int | None = None
    # A (band, value) bucket of more index rows than this is split into ceil(count / cap) salted
    # sub-buckets, each joined in its own task.
    hot_bucket_cap: int = 2000
    # Candidate generator (CandidateMethod). AUTO keeps the exact search where it is cheap (small runs,
    # small D) and switches to LSH above exact_max_rows_per_image join rows per image (mih_cost / N).
    candidates: CandidateMethod = CandidateMethod.AUTO
    exact_max_rows_per_image: float = 1000.0
    # LSH (lsh_pairs): coarse groups G (Spark rows per image), sub-tables T per group, window W (successors
    # compared per hash and sub-table). Work per image = G * T * W = 2,560 popcounts at any N. Recall on the
    # clustered bench hashes (bench/dedup.py, docs/dedup.md): 1.0 at 1M; 0.9966 of all pairs within 12 at 4M,
    # every pair within 9 bits found, 0.964 of the pairs at exactly 12 (more groups raise it).
    lsh_groups: int = 32
    lsh_subtables: int = 10
    lsh_window: int = 8
    # Rows per coarse group at most (on average): the group key gets ceil(log2(N / this)) bits, so one
    # group's numpy arrays stay ~17 bytes x 2^22 = 68 MiB (plus ~100 MiB of sort temporaries) per task at
    # any N. Key bits cost recall (a pair must agree on them for all T sub-tables of the group), so the
    # groups are as large as a task comfortably holds.
    lsh_max_group_rows: int = 1 << 22
    # A group of at most this many rows is compared all-pairs (n^2 / 2 popcounts: 2M at 2,048), so small
    # runs get every pair within D.
    lsh_exact_rows: int = 2048
    lsh_seed: int = 0
    verify: VerifyMode = VerifyMode.PIXELS
    # Min pixel similarity of a verified pair (pipelines/similarity.py, measured in docs/dedup.md).
    min_similarity: float = similarity.DEFAULT_MIN_SIMILARITY
    # Rounds of the distributed greedy MIS before falling back to the driver.
    max_rounds: int = 40
    # The fallback finishes on the driver only if at most this many undecided edges remain, else it fails.
    fallback_max_edges: int = 2_000_000
    # A similarity graph of at most this many verified edges is decided on the driver at once (the same
    # sequential greedy, ~100 bytes of Python per edge): each distributed round is a few Spark jobs, a fixed
    # cost of seconds that small and medium runs (most edges are few: duplicates are rare) need not pay.
    driver_max_edges: int = 100_000
    # A run of at most this many images (this run's plus earlier runs') is decided on the driver whole
    # (pipelines/dedup/driver.py: one compact table of ~200 bytes a row, exact candidates, the same keep rule):
    # two Spark jobs instead of ~70 stages. 0 = always distributed.
    driver_max_rows: int = 1_000_000
    # Broadcast the (band, value) index when it has at most this many rows (N * m); else a shuffle join.
    broadcast_max_rows: int = 4_000_000
    # Shuffle partitions for the joins; None = the session's spark.sql.shuffle.partitions.
    partitions: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.near_distance < HASH_BITS // 2:
            raise ValueError(f"near_distance must be in 0..{HASH_BITS // 2 - 1} (bits of a 64-bit pHash), got {self.near_distance}")
        if self.bands is not None and not 1 <= self.bands <= HASH_BITS:
            raise ValueError(f"bands must be in 1..{HASH_BITS} or None (auto), got {self.bands}")
        if self.hot_bucket_cap < 1 or self.max_rounds < 1:
            raise ValueError(f"hot_bucket_cap and max_rounds must be >= 1, got {self.hot_bucket_cap}, {self.max_rounds}")
        if not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"min_similarity must be in -1.0..1.0, got {self.min_similarity}")
        if not isinstance(self.verify, VerifyMode):
            raise TypeError(f"verify must be a VerifyMode, got {self.verify!r}")
        if not isinstance(self.candidates, CandidateMethod):
            raise TypeError(f"candidates must be a CandidateMethod, got {self.candidates!r}")
        if min(self.lsh_groups, self.lsh_subtables, self.lsh_window, self.lsh_max_group_rows, self.lsh_exact_rows) < 1:
            raise ValueError(f"lsh_groups, lsh_subtables, lsh_window, lsh_max_group_rows and lsh_exact_rows must be >= 1, got "
                             f"{self.lsh_groups}, {self.lsh_subtables}, {self.lsh_window}, {self.lsh_max_group_rows}, {self.lsh_exact_rows}")



def hamming(a: Column, b: Column) -> Column:
    """Hamming distance of two int64 columns, as int."""
    return F.bit_count(a.bitwiseXOR(b)).cast("int")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _band(col: Column, offset: int, width: int) -> Column:
    return F.shiftrightunsigned(col, offset).bitwiseAND(F.lit(_signed64((1 << width) - 1)).cast("long"))


def _checkpoint(df: DataFrame) -> DataFrame:
    """Cut lineage (rounds of joins) and materialise once."""
    return df.localCheckpoint(eager=True)


def _partitions(spark: SparkSession, config: DedupConfig) -> int:
    return config.partitions or int(spark.conf.get("spark.sql.shuffle.partitions"))




# The duplicates table's columns, as both deciders return them.
DUPLICATES_COLUMNS = ["source_uri", "kept_source_uri", "kind", "distance", "similarity"]
