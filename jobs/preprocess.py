"""`imagegen preprocess INPUT [INPUT ...] --output OUT ...`, also `spark-submit jobs/preprocess.py INPUT ... --output OUT`.

Thin: parse options -> one frozen PreprocessConfig -> print it -> run_preprocess().

examples:
  imagegen preprocess photos/ --output ds --labels dirs --resolution 64          class folders -> labelled dataset
  imagegen preprocess 'shards/*.tar' more.txt --output ds --resolution 32        tar shards and a URI list
  imagegen preprocess incoming/ --output ds --incremental                        only files no earlier run has seen
  imagegen preprocess photos/ --output ds --dry-run                              count inputs, print the plan
  spark-submit --master spark://host:7077 jobs/preprocess.py hdfs:///raw --output hdfs:///ds

Precedence: PreprocessConfig's defaults (pipelines/config.py) < --config FILE.yaml < flags.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    # Run as a file (spark-submit jobs/preprocess.py): make the repository's packages importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config import ChannelMode, FitMode, PixelEncoding, PreprocessConfig, parse_labels_arg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    from jobs.cliutil import Parser

    p = Parser(prog="imagegen preprocess", description=__doc__)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="directory (recursive), glob, URI-list .txt, tar shard or directory of shards, Parquet dataset")
    p.add_argument("--output", "-o", required=True, metavar="OUT", help="dataset root (local path or file:/hdfs:/s3a: URI)")
    p.add_argument("--resolution", type=int, help="output side in pixels (default 64)")
    p.add_argument("--fit", choices=[m.value for m in FitMode], help="center-crop (default), pad or stretch")
    p.add_argument("--labels", help="dirs | none (default) | PATH.csv | PATH.json")
    p.add_argument("--pixel-encoding", choices=[e.value for e in PixelEncoding], help="raw (default) or png")
    p.add_argument("--channels", choices=[c.value for c in ChannelMode],
                   help="stored channels: auto (default: 1 when every written image is grey, else 3), 1 or 3")
    p.add_argument("--min-size", type=int, help="reject images whose short side is below this (pixels, default 16)")
    p.add_argument("--max-pixels", type=int, help="decompression-bomb limit on declared width*height")
    p.add_argument("--max-aspect", type=float, help="reject when long/short side exceeds this")
    p.add_argument("--min-std", type=float, help="reject as blank when the grey std (0..255) is below this")
    p.add_argument("--image-column", help="Parquet inputs: the column holding image bytes")
    p.add_argument("--url-column", metavar="COL",
                   help="the inputs are tables of image URLs (Parquet, CSV, TSV, JSONL; text: one per line): fetch COL's URLs")
    p.add_argument("--disallowed-domains", metavar="FILE",
                   help="URL tables: never fetch these hosts or their subdomains (one per line; # comments)")
    p.add_argument("--ignore-opt-out", action="store_true",
                   help="URL tables: fetch even when X-Robots-Tag says noai / noimageai (default: opted_out reject)")
    p.add_argument("--partitions", type=int, help="decode partitions (default: 3 x Spark's cores)")
    p.add_argument("--arrow-batch-rows", type=int, help="rows per Arrow batch into the decode stage")
    p.add_argument("--near-dup-distance", type=int, metavar="D",
                   help="pHash Hamming distance for near duplicates (default 8; 0 = exact duplicates only)")
    p.add_argument("--min-similarity", type=float,
                   help="pHash candidates are near duplicates only when the pixel similarity of the normalised images is at least this (docs/dedup.md)")
    p.add_argument("--no-dedup", action="store_true", help="keep every valid image (no exact or near dedup)")
    p.add_argument("--incremental", action="store_true",
                   help="add to the dataset at OUT: only inputs no earlier run has seen, deduplicated against earlier runs")
    p.add_argument("--master", help="Spark master (default local[*]; under spark-submit its --master is used)")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML with PreprocessConfig keys; flags override it")
    p.add_argument("--overwrite", action="store_true", help="replace a complete dataset already at OUT")
    p.add_argument("--dry-run", action="store_true", help="list and count inputs, print the config and plan, write nothing")
    p.add_argument("--verbose", action="store_true",
                   help="also show Spark's own log on the console (INFO; it always goes to the log file named at the end)")
    return p


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    overrides = {}
    for name in ("resolution", "fit", "pixel_encoding", "min_size", "max_pixels", "max_aspect", "min_std",
                 "image_column", "url_column", "partitions", "arrow_batch_rows", "near_dup_distance", "min_similarity",
                 "channels"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.labels is not None:
        mode, path = parse_labels_arg(args.labels)
        overrides["labels"] = mode
        overrides["labels_path"] = path
    if args.overwrite:
        overrides["overwrite"] = True
    if args.incremental:
        overrides["incremental"] = True
    if args.no_dedup:
        overrides["dedup"] = False
    if args.ignore_opt_out:
        overrides["respect_opt_out"] = False
    if args.disallowed_domains:
        from pipelines.fetch import read_domains

        with open(args.disallowed_domains, encoding="utf-8") as f:
            overrides["disallowed_domains"] = sorted(read_domains(f))
    if args.config:
        return PreprocessConfig.from_yaml(args.config, **overrides)
    return PreprocessConfig.from_dict(overrides, source="command line")


def _check_local_inputs(inputs: list[str]) -> None:
    """A local input that does not exist fails here, in milliseconds, not after Spark's start-up. A path that does not
    exist as written may still be a glob (`shards/*.tar`); other schemes are left to the job."""
    import glob

    from schemas.uri import is_local, uri_to_path

    missing = [u for u in inputs if is_local(u) and not os.path.lexists(uri_to_path(u)) and not glob.glob(uri_to_path(u))]
    if missing:
        raise FileNotFoundError("input not found: " + ", ".join(missing) + " (check the path; globs must match at least one file)")


def _under_spark_submit() -> bool:
    # spark-submit starts the JVM first and hands Python its gateway port.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _ship_packages(spark) -> str | None:
    """On a cluster, executors need pipelines/ and schemas/: ship them as one zip (local masters share this venv).
    -> the zip's temporary directory, for the caller to remove when the job is over (executors fetch it lazily)."""
    master = spark.sparkContext.master
    if master.startswith("local"):
        return None
    import tempfile
    import zipfile

    folder = tempfile.mkdtemp(prefix="imagegen-pyfiles-")
    path = os.path.join(folder, "imagegen_pkgs.zip")
    with zipfile.ZipFile(path, "w") as z:
        for pkg in ("pipelines", "schemas"):
            for f in (REPO / pkg).rglob("*.py"):
                z.write(f, f.relative_to(REPO).as_posix())
    spark.sparkContext.addPyFile(path)
    return folder


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = config_from_args(args)
        cfg.check_job()
        _check_local_inputs(args.inputs)
    except (ValueError, OSError) as exc:  # before Spark starts: one line per problem, no traceback
        for line in str(exc).splitlines():
            print(f"imagegen preprocess: {line}", file=sys.stderr)
        return 2
    print("imagegen preprocess config:", json.dumps(cfg.to_dict(), sort_keys=True), flush=True)
    if args.verbose:
        os.environ.setdefault("IMAGEGEN_SPARK_LOG", "INFO")
    from pipelines import interrupt

    interrupt.install()  # from here a Ctrl-C or SIGTERM is one line and exit 130/143 (pipelines/interrupt.py)
    try:
        rc = _run(args, cfg)
        if interrupt.requested() is not None and rc == 0:
            print("imagegen preprocess: the interrupt came after the commit: the run completed", file=sys.stderr)
        return rc
    except BaseException:
        signum = interrupt.requested()
        if signum is None:
            raise
        # Whatever the signal interrupted (a stage boundary, a cancelled Spark job, the start-up), the run's own
        # cleanup has removed what it wrote: OUT is as it was.
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"imagegen preprocess: interrupted ({name}) during {interrupt.phase()}: nothing was committed and "
              f"{args.output} is as it was; run the same command again to continue", file=sys.stderr, flush=True)
        return 128 + signum
    finally:
        interrupt.reset()


