"""`imagegen train`: options -> one frozen TrainConfig -> training.loop.train(config).

Launch it the ways users already know (each process runs this same entry point):
  imagegen train --data OUT ...                                      one process (backend single)
  horovodrun -np 2 -H localhost:2 --gloo imagegen train --data OUT   backend horovod (auto-detected)
  torchrun --nproc_per_node 2 -m jobs.train --data OUT ...           backend ddp (auto-detected)
  imagegen train --launcher spark --num-proc 2 --data OUT ...        horovod inside Spark executors
                                                                     (horovod.spark.run on a local[N] session,
                                                                     or on a cluster with --master spark://HOST:PORT)
Configuration precedence: TrainConfig defaults < --config FILE.yaml (keys = TrainConfig field names) < flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import sys
from pathlib import Path
from typing import Any

from schemas.config import check_fields, read_yaml
from training.config import Backend, GanLoss, ModelKind, Precision, ReaderKind, TrainConfig
from jobs.cliutil import Parser


class Launcher(str, enum.Enum):
    NONE = "none"    # this process is one rank (started by you, horovodrun or torchrun)
    SPARK = "spark"  # start --num-proc horovod ranks as Spark tasks with horovod.spark.run


def _values(e: type[enum.Enum]) -> list[str]:
    return [m.value for m in e]


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="imagegen train", description=__doc__)
    S = argparse.SUPPRESS  # unset flags do not override the YAML file or the defaults
    p.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    p.add_argument("--data", default=S, help="preprocessed dataset root OUT (with manifest.json)")
    p.add_argument("--run-dir", dest="run_dir", default=S, help="output directory RUN/")
    p.add_argument("--model", choices=_values(ModelKind), default=S)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, default=S, help="total training steps")
    g.add_argument("--epochs", type=int, default=S, help="total epochs (default: 1 when neither is given)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=S, help="per-rank batch size")
    p.add_argument("--lr", type=float, default=S, help="sets --lr-g, --lr-d and --lr-vae")
    p.add_argument("--lr-g", dest="lr_g", type=float, default=S, help="generator learning rate")
    p.add_argument("--lr-vae", dest="lr_vae", type=float, default=S, help="VAE learning rate")
    p.add_argument("--lr-d", dest="lr_d", type=float, default=S, help="discriminator learning rate")
    p.add_argument("--lr-scale-with-world", dest="lr_scale_with_world", type=_bool, default=S, help="multiply lrs by world size")
    p.add_argument("--beta1", type=float, default=S)
    p.add_argument("--beta2", type=float, default=S)
    p.add_argument("--gan-loss", dest="gan_loss", choices=_values(GanLoss), default=S)
    p.add_argument("--r1-gamma", dest="r1_gamma", type=float, default=S, help="R1 penalty weight (0: off)")
    p.add_argument("--r1-every", dest="r1_every", type=int, default=S, help="lazy R1 interval in steps")
    p.add_argument("--ms-weight", dest="ms_weight", type=float, default=S, help="mode-seeking weight in G's loss (0: off)")
    p.add_argument("--mbstd-group", dest="mbstd_group", type=int, default=S, help="D minibatch-stddev group (0: off)")
    p.add_argument("--beta-kl", dest="beta_kl", type=float, default=S, help="VAE KL weight (beta-VAE)")
    p.add_argument("--z-dim", dest="z_dim", type=int, default=S)
    p.add_argument("--base-channels", dest="base_channels", type=int, default=S)
    p.add_argument("--ema-decay", dest="ema_decay", type=float, default=S)
    p.add_argument("--precision", choices=_values(Precision), default=S)
    p.add_argument("--channels-last", dest="channels_last", type=_bool, default=S, help="default: on CUDA only")
    p.add_argument("--backend", choices=_values(Backend), default=S)
    p.add_argument("--reader", choices=_values(ReaderKind), default=S)
    p.add_argument("--seed", type=int, default=S)
    p.add_argument("--ckpt-every", dest="ckpt_every", type=int, default=S)
    p.add_argument("--keep-ckpts", dest="keep_ckpts", type=int, default=S)
    p.add_argument("--sample-every", dest="sample_every", type=int, default=S)
    p.add_argument("--num-samples", dest="num_samples", type=int, default=S)
    p.add_argument("--log-every", dest="log_every", type=int, default=S, help="steps averaged into one metrics row")
    p.add_argument("--progress", type=_bool, default=S, help="tqdm progress line on rank 0 (default true)")
    p.add_argument("--resume", default=S, help="none (default: refuse a RUN with checkpoints) | auto (newest valid; refuse if none is) | "
                   "fresh (start over; existing checkpoints are moved aside) | PATH of a checkpoint")
    p.add_argument("--init-from", dest="init_from", default=S, help="warm start: weights of this checkpoint (new classes grown)")
    p.add_argument("--deterministic", type=_bool, default=S)
    p.add_argument("--debug-probe", dest="debug_probe", type=_bool, default=S, help="write RUN/probe/rank-<r>.json")
    p.add_argument("--launcher", choices=_values(Launcher), default=Launcher.NONE.value)
    p.add_argument("--num-proc", dest="num_proc", type=int, default=2, help="--launcher spark: number of ranks")
    p.add_argument("--start-timeout", dest="start_timeout", type=int, default=120, help="--launcher spark: seconds")
    p.add_argument("--master", default=None,
                   help="--launcher spark: Spark master (default local[NUM_PROC]); a cluster needs NUM_PROC free task slots")
    p.add_argument("--nics", default=None, help="--launcher spark: comma-separated network interfaces horovod may use "
                   "(e.g. lo, eth0, ib0; default: every interface common to the ranks)")
    return p


def config_from_args(argv: list[str]) -> tuple[TrainConfig, argparse.Namespace]:
    """Flags over the YAML file over the defaults; each checked (schemas/config.py) under its own source, before
    torch is imported. A bad configuration raises SystemExit with one line per problem (main exits 2)."""
    ns = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(ns).items() if k not in ("config", "launcher", "num_proc", "start_timeout", "master", "nics")}
    if "lr" in flags:
        lr = flags.pop("lr")
        flags.setdefault("lr_g", lr)
        flags.setdefault("lr_d", lr)
        flags.setdefault("lr_vae", lr)
    try:
        values = check_fields(TrainConfig, read_yaml(ns.config), ns.config, what="training config") if ns.config else {}
        if "steps" in flags:
            values.pop("epochs", None)
        if "epochs" in flags:
            values.pop("steps", None)
        values.update(check_fields(TrainConfig, flags, "command line", what="training config"))
        if "data" not in values:
            raise SystemExit("imagegen train: --data OUT is required (or `data:` in --config)")
        return TrainConfig(**values), ns
    except (TypeError, ValueError, OSError) as e:
        raise SystemExit("\n".join(f"imagegen train: {line}" for line in str(e).splitlines())) from None


def _spark_rank(config: dict[str, Any]) -> dict[str, Any]:
    """Runs inside each Spark task started by horovod.spark.run: the same train() with backend horovod."""
    from training.loop import train

    return dataclasses.asdict(train(TrainConfig.from_dict({**config, "backend": Backend.HOROVOD.value})))


def run_on_spark(config: TrainConfig, num_proc: int, start_timeout: int, master: str | None = None,
                 nics: set[str] | None = None) -> list[dict[str, Any]]:
    import os

    import horovod.spark

    from pipelines.spark import get_spark

    spark = get_spark(master or f"local[{num_proc}]", app_name="imagegen-train", conf={"spark.task.cpus": "1"})
    try:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return horovod.spark.run(
            _spark_rank, args=(config.to_dict(),), num_proc=num_proc, use_gloo=True, start_timeout=start_timeout,
            env=env, executable=sys.executable, verbose=1, nics=nics,
        )
    finally:
        spark.stop()


def main(argv: list[str]) -> int:
    try:
        config, ns = config_from_args(argv)
    except SystemExit as e:
        if not isinstance(e.code, str):  # argparse (--help: 0, a bad flag: 2) has printed already
            raise
        print(e.code, file=sys.stderr, flush=True)  # a bad configuration: its lines, no traceback
        return 2
    if Launcher(ns.launcher) == Launcher.SPARK:
        print(f"[train] launching {ns.num_proc} horovod ranks on Spark; config:\n{config.to_json()}", flush=True)
        nics = {n.strip() for n in ns.nics.split(",") if n.strip()} if ns.nics else None
        results = run_on_spark(config, ns.num_proc, ns.start_timeout, ns.master, nics)
        for r in results:
            print(f"[train] rank {r['rank']}/{r['world_size']}: step {r['step']} metrics {r['metrics']}", flush=True)
        return 0
    from training.checkpoint import CheckpointError
    from training.interrupt import TrainInterrupted
    from training.loop import train  # rank 0 prints the config and writes RUN/config.json

    try:
        result = train(config)
    except TrainInterrupted as e:  # one line: where it stopped, what was saved, how to go on
        if e.checkpoint is not None:
            print(f"imagegen train: {e}: checkpoint {e.checkpoint}; run the same command with --resume auto "
                  "to continue from that step", file=sys.stderr, flush=True)
        return e.exit_code
    except (FileNotFoundError, FileExistsError, CheckpointError, ValueError) as e:  # bad input: say what, no traceback
        print(f"imagegen train: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:  # a full disk anywhere in the chain: one line naming the file and the space it needs
        from jobs.diskspace import free_bytes, human, out_of_space

        full = out_of_space(e)
        if full is None:
            raise
        path = getattr(full, "filename", None) or config.run_dir
        what = getattr(full, "strerror", None) or str(full)
        print(f"imagegen train: out of disk space writing {path}: {what}; {human(free_bytes(path))} free there. "
              "Free some space or choose another --run-dir, then rerun with --resume auto", file=sys.stderr, flush=True)
        return 1
    if result.rank == 0:
        print(f"[train] done: step {result.step}, checkpoint {result.checkpoint}, metrics {result.metrics}", flush=True)
        print(f"[train] made: a {config.model.value} model trained to step {result.step}; where: {config.run_dir}; next: "
              f"imagegen evaluate --checkpoint {config.run_dir} --data {config.data}  "
              f"(or imagegen generate --checkpoint {config.run_dir} --out samples.png)", flush=True)
    return 0


if __name__ == "__main__":  # torchrun --nproc_per_node 2 -m jobs.train ...
    sys.exit(main(sys.argv[1:]))
