"""`imagegen SUBCOMMAND ...`: a thin dispatcher. Each subcommand is a module in `jobs/` with `main(argv)`."""
from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help). Modules are imported only when used, so
# `imagegen doctor` does not pay for torch and `imagegen train` does not start Spark.
COMMANDS = {
    "demo": ("jobs.demo", "the main job end to end on an embedded default corpus (MNIST)"),
    "doctor": ("jobs.doctor", "check this machine against the pinned stack"),
    "preprocess": ("jobs.preprocess", "images -> validated, labelled, normalised Parquet (Spark)"),
    "dedup-eval": ("jobs.dedup_eval", "precision/recall of dedup decisions against a ground-truth grouping"),
    "train": ("jobs.train", "train a GAN or VAE on a preprocessed dataset"),
    "generate": ("jobs.generate", "write samples from a checkpoint"),
    "nightly": ("jobs.nightly", "one night of retraining: incremental preprocess, warm-start training, evaluation, promotion"),
    "models": ("jobs.models", "the model registry: list | show | promote | rollback"),
    "evaluate": ("jobs.evaluate", "FID/KID, precision/recall (and ELBO, class accuracy) of a checkpoint, with real-data floors"),
    "report": ("jobs.report", "a self-contained HTML report of a dataset OUT or a training RUN"),
    "sample-data": ("jobs.sample_data", "a small shapes or MNIST collection with planted duplicates and corrupt files"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: imagegen SUBCOMMAND [ARGS ...]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`imagegen SUBCOMMAND --help` for the options of one."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"imagegen: unknown subcommand {name!r}; expected one of {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
