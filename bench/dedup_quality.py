"""Near-dup quality on digits and photos: ours (pHash candidates + pixel similarity) vs the old rule vs pHash alone.

    .venv/bin/python bench/dedup_quality.py [--resolution 32] [--seed 0] [--n-digits 2000]

Corpora (jobs/dedup_corpora.py), written as real files to a temporary folder:
  tune      MNIST train digits (seed) + the photo families of even index (seed)
  held-out  MNIST test digits and scikit-learn digits (seed + 1) + the photo families of odd index (seed + 1)
Every file goes through pipelines.decode.process_image (the preprocess job's decode, resolution
--resolution, min_size 16): its `phash` (the images/ column) and its stored normalised pixels. Methods,
all grouped by the same greedy keep rule (best rank first, see `rank_key`; an image is dropped when an
already-kept image is an accepted neighbour, and joins the best-ranked one):
  ours      pHash within DEFAULT_NEAR_DISTANCE and pipelines.similarity >= DEFAULT_MIN_SIMILARITY
  old       pHash within 8 and the 256-bit pHash (imagehash, hash_size 16) of the stored pixels within 56
  phash10   imagehash.phash of the original file within 10 (imagededup's default), nothing else
Scores: pairwise precision / recall (jobs.dedup_eval.score) and `lost`, the fraction of distinct
pictures (truth groups) of which no file is kept. Offline; about a minute per resolution on 2 cores.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jobs.dedup_corpora import ORIGINAL, Corpus, photo_families, write_digit_corpus, write_photo_corpus  # noqa: E402
from jobs.dedup_eval import score  # noqa: E402
from pipelines import similarity  # noqa: E402
from pipelines.config import PreprocessConfig  # noqa: E402
from pipelines.decode import Decoded, process_image  # noqa: E402
from pipelines.dedup import LOSSY_FORMATS  # noqa: E402
from pipelines.phash import VIEWS, ZOOMS, canonical_grays, hamming, phash_batch, view_hashes  # noqa: E402
from schemas.uri import uri_to_path  # noqa: E402

OLD_NEAR_DISTANCE, OLD_VERIFY_DISTANCE = 8, 56   # the rule before pipelines/similarity.py
BASELINE_DISTANCE = 10                            # imagededup's default pHash threshold
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)


class Files:
    """What the preprocess job knows of each file of a corpus, in rank order (best first)."""

    def __init__(self, corpus: Corpus, resolution: int) -> None:
        cfg = PreprocessConfig(resolution=resolution, min_size=16)
        rows = []
        for uri in corpus.groups:
            data = Path(uri_to_path(uri)).read_bytes()
            d = process_image(data, uri, cfg)
            if not isinstance(d, Decoded):
                raise RuntimeError(f"{uri} was rejected: {d}")
            rows.append((rank_key(d.row), uri, d, data))
        rows.sort(key=lambda r: r[0])
        self.uris = [r[1] for r in rows]
        self.group = np.array([corpus.groups[u] for u in self.uris])
        self.kind = np.array([corpus.kinds[u] for u in self.uris])
        self.pixels = [np.array(r[2].rgb) for r in rows]
        self.phash = phash_batch(np.stack([r[2].gray for r in rows]))            # the images/ `phash`
        self.signature = similarity.signatures(self.pixels)
        # Old rule: 256-bit pHash of the stored pixels; baseline: 64-bit pHash of the original file.
        self.phash256 = np.stack([_imagehash_bits(Image.fromarray(p), 16) for p in self.pixels])
        self.phash_file = np.stack([_imagehash_bits(Image.open(io.BytesIO(r[3])), 8) for r in rows])
        # View pHashes (pipelines/phash.py VIEWS), of the file decoded at full size (the job's JPEG draft aside)
        greys = [canonical_grays(Image.open(io.BytesIO(r[3])).convert("RGB")) for r in rows]
        self.views = view_hashes(np.stack([g[0] for g in greys]), np.stack([g[1] for g in greys]))
        self.truth = corpus.groups


def rank_key(row: dict) -> tuple:
    """Best first: larger original resolution, then lossless before lossy, then larger file, then URI."""
    return (-row["orig_width"] * row["orig_height"], row["orig_format"].upper() in LOSSY_FORMATS, -row["file_size"], row["source_uri"])


def _imagehash_bits(image: Image.Image, size: int) -> np.ndarray:
    import imagehash

    return np.packbits(imagehash.phash(image, hash_size=size).hash.reshape(-1).astype(np.uint8))


def _hamming_rows(bits: np.ndarray, i: int) -> np.ndarray:
    """Hamming distance of packed row i to rows i+1.. (uint8 (N, B) bit arrays)."""
    return _POP8[bits[i] ^ bits[i + 1:]].sum(axis=1)


def pairs_within(bits: np.ndarray, distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) whose packed bit rows are within `distance`: (i, j, d), brute force."""
    out_i, out_j, out_d = [], [], []
    for i in range(len(bits) - 1):
        d = _hamming_rows(bits, i)
        k = np.flatnonzero(d <= distance)
        out_i.append(np.full(len(k), i))
        out_j.append(k + i + 1)
        out_d.append(d[k])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def phash_bits(files: Files) -> np.ndarray:
    return files.phash.astype(">i8").view(np.uint8).reshape(-1, 8)


