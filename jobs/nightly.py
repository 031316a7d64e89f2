"""`imagegen nightly`: one night of the retraining loop, safe to run every night (cron, systemd, Airflow, k8s).

  imagegen nightly --input /data/incoming --root /data/nightly [--date 2026-12-01] [--steps 500] [--force]
                   [--config nightly.yaml]

Steps, each recorded in ROOT/runs/nightly/<DATE>/state.json as it finishes:
  1 preprocess   incremental `imagegen preprocess INPUT --output ROOT/dataset`: only files no earlier night saw
  2 train        when the night wrote >= min_new_images new images (or --force): a candidate trained for `steps`,
                 warm-started from the promoted model (--init-from; label embeddings grow for new classes)
  3 evaluate     the candidate and the promoted model, by `imagegen evaluate` on the new dataset with the same seed:
                 the same extractor, the same reference statistics, the same held-out real sample
  4 promote      the candidate is registered (ROOT/registry, jobs/registry.py); it becomes current only if better
                 than the promoted model by `margin` on `promote_metric`; on the first night, once it passes the
                 sanity checks (finite metrics, non-zero precision and recall)
then a record: ROOT/runs/nightly/<DATE>/record.json and summary.txt (and, with `mlflow_uri`, an MLflow run: jobs/tracking.py).

One task per step (Airflow, jobs/schedules/): `--until STEP` stops after STEP and a later call with the same --date
resumes; `--external-preprocess` makes step 1 adopt the dataset runs that a `spark-submit jobs/preprocess.py
--incremental` task added to ROOT/dataset (the runs no earlier night accounted for) instead of running preprocess.

Safe to rerun: a finished date does nothing; a failed date resumes at the failed step (the steps before it are not
repeated; training resumes from its own checkpoints). One night at a time: ROOT/_lock (pipelines/lock.py, a dead
holder's lock is taken over). A failure at any step leaves the promoted model untouched, exits 1 and names the step.
Ctrl-C or SIGTERM stops the night at its step (preprocess and train stop as they do on their own, train with a
checkpoint at its step; a launcher child gets the signal once, from the night), records the step as interrupted,
releases the lock and exits 128 + signal; the same command resumes at that step.

Configuration: NightlyConfig defaults < --config YAML < flags. The YAML holds NightlyConfig keys plus two optional
mappings, `preprocess:` (PreprocessConfig keys) and `train:` (TrainConfig keys), checked strictly before anything
runs (schemas/config.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import enum
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from schemas.config import ConfigError, check_fields, read_yaml
from jobs.cliutil import Parser

STEPS = ("preprocess", "train", "evaluate", "promote")


class Launcher(str, enum.Enum):
    NONE = "none"              # train in this process
    HOROVODRUN = "horovodrun"  # horovodrun -np N -H localhost:N --gloo
    TORCHRUN = "torchrun"      # torchrun --standalone --nproc_per_node N


class PromoteMetric(str, enum.Enum):
    FID = "fid"    # lower is better (GANs and the VAE's samples)
    KID = "kid"    # lower is better
    ELBO = "elbo"  # higher is better (VAE only)


@dataclasses.dataclass(frozen=True)
class NightlyConfig:
    input: str                                    # where new images land (class folders with the default labels: dirs)
    root: str                                     # holds dataset/, runs/nightly/<date>/, registry/
    date: str | None = None                       # YYYY-MM-DD; default today (UTC). One date = one night
    steps: int = 500                              # the candidate's training budget, in optimizer steps
    force: bool = False                           # train even when too few new images arrived
    min_new_images: int = 1                       # train only when the night's preprocess wrote at least this many
    model: str = "cdcgan"                         # dcgan | cdcgan | vae (must stay the same across nights)
    batch_size: int = 64
    eval_samples: int = 2000                      # per set in `evaluate` (capped as there: A, B and the judge's rows fit the pool)
    eval_seed: int = 0                            # the same seed every night: same pool split, same latents
    promote_metric: PromoteMetric = PromoteMetric.FID
    margin: float = 0.0                           # required relative improvement: FID_new <= FID_old * (1 - margin)
    min_recall: float = 0.01                      # sanity: a candidate below this recall (collapsed) is never promoted
    launcher: Launcher = Launcher.NONE
    num_proc: int = 2                             # ranks for horovodrun / torchrun
    master: str = "local[*]"                      # Spark master of the preprocess step
    until: str | None = None                      # stop after this step (the night stays open; the next call resumes)
    external_preprocess: bool = False             # step 1 adopts the dataset runs an outside `spark-submit jobs/preprocess.py
                                                  # --incremental` made (Airflow's SparkSubmitOperator) instead of running one
    mlflow_uri: str | None = None                 # also log the night's run, metrics and versions to MLflow (jobs/tracking.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "promote_metric", PromoteMetric(self.promote_metric))
        object.__setattr__(self, "launcher", Launcher(self.launcher))
        if self.date is not None:
            try:
                dt.date.fromisoformat(self.date)
            except ValueError:
                raise ValueError(f"date must be YYYY-MM-DD, got {self.date!r}") from None
        if self.steps < 1 or self.min_new_images < 0 or self.eval_samples < 4 or self.num_proc < 1:
            raise ValueError("need steps >= 1, min_new_images >= 0, eval_samples >= 4, num_proc >= 1")
        if not 0.0 <= self.min_recall <= 1.0:
            raise ValueError(f"min_recall must be in [0, 1], got {self.min_recall}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")
        if self.model not in ("dcgan", "cdcgan", "vae"):
            raise ValueError(f"model must be dcgan, cdcgan or vae, got {self.model!r}")
        if self.promote_metric == PromoteMetric.ELBO and self.model != "vae":
            raise ValueError("promote_metric elbo needs model vae")
        if self.until is not None and self.until not in STEPS:
            raise ValueError(f"until must be one of {', '.join(STEPS)}, got {self.until!r}")

    @property
    def night(self) -> str:
        return self.date or dt.datetime.now(dt.timezone.utc).date().isoformat()


class NightInterrupted(BaseException):
    """SIGINT or SIGTERM stopped the night during `step`. A BaseException, like KeyboardInterrupt: a step's own
    failure handling must not record it as a failure."""

    def __init__(self, signum: int, step: str):
        super().__init__(f"interrupted by {signal.Signals(signum).name} during {step}")
        self.signum, self.step = signum, step


class _Stop:
    """The night's SIGINT/SIGTERM handler (main thread only). A signal is remembered and passed to the launcher
    child, which runs in a session of its own so that it gets each signal once, from us, whether the terminal's
    process group or only our pid (a scheduler's SIGTERM) was signalled. Steps that run a job in this process
    (preprocess, train) hand the signal to that job's own handler; evaluate, which writes nothing the night keeps,
    stops at once; promote (two short ordered writes) finishes. The night stops at the next step boundary; a second
    signal stops at once."""

    IMMEDIATE = frozenset({"evaluate"})

    def __init__(self) -> None:
        self.signum: int | None = None
        self.step = "start-up"
        self.child: subprocess.Popen | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old.setdefault(sig, signal.getsignal(sig))
                signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def enter(self, step: str) -> None:
        """A step boundary: stop here if a signal came, else remember the step."""
        self.check()
        self.step = step

    def check(self) -> None:
        if self.signum is not None:
            raise NightInterrupted(self.signum, self.step)

    def exited(self, rc: int, what: str) -> None:
        """A job's exit code: 0 passes; 128 + SIGINT/SIGTERM (or death by one), or any failure after the night
        passed a signal on (torchrun's agent exits 1 once it stopped its ranks), is this step interrupted; any other
        is the step's failure."""
        if rc == 0:
            return
        if self.signum is not None:
            raise NightInterrupted(self.signum, self.step)
        for sig in (signal.SIGINT, signal.SIGTERM):
            if rc in (128 + sig, -sig):
                raise NightInterrupted(self.signum or sig, self.step)
        raise RuntimeError(f"{what} exited {rc} (its message is above)")

    def _on_signal(self, signum: int, frame: Any) -> None:
        first, self.signum = self.signum is None, self.signum or signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)
        elif not first or self.step in self.IMMEDIATE:
            raise NightInterrupted(self.signum, self.step)


# Run before the launcher's exec, in the child: SIGTERM when the night's process dies (PR_SET_PDEATHSIG, kept across
# exec), so that a SIGKILL to the night or to its process group still stops a child that runs in a session of its
# own. A separate exec step rather than preexec_fn, which is unsafe in a process with threads (Spark's, torch's).
_DIE_WITH_PARENT = [sys.executable, "-c", "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 15); "
                    "os.getppid() == int(sys.argv[1]) or sys.exit(143); os.execvp(sys.argv[2], sys.argv[2:])"]


class NightlyStepError(RuntimeError):
    def __init__(self, step: str, cause: str):
        super().__init__(f"step {step!r} failed: {cause}")
        self.step = step


@dataclasses.dataclass(frozen=True)
class _Night:
    cfg: NightlyConfig
    preprocess: dict[str, Any]   # PreprocessConfig keys from the YAML
    train: dict[str, Any]        # TrainConfig keys from the YAML
    log: Callable[[str], None]
    stop: _Stop = dataclasses.field(default_factory=_Stop)

    @property
    def root(self) -> Path:
        return Path(self.cfg.root)

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def dir(self) -> Path:
        return self.root / "runs" / "nightly" / self.cfg.night


# ----------------------------------------------------------------------------- the steps
def _fault(point: str) -> None:
    """The tests' injected faults. IMAGEGEN_NIGHTLY_FAULT=<point>: raise there (a failure the night records);
    =kill:<point>: SIGKILL this process there (a crash: nothing is recorded, nothing unwinds). Points: each step's
    start, and promote:registered (the candidate is in the registry, the pointer not yet switched)."""
    fault = os.environ.get("IMAGEGEN_NIGHTLY_FAULT")
    if fault == point:
        raise RuntimeError(f"IMAGEGEN_NIGHTLY_FAULT: injected failure at {point}")
    if fault == f"kill:{point}":
        import signal

        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def step_preprocess(n: _Night, state: dict[str, Any]) -> dict[str, Any]:
    from jobs import preprocess as preprocess_cli
    from schemas import Manifest

    if n.cfg.external_preprocess:
        return _adopt_preprocess(n)
    before = Manifest.read(str(n.dataset)).run_id if (n.dataset / "manifest.json").exists() else None
    values = {"resolution": 32, "labels": "dirs", **n.preprocess, "incremental": True, "overwrite": False}
    yaml_path = n.dir / "preprocess.yaml"
    _write_yaml(yaml_path, values)
    try:
        rc = preprocess_cli.main([n.cfg.input, "--output", str(n.dataset), "--config", str(yaml_path), "--master", n.cfg.master])
    finally:
        n.stop.install()  # preprocess handled signals itself while it ran, and put the defaults back
    n.stop.exited(rc, "imagegen preprocess")
    m = Manifest.read(str(n.dataset))
    new = int(m.runs[-1]["counts"]["written"]) if m.run_id != before else 0
    return {"new_images": new, "manifest_id": m.manifest_id, "dataset_rows": m.rows("images"), "classes": len(m.classes),
            "run_id": m.run_id if m.run_id != before else None}


def _adopt_preprocess(n: _Night) -> dict[str, Any]:
    """The dataset runs no night has accounted for yet (made by an outside spark-submit) become tonight's new images."""
    from schemas import Manifest

    if not (n.dataset / "manifest.json").exists():
        raise RuntimeError(f"external_preprocess: no dataset at {n.dataset}; the spark-submit preprocess must run first")
    seen: set[str] = set()
    for other in (n.root / "runs" / "nightly").glob("*/state.json"):
        if other.parent.name != n.cfg.night:
            pre = json.loads(other.read_text())["steps"].get("preprocess", {})
            seen.update(pre.get("run_ids") or [pre.get("run_id")])
    m = Manifest.read(str(n.dataset))
    runs = [r for r in m.runs if r["run_id"] not in seen]
    return {"new_images": sum(int(r["counts"]["written"]) for r in runs), "manifest_id": m.manifest_id,
            "dataset_rows": m.rows("images"), "classes": len(m.classes), "run_id": runs[-1]["run_id"] if runs else None,
            "run_ids": [r["run_id"] for r in runs], "external": True}


def step_train(n: _Night, state: dict[str, Any]) -> dict[str, Any]:
    from jobs.registry import Registry
    from training import checkpoint

    new = state["steps"]["preprocess"]["new_images"]
    if new < n.cfg.min_new_images and not n.cfg.force:
        return {"status": "skipped", "reason": f"{new} new image(s) < min_new_images {n.cfg.min_new_images} (use --force)"}
    reg = Registry.at(n.root)
    current = reg.current()
    run_dir = n.dir / "train"
    values = {"progress": False, "sample_every": 0, "ckpt_every": max(1, n.cfg.steps // 5), **n.train,
              "data": str(n.dataset), "run_dir": str(run_dir), "model": n.cfg.model, "steps": n.cfg.steps,
              "batch_size": n.cfg.batch_size, "resume": "auto",
              "init_from": str(reg.checkpoint(current)) if current else None}
    yaml_path = n.dir / "train.yaml"
    _write_yaml(yaml_path, values)
    if n.cfg.launcher == Launcher.NONE:
        from jobs import train as train_cli

        rc = train_cli.main(["--config", str(yaml_path)])
    else:
        np_ = str(n.cfg.num_proc)
        prefix = (["horovodrun", "-np", np_, "-H", f"localhost:{np_}", "--gloo", sys.executable, "-m", "jobs.cli", "train"]
                  if n.cfg.launcher == Launcher.HOROVODRUN else
                  [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", np_, "-m", "jobs.train"])
        if n.cfg.launcher == Launcher.HOROVODRUN:
            prefix[0] = str(Path(sys.executable).with_name("horovodrun"))
        n.stop.child = subprocess.Popen([*_DIE_WITH_PARENT, str(os.getpid()), *prefix, "--config", str(yaml_path)],
                                        cwd=Path(__file__).resolve().parents[1], start_new_session=True)
        try:
            rc = n.stop.child.wait()
        finally:
            n.stop.child = None
    n.stop.exited(rc, "imagegen train")
    found = checkpoint.find_latest_valid(run_dir)
    if found is None:
        raise RuntimeError(f"training ended without a checkpoint in {run_dir}")
    return {"status": "done", "checkpoint": str(found[0]), "step": int(found[1]["step"]), "warm_start": values["init_from"]}


def step_evaluate(n: _Night, state: dict[str, Any]) -> dict[str, Any]:
    if state["steps"]["train"].get("status") == "skipped":
        return {"status": "skipped", "reason": "no candidate tonight"}
    from jobs.registry import Registry
    from training.evaluate import EvalConfig, evaluate

    def run(ckpt: str, name: str) -> dict[str, Any]:
        return evaluate(EvalConfig(checkpoint=ckpt, data=str(n.dataset), num_samples=n.cfg.eval_samples,
                                   seed=n.cfg.eval_seed, out=str(n.dir / f"{name}.metrics.json"), progress=False))

    out: dict[str, Any] = {"status": "done", "candidate": run(state["steps"]["train"]["checkpoint"], "candidate")}
    current = Registry.at(n.root).current()
    if current is not None:
        try:
            out["promoted"] = run(str(Registry.at(n.root).checkpoint(current)), "promoted") | {"version": current}
        except ValueError as e:  # e.g. it cannot generate a class that arrived tonight
            out["promoted_error"] = f"{current} cannot be evaluated on tonight's dataset: {e}"
    return out


def _score(metrics: dict[str, Any], metric: PromoteMetric) -> float:
    if metric == PromoteMetric.ELBO:
        return float(metrics["vae"]["elbo_nats"])
    return float(metrics["metrics"][metric.value]["value"])


def sanity_problems(metrics: dict[str, Any], min_recall: float) -> list[str]:
    """Why a candidate must not be promoted whatever it is compared with (empty: it passes)."""
    problems = []
    for name, m in metrics["metrics"].items():
        if not math.isfinite(float(m["value"])):
            problems.append(f"{name} is {m['value']}")
    recall = metrics["metrics"].get("recall", {}).get("value")
    if recall is not None and float(recall) < min_recall:
        problems.append(f"recall {float(recall):.3g} < min_recall {min_recall:g} (collapsed, or nowhere near the data)")
    if "vae" in metrics and not math.isfinite(float(metrics["vae"]["elbo_nats"])):
        problems.append(f"ELBO is {metrics['vae']['elbo_nats']}")
    return problems


def step_promote(n: _Night, state: dict[str, Any]) -> dict[str, Any]:
    ev = state["steps"]["evaluate"]
    if ev.get("status") == "skipped":
        return {"status": "skipped", "reason": ev["reason"]}
    from jobs.registry import Registry

    reg = Registry.at(n.root)
    cand = ev["candidate"]
    ckpt = state["steps"]["train"]["checkpoint"]
    # A rerun after a crash between registering and switching finds tonight's candidate already registered.
    done_before = [v for v in reg.versions() if v.get("night") == n.cfg.night and v.get("source_checkpoint") == ckpt]
    record = done_before[-1] if done_before else reg.register(
        ckpt, metrics=cand, manifest_id=cand["data_manifest_id"],
        config=json.loads((n.dir / "train" / "config.json").read_text()), night=n.cfg.night)
    _fault("promote:registered")
    version, metric = record["version"], n.cfg.promote_metric
    problems = sanity_problems(cand, n.cfg.min_recall)
    new_score = _score(cand, metric)
    if problems:
        decision, reason = False, "fails the sanity checks: " + "; ".join(problems)
    elif "promoted" not in ev:
        decision = True
        reason = ev.get("promoted_error") or "first night: nothing promoted yet"
        reason += f"; candidate {metric.value} {new_score:.4g}, sanity checks pass"
    else:
        old_score = _score(ev["promoted"], metric)
        if metric == PromoteMetric.ELBO:
            better = new_score >= old_score + n.cfg.margin * abs(old_score)
        else:
            better = new_score <= old_score * (1.0 - n.cfg.margin)
        decision = better
        reason = (f"candidate {metric.value} {new_score:.4g} vs promoted {ev['promoted']['version']} {old_score:.4g} "
                  f"(margin {n.cfg.margin:g}): {'better' if better else 'not better'}")
    if decision:
        reg.promote(version, reason)
    else:
        reg.reject(version)
    return {"status": "done", "version": version, "promoted": decision, "reason": reason, "current": reg.current()}


STEP_FUNCS = {"preprocess": step_preprocess, "train": step_train, "evaluate": step_evaluate, "promote": step_promote}


# ----------------------------------------------------------------------------- the night
def _write_yaml(path: Path, values: dict[str, Any]) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({k: (v.value if isinstance(v, enum.Enum) else v) for k, v in values.items()}, sort_keys=True))


def _summary(state: dict[str, Any]) -> str:
    lines = [f"imagegen nightly {state['date']}: {state['status']}"]
    for step in STEPS:
        s = state["steps"].get(step)
        if s is None:
            lines.append(f"  {step:<10} not run")
            continue
        detail = s.get("reason") or s.get("error") or ""
        if step == "preprocess" and s.get("status") == "done":
            detail = f"{s['new_images']} new image(s), dataset {s['dataset_rows']} rows, {s['classes']} classes"
        if step == "train" and s.get("status") == "done":
            detail = f"{s['step']} steps -> {s['checkpoint']}" + (f" (warm start {s['warm_start']})" if s.get("warm_start") else "")
        if step == "evaluate" and s.get("status") == "done":
            from jobs.models import headline

            detail = f"candidate: {headline(s['candidate'])}" + (
                f"; promoted {s['promoted']['version']}: {headline(s['promoted'])}" if "promoted" in s else "")
        if step == "promote" and s.get("status") == "done":
            detail = f"{s['version']} {'PROMOTED' if s['promoted'] else 'not promoted'}: {s['reason']}"
        lines.append(f"  {step:<10} {s.get('status'):<8} {detail}")
    lines.append(f"  current model: {state.get('current') or 'none'}")
    return "\n".join(lines)


def run_nightly(cfg: NightlyConfig, preprocess: dict[str, Any] | None = None, train: dict[str, Any] | None = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume, or skip) one night; returns its state. Raises NightlyStepError naming the failed step, or
    NightInterrupted naming the step a SIGINT/SIGTERM stopped."""
    from pipelines.fs import FileSystem
    from pipelines.lock import dataset_lock

    n = _Night(cfg, dict(preprocess or {}), dict(train or {}), log)
    n.root.mkdir(parents=True, exist_ok=True)
    n.stop.install()
    try:
        with dataset_lock(FileSystem(None), str(n.root / "_lock"), log):  # local root: no Spark needed for the lock
            return _run_locked(n, cfg)
    finally:
        n.stop.restore()


def _run_locked(n: _Night, cfg: NightlyConfig) -> dict[str, Any]:
    """The night's steps, under its lock: each recorded in state.json as it ends."""
    from jobs.registry import Registry, write_json_atomic

    log = n.log
    n.dir.mkdir(parents=True, exist_ok=True)
    state_path = n.dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"date": cfg.night, "steps": {}}
    if state.get("status") == "done":
        log(f"imagegen nightly: {cfg.night} is already done ({n.dir / 'summary.txt'}); nothing to do")
        return state
    resumed = [s for s in STEPS if state["steps"].get(s, {}).get("status") in ("done", "skipped")]
    if resumed:
        log(f"imagegen nightly: resuming {cfg.night} after {', '.join(resumed)}")
    state |= {"status": "running", "input": cfg.input, "config": {k: (v.value if isinstance(v, enum.Enum) else v)
                                                                  for k, v in dataclasses.asdict(cfg).items()}}
    try:
        for step in STEPS:
            if state["steps"].get(step, {}).get("status") in ("done", "skipped"):
                if step == cfg.until:
                    break
                continue
            n.stop.enter(step)
            log(f"imagegen nightly: {cfg.night} step {step}")
            t0 = time.monotonic()
            try:
                _fault(step)
                result = STEP_FUNCS[step](n, state)
            except NightInterrupted as e:  # recorded; the rerun starts this step again
                state["steps"][step] = {"status": "interrupted", "signal": signal.Signals(e.signum).name}
                state["status"] = "interrupted"
                raise
            except Exception as e:  # recorded, then raised as the night's one-line failure
                state["steps"][step] = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0]}
                state["status"] = "failed"
                raise NightlyStepError(step, state["steps"][step]["error"]) from e
            state["steps"][step] = {"status": "done", **result, "seconds": round(time.monotonic() - t0, 1)}
            write_json_atomic(state_path, state)
            if step == cfg.until:
                break
        state["status"] = "done" if all(step in state["steps"] for step in STEPS) else f"stopped after {cfg.until}"
        if cfg.mlflow_uri and state["status"] == "done":
            from jobs import tracking

            state["mlflow"] = tracking.log_night(cfg.mlflow_uri, state, n.dir, log)
    finally:
        state["current"] = Registry.at(n.root).current()
        state["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(state_path, state)
        write_json_atomic(n.dir / "record.json", state)
        (n.dir / "summary.txt").write_text(_summary(state) + "\n")
    log(_summary(state))
    return state


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="imagegen nightly", description=__doc__)
    S = argparse.SUPPRESS
    p.add_argument("--input", default=S, help="where new images land")
    p.add_argument("--root", default=S, help="holds dataset/, runs/nightly/<date>/, registry/")
    p.add_argument("--date", default=S, help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--steps", type=int, default=S, help="training steps of the candidate (default 500)")
    p.add_argument("--force", action="store_const", const=True, default=S, help="train even without enough new images")
    p.add_argument("--until", choices=STEPS, default=S, help="stop after this step; a later call resumes (one task per step)")
    p.add_argument("--external-preprocess", action="store_const", const=True, default=S,
                   help="step 1 adopts the runs an outside `spark-submit jobs/preprocess.py --incremental` added to ROOT/dataset")
    p.add_argument("--mlflow-uri", default=S, help="also log runs, metrics and versions to this MLflow tracking URI")
    p.add_argument("--config", default=None, metavar="nightly.yaml",
                   help="NightlyConfig keys, plus optional `preprocess:` and `train:` mappings; flags override it")
    return p


def config_from_args(argv: list[str]) -> tuple[NightlyConfig, dict[str, Any], dict[str, Any]]:
    """Raises ConfigError / ValueError with one line per problem, before anything runs."""
    from pipelines.config import PreprocessConfig
    from training.config import TrainConfig

    ns = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(ns).items() if k != "config"}
    file_values: dict[str, Any] = read_yaml(ns.config) if ns.config else {}
    preprocess = file_values.pop("preprocess", None) or {}
    train = file_values.pop("train", None) or {}
    source = ns.config or "command line"
    for name, section, cls in (("preprocess", preprocess, PreprocessConfig), ("train", train, TrainConfig)):
        if not isinstance(section, dict):
            raise ConfigError([f"{source}: key {name!r} expects a mapping of {cls.__name__} keys, found {section!r}"])
    owned = {"data", "run_dir", "model", "steps", "batch_size", "resume", "init_from"}
    clash = sorted(owned & set(train))
    if clash:
        raise ConfigError([f"{source}: train: keys {clash} are set by the nightly loop; use the top-level keys (model, steps, batch_size)"])
    check_fields(PreprocessConfig, preprocess, f"{source} (preprocess:)", what="preprocess config")
    check_fields(TrainConfig, {"data": "x", **train}, f"{source} (train:)", what="training config")
    values = check_fields(NightlyConfig, file_values, source, what="nightly config") if file_values else {}
    values.update(check_fields(NightlyConfig, flags, "command line", what="nightly config"))
    missing = [k for k in ("input", "root") if k not in values]
    if missing:
        raise ConfigError([f"--{k} is required (or `{k}:` in --config)" for k in missing])
    return NightlyConfig(**values), preprocess, train


