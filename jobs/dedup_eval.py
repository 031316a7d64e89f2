"""`imagegen dedup-eval`: pairwise precision / recall / F1 of dedup decisions against a ground truth.

    imagegen dedup-eval --dataset OUT --truth groups.csv
    imagegen dedup-eval --duplicates OUT/duplicates --truth groups.json [--json]

Our decisions group each kept image with the images dropped against it (duplicates/ rows
source_uri -> kept_source_uri). The truth groups images that are copies of one picture: a CSV with
columns source_uri,group or a JSON object {group: [source_uri, ...]}. A pair of images counts as
predicted when both are in one of our groups, as true when both are in one truth group; only
images named in the truth file are scored (others are counted and reported). Tune
--near-dup-distance on your data by running preprocess with a few values and comparing.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from collections import Counter


@dataclasses.dataclass(frozen=True)
class DedupEvalConfig:
    truth: str                      # CSV (source_uri,group) or JSON {group: [uris]}
    duplicates: str                 # a duplicates/ Parquet directory or file
    images: str | None = None       # the dataset's images/ (only to report truth images found nowhere)
    as_json: bool = False


@dataclasses.dataclass(frozen=True)
class DedupEvalResult:
    scored_images: int          # images named in the truth file
    predicted_pairs: int        # pairs of scored images we put in one group
    true_pairs: int             # pairs of scored images the truth puts in one group
    true_positive_pairs: int
    precision: float            # tp / predicted (1.0 when nothing is predicted)
    recall: float               # tp / true (1.0 when the truth has no pairs)
    f1: float
    dropped_not_in_truth: int   # duplicates/ rows whose image is not in the truth file (not scored)
    truth_not_found: int        # truth images in neither images/ nor duplicates/ (only with images)


def read_truth(path: str) -> dict[str, str]:
    """-> {source_uri: group}. CSV needs a header with source_uri and group; JSON maps group -> list of uris."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"ground-truth file {path} not found")
    out: dict[str, str] = {}
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise ValueError(f"{path}: expected a JSON object {{group: [source_uri, ...]}}, found {type(data).__name__}")
        pairs = [(str(u), str(g)) for g, uris in data.items() for u in uris]
    else:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"source_uri", "group"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: expected a CSV header with columns source_uri,group, found {reader.fieldnames}")
            pairs = [(row["source_uri"], row["group"]) for row in reader]
    for uri, group in pairs:
        if out.setdefault(uri, group) != group:
            raise ValueError(f"{path}: {uri} is in two groups, {out[uri]!r} and {group!r}")
    return out


def read_duplicates(path: str) -> list[tuple[str, str]]:
    """(source_uri, kept_source_uri) rows of a duplicates/ dataset (hive partitions allowed)."""
    import pyarrow.dataset as ds

    if not os.path.exists(path):
        raise FileNotFoundError(f"duplicates {path} not found: expected OUT/duplicates or a Parquet file")
    table = ds.dataset(path, format="parquet", partitioning="hive").to_table(columns=["source_uri", "kept_source_uri"])
    return list(zip(table.column("source_uri").to_pylist(), table.column("kept_source_uri").to_pylist()))


def _pairs(sizes) -> int:
    return sum(n * (n - 1) // 2 for n in sizes)


def score(truth: dict[str, str], duplicates: list[tuple[str, str]], known: set[str] | None = None) -> DedupEvalResult:
    """Pairwise scores from group sizes (no pair enumeration): a pair is in our group g and truth group t
    for C(|g & t|, 2) pairs."""
    predicted = {uri: uri for uri in truth}  # every scored image is its own group unless dropped
    dropped_not_in_truth = 0
    for uri, kept in duplicates:
        if uri in truth:
            predicted[uri] = kept
        else:
            dropped_not_in_truth += 1
    pred_sizes = Counter(predicted.values())
    true_sizes = Counter(truth.values())
    both = Counter((predicted[u], truth[u]) for u in truth)
    pp, tp_, tpos = _pairs(pred_sizes.values()), _pairs(true_sizes.values()), _pairs(both.values())
    precision = tpos / pp if pp else 1.0
    recall = tpos / tp_ if tp_ else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    seen = (known or set()) | {u for u, _ in duplicates}
    return DedupEvalResult(len(truth), pp, tp_, tpos, precision, recall, f1, dropped_not_in_truth,
                           sum(1 for u in truth if u not in seen) if known is not None else 0)


def evaluate(config: DedupEvalConfig) -> DedupEvalResult:
    known = None
    if config.images is not None:
        import pyarrow.dataset as ds

        known = set(ds.dataset(config.images, format="parquet", partitioning="hive").to_table(columns=["source_uri"]).column("source_uri").to_pylist())
    return score(read_truth(config.truth), read_duplicates(config.duplicates), known)


def parse(argv: list[str]) -> DedupEvalConfig:
    ap = argparse.ArgumentParser(prog="imagegen dedup-eval", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a preprocessed dataset OUT dir (reads OUT/duplicates and OUT/images)")
    src.add_argument("--duplicates", help="a duplicates Parquet directory or file")
    ap.add_argument("--truth", required=True, help="ground truth: CSV source_uri,group or JSON {group: [uris]}")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    a = ap.parse_args(argv)
    if a.dataset:
        from schemas.layout import DatasetLayout

        layout = DatasetLayout(a.dataset)
        return DedupEvalConfig(truth=a.truth, duplicates=layout.duplicates, images=layout.images, as_json=a.json)
    return DedupEvalConfig(truth=a.truth, duplicates=a.duplicates, as_json=a.json)


def main(argv: list[str]) -> int:
    config = parse(argv)
    print(f"dedup-eval config: {dataclasses.asdict(config)}", file=sys.stderr)
    try:
        result = evaluate(config)
    except (FileNotFoundError, ValueError) as e:
        print(f"imagegen dedup-eval: {e}", file=sys.stderr)
        return 2
    if config.as_json:
        print(json.dumps(dataclasses.asdict(result), sort_keys=True))
    else:
        print(f"scored images      {result.scored_images}")
        print(f"pairs: predicted {result.predicted_pairs}, true {result.true_pairs}, both {result.true_positive_pairs}")
        print(f"precision {result.precision:.4f}  recall {result.recall:.4f}  F1 {result.f1:.4f}")
        if result.dropped_not_in_truth or result.truth_not_found:
            print(f"not scored: {result.dropped_not_in_truth} dropped images absent from the truth; "
                  f"{result.truth_not_found} truth images found in neither images/ nor duplicates/ (rejected?)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
