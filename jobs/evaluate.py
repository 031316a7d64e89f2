"""`imagegen evaluate`: options -> one frozen EvalConfig -> training.evaluate.evaluate(config).

  imagegen evaluate --checkpoint RUN[/checkpoints/ckpt-N.pt] --data OUT [--num-samples 10000]
                    [--features auto|inception|domain] [--inception-weights FILE] [--json] [--seed 0]
  horovodrun -np 2 -H localhost:2 --gloo imagegen evaluate ...     samples split across ranks (horovod)
  torchrun --nproc_per_node 2 -m jobs.evaluate ...                  the same with torch.distributed

Prints a table (or the JSON with --json) and writes RUN/<checkpoint stem>.metrics.json (rank 0).
Nothing is downloaded: Inception needs a local weights file. See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
import sys

from training.dist import Backend
from training.evaluate import EvalConfig
from training.features import DEFAULT_INCEPTION_WEIGHTS, FeatureKind
from jobs.cliutil import Parser


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="imagegen evaluate", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or RUN/ (its newest valid checkpoint)")
    p.add_argument("--data", required=True, help="preprocessed dataset root OUT (the real images)")
    p.add_argument("--num-samples", dest="num_samples", type=int, default=EvalConfig.num_samples,
                   help="per set; capped so that both real sets and the domain network's rows fit in the pool")
    p.add_argument("--features", choices=[k.value for k in FeatureKind], default=FeatureKind.AUTO.value,
                   help=f"auto: inception when weights are given or at {DEFAULT_INCEPTION_WEIGHTS}, else the domain network")
    p.add_argument("--inception-weights", dest="inception_weights", default=None, help="local InceptionV3 weights (.pth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=3, help="neighbours for precision / recall / coverage")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256)
    p.add_argument("--max-real", dest="max_real", type=int, default=EvalConfig.max_real, help="real rows read into memory")
    p.add_argument("--extractor-fraction", dest="extractor_fraction", type=float, default=EvalConfig.extractor_fraction,
                   help="share of the real pool, at least, that only trains the domain network (never a reference row)")
    p.add_argument("--features-from", dest="features_from", default=None, metavar="DATASET",
                   help="train the domain network on this dataset (same image size and classes) instead of a split")
    p.add_argument("--backend", choices=[b.value for b in Backend], default=Backend.AUTO.value)
    p.add_argument("--out", default=None, help="metrics JSON path (default RUN/<checkpoint stem>.metrics.json)")
    p.add_argument("--json", action="store_true", help="print the metrics JSON instead of the table")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str]) -> int:
    ns = vars(build_parser().parse_args(argv))
    as_json = ns.pop("json")
    from training.checkpoint import CheckpointError
    from training.evaluate import evaluate, format_table
    from training.features import FeatureError

    try:
        config = EvalConfig(**ns)
        result = evaluate(config)
    except (FileNotFoundError, CheckpointError, FeatureError, ValueError) as e:  # bad input: one line, no traceback
        print(f"imagegen evaluate: {e}", file=sys.stderr, flush=True)
        return 1
    from training import dist

    if dist.is_main():
        print(json.dumps(result, indent=2, sort_keys=True) if as_json else format_table(result), flush=True)
    return 0


if __name__ == "__main__":  # torchrun --nproc_per_node 2 -m jobs.evaluate ...
    sys.exit(main(sys.argv[1:]))