def greedy(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The keep rule over accepted edges (i, j) of rank-ordered nodes: -> keeper[k] = k if kept, else the
    best-ranked kept neighbour."""
    nbrs: list[list[int]] = [[] for _ in range(n)]
    for a, b in zip(i.tolist(), j.tolist()):
        nbrs[max(a, b)].append(min(a, b))  # only better-ranked neighbours matter when visiting in order
    keeper = np.arange(n)
    for k in range(n):
        kept = [m for m in nbrs[k] if keeper[m] == m]
        if kept:
            keeper[k] = min(kept)
    return keeper


def evaluate(files: Files, keeper: np.ndarray) -> tuple[float, float, float]:
    """-> (pairwise precision, recall, fraction of truth groups with no kept file)."""
    dups = [(files.uris[k], files.uris[keeper[k]]) for k in range(len(keeper)) if keeper[k] != k]
    r = score(files.truth, dups)
    kept_groups = set(files.group[keeper == np.arange(len(keeper))].tolist())
    groups = set(files.group.tolist())
    return r.precision, r.recall, 1.0 - len(kept_groups) / len(groups)


def ours(files: Files, distance: int, min_similarity: float) -> np.ndarray:
    i, j, _ = pairs_within(phash_bits(files), distance)
    s = similarity.similarities([files.signature[k] for k in i], [files.signature[k] for k in j])
    ok = s >= min_similarity
    return greedy(len(files.uris), i[ok], j[ok])


def old_rule(files: Files) -> np.ndarray:
    i, j, _ = pairs_within(phash_bits(files), OLD_NEAR_DISTANCE)
    v = _POP8[files.phash256[i] ^ files.phash256[j]].sum(axis=1)
    ok = v <= OLD_VERIFY_DISTANCE
    return greedy(len(files.uris), i[ok], j[ok])


def phash_only(files: Files) -> np.ndarray:
    i, j, _ = pairs_within(files.phash_file, BASELINE_DISTANCE)
    return greedy(len(files.uris), i, j)


def distributions(files: Files, distance: int, min_similarity: float) -> list[str]:
    """Per variant kind: the lowest similarity of a true candidate pair (the variant against any file of its
    group), and over the false candidate pairs the highest similarity and how many pass."""
    i, j, d = pairs_within(phash_bits(files), distance)
    s = similarity.similarities([files.signature[k] for k in i], [files.signature[k] for k in j])
    true = files.group[i] == files.group[j]
    lines = []
    for kind in sorted(set(files.kind.tolist()) - {ORIGINAL}):
        sel = true & ((files.kind[i] == kind) | (files.kind[j] == kind))
        vs_orig = sel & ((files.kind[i] == ORIGINAL) | (files.kind[j] == ORIGINAL))
        lines.append(f"  {kind:16s} true pairs {int(sel.sum()):5d}: min sim {s[sel].min():.4f} (vs original {s[vs_orig].min():.4f}), "
                     f"max pHash d {int(d[sel].max())}")
    false = ~true
    top = np.sort(s[false])[::-1][:3]
    lines.append(f"  false candidate pairs {int(false.sum())}: top similarities {np.round(top, 4).tolist()}, "
                 f"passing {int((s[false] >= min_similarity).sum())}")
    return lines


def candidate_recall(files: Files, distance: int) -> list[str]:
    """Per variant kind: of its files, how many are within `distance` of their original by the whole pHash, and
    by the best of the view channels (zoom against whole either way, each mask against the same mask)."""
    pos = {u: k for k, u in enumerate(files.uris)}
    lines = []
    for kind in sorted(set(files.kind.tolist()) - {ORIGINAL}):
        ks = np.flatnonzero(files.kind == kind)
        os_ = np.array([pos[files.truth[files.uris[k]]] for k in ks])
        whole = hamming(files.phash[ks], files.phash[os_])
        zoom = np.min([np.minimum(hamming(files.views[ks, v], files.phash[os_]), hamming(files.phash[ks], files.views[os_, v]))
                       for v in range(len(ZOOMS))], axis=0)
        masks = np.min([hamming(files.views[ks, v], files.views[os_, v]) for v in range(len(ZOOMS), len(VIEWS))], axis=0)
        best = np.minimum(whole, np.minimum(zoom, masks))
        lines.append(f"  {kind:16s} {len(ks):3d} files: within {distance} by whole pHash {int((whole <= distance).sum()):3d} "
                     f"(max {int(whole.max()):2d}), with views {int((best <= distance).sum()):3d} (max {int(best.max()):2d}; "
                     f"zoom max {int(zoom.max())}, masks max {int(masks.max())})")
    return lines


def cost_per_pair_us(files: Files, pairs: int = 200_000) -> float:
    rng = np.random.default_rng(0)
    a = [files.signature[k] for k in rng.integers(len(files.signature), size=pairs)]
    b = [files.signature[k] for k in rng.integers(len(files.signature), size=pairs)]
    t = time.perf_counter()
    for k in range(0, pairs, 4096):  # a mapInArrow batch at a time
        similarity.similarities(a[k:k + 4096], b[k:k + 4096])
    return (time.perf_counter() - t) / pairs * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=64, help="stored side, pixels (the preprocess --resolution)")
    ap.add_argument("--seed", type=int, default=0, help="tuning seed; the held-out corpora use seed + 1")
    ap.add_argument("--n-digits", type=int, default=2000, help="distinct digits per digit corpus (sklearn: at most ~1,790)")
    ap.add_argument("--distance", type=int, default=similarity.DEFAULT_NEAR_DISTANCE, help="ours: pHash candidate radius D")
    ap.add_argument("--min-similarity", type=float, default=similarity.DEFAULT_MIN_SIMILARITY, help="ours: pixel test threshold")
    args = ap.parse_args(argv)
    t0 = time.time()
    families = sorted(photo_families().items())
    halves = [[b for k, (_, bases) in enumerate(families) if k % 2 == h for b in bases] for h in (0, 1)]
    methods: dict[str, Callable[[Files], np.ndarray]] = {
        f"ours D={args.distance} sim>={args.min_similarity}": lambda f: ours(f, args.distance, args.min_similarity),
        f"old D={OLD_NEAR_DISTANCE} phash256<={OLD_VERIFY_DISTANCE}": old_rule,
        "phash10 (file, imagededup default)": phash_only,
    }
    with tempfile.TemporaryDirectory(prefix="dedup-quality-") as tmp:
        root = Path(tmp)
        corpora = {
            "tune digits mnist-train": lambda: write_digit_corpus(root / "d0", args.n_digits, args.seed, "mnist-train"),
            "tune photos (even)": lambda: write_photo_corpus(root / "p0", args.seed, photos=halves[0]),
            "held-out digits mnist-test": lambda: write_digit_corpus(root / "d1", args.n_digits, args.seed + 1, "mnist-test"),
            "held-out digits sklearn": lambda: write_digit_corpus(root / "d2", min(args.n_digits, 1700), args.seed + 1, "sklearn"),
            "held-out photos (odd)": lambda: write_photo_corpus(root / "p1", args.seed + 1, photos=halves[1]),
        }
        print(f"# resolution {args.resolution}, seed {args.seed}; signature {similarity.SIGNATURE_BYTES} bytes\n")
        print("| corpus | files | groups | " + " | ".join(f"{m}: P / R / lost" for m in methods) + " |")
        print("|---|---|---|" + "---|" * len(methods))
        details = []
        views: list[tuple[str, list[str]]] = []
        for name, make in corpora.items():
            files = Files(make(), args.resolution)
            cells = []
            for method in methods.values():
                p, r, lost = evaluate(files, method(files))
                cells.append(f"{p:.4f} / {r:.4f} / {lost:.2%}")
            print(f"| {name} | {len(files.uris)} | {len(set(files.group.tolist()))} | " + " | ".join(cells) + " |", flush=True)
            details.append((name, distributions(files, args.distance, args.min_similarity)))
            if "photos" in name:
                views.append((name, candidate_recall(files, args.distance)))
            if name.startswith("held-out photos"):
                cost = cost_per_pair_us(files)
    print(f"\n# ours, similarity of candidate pairs (pHash within {args.distance}) per variant kind")
    for name, lines in details:
        print(name)
        print("\n".join(lines))
    print(f"\n# candidates: variant files within pHash {args.distance} of their original, whole hash vs view hashes (11/14)")
    for name, lines in views:
        print(name)
        print("\n".join(lines))
    print(f"\nsimilarity cost: {cost:.2f} us per pair (batches of 4096); elapsed {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