def _run(args: argparse.Namespace, cfg: PreprocessConfig) -> int:
    from pipelines import interrupt
    from pipelines.preprocess import plan_preprocess, run_preprocess
    from pipelines.spark import get_spark

    if _under_spark_submit():
        if args.master:
            print(f"imagegen preprocess: ignoring --master {args.master}: spark-submit's --master is used", file=sys.stderr)
        master = None
    else:
        master = args.master or "local[*]"
    from pyspark.sql import SparkSession

    shared = SparkSession.getActiveSession()  # a caller's session (tests, notebooks) is left running
    t0 = time.monotonic()
    spark = get_spark(master, app_name="imagegen-preprocess")
    if shared is None:  # Spark's own start, apart from the job's stage timings (docs/benchmarks.md)
        print(f"imagegen preprocess: Spark {spark.version} up in {time.monotonic() - t0:.1f}s "
              f"(master {spark.sparkContext.master})", flush=True)
    interrupt.install(spark)  # again: PySpark's context replaced our SIGINT handler with its own
    shipped = None
    try:
        interrupt.enter("start-up")
        shipped = _ship_packages(spark)
        if args.dry_run:
            print(plan_preprocess(spark, args.inputs, args.output, cfg).render())
            return 0
        result = run_preprocess(spark, args.inputs, args.output, cfg)
        _print_next(args, result)
        return 0
    except BaseException as exc:
        if interrupt.requested() is not None:
            raise  # whatever broke, it broke because we stopped it: main() prints the one line
        return _failed(exc, args, cfg, spark)
    finally:
        if shared is None:
            spark.stop()
        if shipped is not None:
            shutil.rmtree(shipped, ignore_errors=True)


