"""MLflow mirror of the nightly loop: optional, off by default; the file registry (jobs/registry.py) stays the truth.

With `mlflow_uri` in the nightly config (or `--mlflow-uri`), a finished night becomes one MLflow run:

    experiment "imagegen-nightly", run "nightly-<DATE>"
      params   nightly.<key>   the NightlyConfig of the night
               train.<key>     the candidate's TrainConfig (RUN/config.json)
      metrics  train/<name>    every row of the candidate's metrics.jsonl, at its step (interval means, as logged)
               candidate.<metric>, candidate.<metric>.real_floor, promoted.<metric> ...   the evaluation of both models
               preprocess.new_images, preprocess.dataset_rows, preprocess.classes
      tags     imagegen.night, imagegen.version (file registry), imagegen.promoted, imagegen.reason, imagegen.manifest_id
    registered model "imagegen": one model version per registered candidate (source: its file-registry checkpoint,
      tagged with its file-registry version); a promoted one gets the alias "champion".

Any URI MLflow takes works (a tracking server, `sqlite:///PATH/mlflow.db`, which needs sqlalchemy and alembic, both
pinned). A failure to log is reported and recorded in the night's state (`mlflow.error`) but never fails the night:
the promotion already happened in the file registry. A rollback with `imagegen models rollback` does not move the
alias; `sync_champion` does.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXPERIMENT = "imagegen-nightly"
MODEL_NAME = "imagegen"
CHAMPION = "champion"
_BATCH = 100  # MLflow's log_batch takes at most 100 params and 1000 metrics per call


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _flat(prefix: str, obj: dict[str, Any]) -> dict[str, str]:
    """{"a": {"b": 1}} -> {"prefix.a.b": "1"}; MLflow params are strings of at most 6000 characters."""
    out: dict[str, str] = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out |= _flat(f"{prefix}.{k}", v)
        else:
            out[f"{prefix}.{k}"] = (v if isinstance(v, str) else json.dumps(v, default=str))[:6000]
    return out


def _eval_metrics(prefix: str, result: dict[str, Any]) -> dict[str, float]:
    """The numbers of one `evaluate` result: each metric and its real-data floor, the VAE's ELBO, class accuracy."""
    out: dict[str, float] = {}
    for name, m in result.get("metrics", {}).items():
        for field, suffix in (("value", ""), ("real_floor", ".real_floor")):
            if isinstance(m.get(field), (int, float)):
                out[f"{prefix}.{name}{suffix}"] = float(m[field])
    if isinstance(result.get("vae", {}).get("elbo_nats"), (int, float)):
        out[f"{prefix}.elbo_nats"] = float(result["vae"]["elbo_nats"])
    if isinstance(result.get("conditional", {}).get("accuracy"), (int, float)):
        out[f"{prefix}.class_accuracy"] = float(result["conditional"]["accuracy"])
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _train_rows(night_dir: Path) -> list[tuple[int, str, float]]:
    path = night_dir / "train" / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        rows += [(int(row["step"]), f"train/{k}", float(v)) for k, v in row.items()
                 if k not in ("step", "epoch") and isinstance(v, (int, float)) and math.isfinite(float(v))]
    return rows


def log_night(uri: str, state: dict[str, Any], night_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Log one finished night (run_nightly's state) to MLflow; returns what was logged, or {"error": ...}."""
    try:
        return _log_night(uri, state, Path(night_dir))
    except Exception as e:  # noqa: BLE001  the file registry already holds the outcome; MLflow is a mirror
        error = f"{type(e).__name__}: {e}".splitlines()[0]
        log(f"imagegen nightly: MLflow logging to {uri} failed ({error}); the night and the file registry are unaffected")
        return {"uri": uri, "error": error}


def _log_night(uri: str, state: dict[str, Any], night_dir: Path) -> dict[str, Any]:
    from mlflow.entities import Metric, Param

    client = _client(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(EXPERIMENT)
    steps = state["steps"]
    pre, train, ev, pro = (steps.get(s, {}) for s in ("preprocess", "train", "evaluate", "promote"))
    tags = {"imagegen.night": state["date"], "imagegen.train": train.get("status", "")}
    if pro.get("status") == "done":
        tags |= {"imagegen.version": pro["version"], "imagegen.promoted": str(pro["promoted"]).lower(),
                 "imagegen.reason": pro["reason"][:5000]}
    if ev.get("status") == "done":
        tags["imagegen.manifest_id"] = ev["candidate"].get("data_manifest_id", "")
    run = client.create_run(exp_id, run_name=f"nightly-{state['date']}", tags=tags)
    run_id = run.info.run_id

    params = _flat("nightly", state.get("config", {}))
    config_json = night_dir / "train" / "config.json"
    if config_json.is_file():
        params |= _flat("train", json.loads(config_json.read_text()))
    items = sorted(params.items())
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + _BATCH]])

    t = 0  # MLflow metrics carry a timestamp; the night's own order is enough
    metrics = [Metric(key, value, t, step) for step, key, value in _train_rows(night_dir)]
    last = {f"preprocess.{k}": float(pre[k]) for k in ("new_images", "dataset_rows", "classes") if k in pre}
    if ev.get("status") == "done":
        last |= _eval_metrics("candidate", ev["candidate"])
        if "promoted" in ev:
            last |= _eval_metrics("promoted", ev["promoted"])
    final_step = int(train.get("step", 0))
    metrics += [Metric(k, v, t, final_step) for k, v in sorted(last.items())]
    for i in range(0, len(metrics), 10 * _BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + 10 * _BATCH])

    out: dict[str, Any] = {"uri": uri, "experiment_id": exp_id, "run_id": run_id, "model_version": None, "alias": None}
    if pro.get("status") == "done":
        from jobs.registry import Registry

        root = night_dir.parents[2]  # ROOT/runs/nightly/<DATE>
        source = str(Registry.at(root).checkpoint(pro["version"]).resolve())
        if not _exists(client):
            client.create_registered_model(MODEL_NAME, description="imagegen nightly candidates (file registry: ROOT/registry)")
        mv = client.create_model_version(MODEL_NAME, source=source, run_id=run_id,
                                         tags={"imagegen.version": pro["version"], "imagegen.promoted": str(pro["promoted"]).lower()},
                                         description=pro["reason"][:5000])
        out["model_version"] = mv.version
        if pro["promoted"]:
            client.set_registered_model_alias(MODEL_NAME, CHAMPION, mv.version)
            out["alias"] = CHAMPION
    client.set_terminated(run_id, "FINISHED")
    return out


def _exists(client) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(MODEL_NAME)
        return True
    except MlflowException:
        return False


def sync_champion(uri: str, nightly_root: str | Path) -> str | None:
    """Point the "champion" alias at the MLflow version of the file registry's current version (after a rollback or a
    promotion by hand); returns that MLflow version, or None when the current version was never logged."""
    from jobs.registry import Registry

    current = Registry.at(nightly_root).current()
    client = _client(uri)
    if current is None:
        return None
    found = client.search_model_versions(f"name = '{MODEL_NAME}' and tags.`imagegen.version` = '{current}'")
    if not found:
        return None
    version = str(max(found, key=lambda mv: int(mv.version)).version)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    return version
