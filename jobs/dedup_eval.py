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

import csv
import dataclasses
import json
import os
import sys
from collections import Counter, defaultdict
from itertools import combinations
from jobs.cliutil import Parser

WRONG_PAIRS_SHOWN = 20  # wrong pairs listed per kind (false merges, misses)


@dataclasses.dataclass(frozen=True)
class DedupEvalConfig:
    truth: str                      # CSV (source_uri,group) or JSON {group: [uris]}
    duplicates: str | tuple[str, ...]         # a duplicates Parquet directory or file, or the files a manifest lists
    images: tuple[str, ...] | None = None     # the dataset's listed image files (only to report truth images found nowhere)
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
    false_positive_pairs: int = 0   # merged by us, distinct in the truth
    false_negative_pairs: int = 0   # one picture in the truth, kept apart by us
    true_negative_pairs: int = 0    # distinct in both
    # Up to WRONG_PAIRS_SHOWN of each: [a, b, signals of a's and b's duplicates rows (or None)].
    false_merges: list = dataclasses.field(default_factory=list)
    misses: list = dataclasses.field(default_factory=list)


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
    return [(r["source_uri"], r["kept_source_uri"]) for r in read_duplicate_rows(path)]


def read_duplicate_rows(path: str | tuple[str, ...]) -> list[dict]:
    """Every duplicates row as a dict (source_uri, kept_source_uri, kind, distance, similarity when present)."""
    import pyarrow.dataset as ds

    if isinstance(path, str) and not os.path.exists(path):
        raise FileNotFoundError(f"duplicates {path} not found: expected a dataset's duplicates/ or a Parquet file")
    if not path:
        return []
    dataset = ds.dataset(list(path) if not isinstance(path, str) else path, format="parquet", partitioning="hive")
    wanted = [c for c in ("source_uri", "kept_source_uri", "kind", "distance", "similarity") if c in dataset.schema.names]
    return dataset.to_table(columns=wanted).to_pylist()


def _pairs(sizes) -> int:
    return sum(n * (n - 1) // 2 for n in sizes)


def score(truth: dict[str, str], duplicates: list[tuple[str, str]], known: set[str] | None = None,
          signals: dict[str, dict] | None = None) -> DedupEvalResult:
    """Pairwise scores from group sizes (no pair enumeration): a pair is in our group g and truth group t
    for C(|g & t|, 2) pairs. Wrong pairs are listed (a few of each kind) with `signals` (source_uri -> its
    duplicates row) of both images."""
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
    signals = signals or {}
    false_merges, misses = [], []
    for members in _members(predicted).values():  # merged by us, distinct in the truth
        for a, b in combinations(sorted(members), 2):
            if truth[a] != truth[b] and len(false_merges) < WRONG_PAIRS_SHOWN:
                false_merges.append([a, b, signals.get(a), signals.get(b)])
    for members in _members(truth).values():  # one picture, kept apart by us
        for a, b in combinations(sorted(members), 2):
            if predicted[a] != predicted[b] and len(misses) < WRONG_PAIRS_SHOWN:
                misses.append([a, b, signals.get(a), signals.get(b)])
    all_pairs = _pairs([len(truth)])
    return DedupEvalResult(len(truth), pp, tp_, tpos, precision, recall, f1, dropped_not_in_truth,
                           sum(1 for u in truth if u not in seen) if known is not None else 0,
                           false_positive_pairs=pp - tpos, false_negative_pairs=tp_ - tpos,
                           true_negative_pairs=all_pairs - pp - tp_ + tpos, false_merges=false_merges, misses=misses)


def _members(group_of: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for uri, group in group_of.items():
        out[group].append(uri)
    return out


def evaluate(config: DedupEvalConfig) -> DedupEvalResult:
    known = None
    if config.images is not None:
        import pyarrow.dataset as ds

        known = set(ds.dataset(list(config.images), format="parquet").to_table(columns=["source_uri"]).column("source_uri").to_pylist()) if config.images else set()
    rows = read_duplicate_rows(config.duplicates)
    signals = {r["source_uri"]: {k: v for k, v in r.items() if k != "source_uri"} for r in rows}
    return score(read_truth(config.truth), [(r["source_uri"], r["kept_source_uri"]) for r in rows], known, signals)


def parse(argv: list[str]) -> DedupEvalConfig:
    ap = Parser(prog="imagegen dedup-eval", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a preprocessed dataset OUT dir (reads OUT/duplicates and OUT/images)")
    src.add_argument("--duplicates", help="a duplicates Parquet directory or file")
    ap.add_argument("--truth", required=True, help="ground truth: CSV source_uri,group or JSON {group: [uris]}")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    a = ap.parse_args(argv)
    if a.dataset:
        from schemas.layout import Manifest, listed_files

        # exactly the files the manifest lists, checked against their row counts
        manifest = Manifest.read(a.dataset)
        return DedupEvalConfig(truth=a.truth, duplicates=tuple(listed_files(a.dataset, manifest, "duplicates")),
                               images=tuple(listed_files(a.dataset, manifest, "images")), as_json=a.json)
    return DedupEvalConfig(truth=a.truth, duplicates=a.duplicates, as_json=a.json)


def main(argv: list[str]) -> int:
    try:
        config = parse(argv)
        print(f"dedup-eval: truth {config.truth}, duplicates from "
              f"{config.duplicates if isinstance(config.duplicates, str) else f'{len(config.duplicates)} listed file(s)'}",
              file=sys.stderr)
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
        print("pair confusion        truth: same   truth: different")
        print(f"  we merged          {result.true_positive_pairs:>11} {result.false_positive_pairs:>18}")
        print(f"  we kept apart      {result.false_negative_pairs:>11} {result.true_negative_pairs:>18}")
        for title, pairs in (("false merges (distinct images we merged)", result.false_merges),
                             ("misses (copies we kept apart)", result.misses)):
            if pairs:
                print(f"{title}, first {len(pairs)}:")
                for a, b, sa, sb in pairs:
                    print(f"  {a}\n    {b}\n    signals: {_signals_text(sa)} | {_signals_text(sb)}")
        if result.dropped_not_in_truth or result.truth_not_found:
            print(f"not scored: {result.dropped_not_in_truth} dropped images absent from the truth; "
                  f"{result.truth_not_found} truth images found in neither images/ nor duplicates/ (rejected?)")
    return 0


def _signals_text(row: dict | None) -> str:
    if row is None:
        return "kept"
    sim = row.get("similarity")
    sim_text = "n/a" if sim is None or sim != sim else f"{sim:.4f}"
    return f"{row.get('kind')} -> {row.get('kept_source_uri')}: pHash distance {row.get('distance')}, similarity {sim_text}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