def main(argv: list[str]) -> int:
    try:
        cfg, preprocess, train = config_from_args(argv)
    except (ConfigError, ValueError, OSError) as e:
        for line in str(e).splitlines():
            print(f"imagegen nightly: {line}", file=sys.stderr)
        return 2
    from pipelines.lock import LockedError

    try:
        state = run_nightly(cfg, preprocess, train)
    except LockedError as e:
        print(f"imagegen nightly: {e}", file=sys.stderr)
        return 3
    except (NightlyStepError, NightInterrupted) as e:
        from jobs.registry import Registry

        current = Registry.at(cfg.root).current()
        print(f"imagegen nightly: {cfg.night}: {e}; the promoted model is {current or 'none'}; "
              f"rerun the same command to resume at {e.step!r}", file=sys.stderr, flush=True)
        return 128 + e.signum if isinstance(e, NightInterrupted) else 1
    _say_made_where_next(cfg, state)
    return 0


def _say_made_where_next(cfg: NightlyConfig, state: dict[str, Any]) -> None:
    """The last lines of every job (preprocess and train end the same way): what was made, where it is, what next."""
    import shlex

    night = _Night(cfg, {}, {}, print)
    promote, train = state["steps"].get("promote") or {}, state["steps"].get("train") or {}
    made = f"night {cfg.night} {state.get('status')}"
    if promote.get("version"):
        made += f": {promote['version']} {'promoted' if promote.get('promoted') else 'registered, not promoted'}"
    elif (promote or train).get("reason"):
        made += f": {(promote or train)['reason']}"
    root = shlex.quote(cfg.root)
    print(f"made: {made}; current model {state.get('current') or 'none'}", flush=True)
    print(f"where: {night.dir} (summary.txt, record.json); dataset {night.dataset}; registry {night.root / 'registry'}", flush=True)
    print(f"next: imagegen models list --root {root}" +
          (f"   (or: imagegen report {shlex.quote(str(Path(train['checkpoint']).parents[1]))})" if train.get("checkpoint") else ""),
          flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