def _failed(exc: BaseException, args: argparse.Namespace, cfg: PreprocessConfig, spark) -> int:
    """A failed run's one line and exit code; an exception nobody explains is raised again."""
    from pipelines.lock import LockedError
    from pipelines.preprocess import DatasetExistsError, NotADatasetError, NothingWrittenError, plan_preprocess

    try:
        raise exc
    except (DatasetExistsError, NotADatasetError, FileNotFoundError, ValueError) as exc:
        print(f"imagegen preprocess: {exc}", file=sys.stderr)
        return 2
    except LockedError as exc:
        print(f"imagegen preprocess: {exc}", file=sys.stderr)
        return 3
    except NothingWrittenError as exc:
        print(f"imagegen preprocess: failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a full disk (OSError ENOSPC, or the JVM's "No space left on device" in a Py4J error)
        from jobs.diskspace import free_bytes, human, local_path, out_of_space

        if out_of_space(exc) is None:
            raise
        # The run removed its partitions and staging on the way out (pipelines/preprocess.py); estimate what it needs:
        # each input is staged uncompressed (res x res x 3 bytes of pixels plus ~512 bytes of columns) and written again
        # to images/ before the staging goes, so about twice that per input at the peak.
        per_row = 2 * (cfg.resolution * cfg.resolution * 3 + 512)
        try:
            count = plan_preprocess(spark, args.inputs, args.output, cfg).input_count
            need = f"about {human(count * per_row)} ({count} inputs x ~{human(per_row)} per stored row)"
        except Exception:  # noqa: BLE001  the estimate is a courtesy: the one line matters more
            need = f"about {human(per_row)} per input"
        local = local_path(args.output)
        free = f", {human(free_bytes(local))} free there" if local is not None else ""
        print(f"imagegen preprocess: out of disk space writing {args.output}: needs {need}{free}; nothing was written "
              "(no manifest, no partial partitions). Free some space or choose another --output", file=sys.stderr)
        return 1


def _print_next(args: argparse.Namespace, result) -> None:
    """The last lines of every job (train and nightly end the same way): what was made, where it is, what next."""
    import shlex

    from pipelines.spark import spark_log_file

    m, out = result.manifest, shlex.quote(args.output)
    print(f"made: dataset run {m.run_id}, {m.counts['written']} images ({m.resolution} px)", flush=True)
    print(f"where: {args.output} (manifest.json lists its files)" +
          (f"; Spark's log: {spark_log_file()}" if spark_log_file() is not None else ""), flush=True)
    print(f"next: imagegen train --data {out} --run-dir RUN   (or: imagegen report {out})", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
