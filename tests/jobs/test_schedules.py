"""jobs/schedules/ (8/9): the Airflow DAG loaded by a real DagBag in Airflow's own venv (scripts/setup-airflow.sh), its
tasks' commands run for real against a ROOT (spark preprocess, then `imagegen nightly --until STEP` per task) with the
night mirrored to a real MLflow sqlite store; the systemd units verified by systemd-analyze, the crontab line and the
Kubernetes CronJob parsed and checked."""
from __future__ import annotations

import configparser
import itertools
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.jobs.test_nightly import PREPROCESS, TRAIN, _add_digits

REPO = Path(__file__).resolve().parents[2]
SCHEDULES = REPO / "jobs" / "schedules"
TASKS = ["preprocess", "record_dataset", "train", "evaluate", "promote"]

_DUMP = r"""
import json, sys
from airflow.models import DagBag
bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dag_ids)}
dag = bag.dags.get("imagegen_nightly")
if dag is not None:
    out |= {"schedule": str(dag.schedule_interval), "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
            "tasks": {}}
    for t in dag.tasks:
        info = {"type": type(t).__name__, "retries": t.retries, "downstream": sorted(t.downstream_task_ids),
                "upstream": sorted(t.upstream_task_ids)}
        if hasattr(t, "bash_command"):
            info["bash_command"] = t.render_template(t.bash_command, {"ds": sys.argv[2]})
        if type(t).__name__ == "SparkSubmitOperator":
            info["application"] = t.application
            info["application_args"] = list(t.application_args)
            info["conn_id"] = t._conn_id
        out["tasks"][t.task_id] = info
print("DAGJSON" + json.dumps(out))
"""


@pytest.fixture(scope="session")
def airflow_python() -> Path:
    """Airflow's own venv, made by scripts/setup-airflow.sh when missing (minutes the first time, then cached)."""
    r = subprocess.run(["bash", str(REPO / "scripts" / "setup-airflow.sh")], capture_output=True, text=True, check=False, timeout=2400)
    if r.returncode != 0:
        pytest.fail(f"scripts/setup-airflow.sh could not set up Airflow (exit {r.returncode}); the DAG cannot be "
                    f"checked without it:\n{r.stderr[-3000:]}")
    return Path(r.stdout.strip().splitlines()[-1]) / "bin" / "python"


def _dag(airflow_python: Path, tmp: Path, env: dict[str, str], ds: str = "2026-01-05") -> dict:
    home = tmp / "airflow-home"
    home.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEGEN_", "AIRFLOW", "PYTHONPATH"))}
    r = subprocess.run([str(airflow_python), "-c", _DUMP, str(SCHEDULES), ds], capture_output=True, text=True, check=False,
                       timeout=600, env=base | {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", **env})
    assert r.returncode == 0, r.stderr[-3000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("DAGJSON")]
    assert line, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(line[0][len("DAGJSON"):])


@pytest.fixture(scope="module")
def dag(airflow_python, tmp_path_factory) -> dict:
    return _dag(airflow_python, tmp_path_factory.mktemp("dag"), {})


def test_airflow_venv_is_separate_from_imagegen(airflow_python):
    r = subprocess.run([str(airflow_python), "-c", "import airflow, torch"], capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr  # the DAG needs Airflow only
    assert not str(airflow_python).startswith(str(REPO))  # outside the checkout


def test_dag_loads_without_import_errors_with_its_tasks_graph_retries_and_schedule(dag):
    assert dag["import_errors"] == {}
    assert dag["dag_ids"] == ["imagegen_nightly"]
    assert dag["schedule"] == "30 2 * * *" and dag["catchup"] is False and dag["max_active_runs"] == 1
    tasks = dag["tasks"]
    assert sorted(tasks) == sorted(TASKS)
    for up, down in itertools.pairwise(TASKS):
        assert tasks[up]["downstream"] == [down] and tasks[down]["upstream"] == [up]
    assert tasks["preprocess"]["upstream"] == [] and tasks["promote"]["downstream"] == []
    assert all(t["retries"] == 2 for t in tasks.values())
    assert tasks["preprocess"]["type"] == "SparkSubmitOperator"
    assert tasks["preprocess"]["application"] == "/opt/imagegen/jobs/preprocess.py"
    assert tasks["preprocess"]["application_args"][:4] == ["/data/incoming", "--output", "/data/nightly/dataset", "--incremental"]
    for task, until in (("record_dataset", "preprocess"), ("train", "train"), ("evaluate", "evaluate"), ("promote", None)):
        argv = shlex.split(tasks[task]["bash_command"])
        assert tasks[task]["type"] == "BashOperator"
        assert argv[:2] == ["/opt/imagegen/.venv/bin/imagegen", "nightly"]
        assert argv[argv.index("--date") + 1] == "2026-01-05" and "--external-preprocess" in argv
        assert (argv[argv.index("--until") + 1] if "--until" in argv else None) == until


def test_a_dag_with_an_error_is_reported_by_the_dagbag(airflow_python, tmp_path):
    """The check above can fail: a DAG file that does not import shows up in import_errors."""
    bad = tmp_path / "dags"
    bad.mkdir()
    shutil.copy(SCHEDULES / "imagegen_nightly_dag.py", bad / "imagegen_nightly_dag.py")
    (bad / "imagegen_nightly_dag.py").write_text((bad / "imagegen_nightly_dag.py").read_text().replace("schedule=SCHEDULE", "schedule=SCHEDULE, nonsense=1"))
    r = subprocess.run([str(airflow_python), "-c", _DUMP, str(bad), "2026-01-05"], capture_output=True, text=True, check=False, timeout=600,
                       env={**os.environ, "AIRFLOW_HOME": str(tmp_path / "home")})
    out = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("DAGJSON"))[len("DAGJSON"):])
    assert "imagegen_nightly" not in out["dag_ids"] and "nonsense" in " ".join(out["import_errors"].values())


def _run_dag(tasks: dict, spark) -> list[dict]:
    """Each task's command, in the DAG's order: the Spark task's application main with its args (what spark-submit
    runs), then each `imagegen nightly ...` task through the CLI's main; returns the night's state after each, with
    the registry's current version then as `registry_current`."""
    from jobs import nightly, preprocess
    from jobs.registry import Registry

    args = tasks["preprocess"]["application_args"]
    assert preprocess.main(list(args)) == 0
    states = []
    root = Path(args[args.index("--output") + 1]).parent
    for task in TASKS[1:]:
        argv = shlex.split(tasks[task]["bash_command"])
        state_json = root / "runs" / "nightly" / argv[argv.index("--date") + 1] / "state.json"
        assert nightly.main(argv[2:]) == 0, task
        state = json.loads(state_json.read_text())
        assert nightly.main(argv[2:]) == 0, task  # the same task again (a retry, a cleared task): nothing is redone
        assert json.loads(state_json.read_text())["steps"] == state["steps"]
        states.append(state | {"registry_current": Registry.at(root).current()})
    return states


def test_the_dag_tasks_run_one_night_step_by_step_and_mirror_it_to_mlflow(airflow_python, spark, tmp_path):
    from mlflow import MlflowClient

    from jobs.registry import Registry
    from jobs.tracking import CHAMPION, EXPERIMENT, MODEL_NAME, sync_champion

    inbox, root, uri = tmp_path / "inbox", tmp_path / "root", f"sqlite:///{tmp_path}/mlflow.db"
    _add_digits(inbox, 0, 20, 0)
    _add_digits(inbox, 1, 20, 0)
    config = tmp_path / "nightly.yaml"
    config.write_text(yaml.safe_dump({"steps": 8, "batch_size": 16, "eval_samples": 40, "min_recall": 0.0, "mlflow_uri": uri,
                                      "preprocess": PREPROCESS, "train": TRAIN}))
    env = {"IMAGEGEN_HOME": str(REPO), "IMAGEGEN_INPUT": str(inbox), "IMAGEGEN_ROOT": str(root), "IMAGEGEN_CONFIG": str(config),
           "IMAGEGEN_PREPROCESS_ARGS": "--resolution 32 --labels dirs --partitions 2"}
    night1 = _run_dag(_dag(airflow_python, tmp_path, env, ds="2026-02-01")["tasks"], spark)
    after_record, after_train, after_eval, done = night1
    assert after_record["status"] == "stopped after preprocess" and list(after_record["steps"]) == ["preprocess"]
    assert after_record["steps"]["preprocess"]["external"] is True and after_record["steps"]["preprocess"]["new_images"] == 40
    assert after_train["status"] == "stopped after train" and after_train["steps"]["train"]["status"] == "done"
    assert "evaluate" not in after_train["steps"] and after_train["registry_current"] is None
    assert sorted(after_eval["steps"]) == ["evaluate", "preprocess", "train"] and after_eval["registry_current"] is None
    assert done["status"] == "done" and done["steps"]["promote"]["promoted"] is True
    version = done["steps"]["promote"]["version"]
    assert Registry.at(root).current() == version

    # MLflow: the night's run with its params, training curve and evaluation; the version, aliased champion
    assert done["mlflow"]["run_id"] and "error" not in done["mlflow"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(done["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert run.data.tags["imagegen.version"] == version and run.data.tags["imagegen.promoted"] == "true"
    assert run.data.params["nightly.steps"] == "8" and run.data.params["train.base_channels"] == "8"
    cand = done["steps"]["evaluate"]["candidate"]["metrics"]
    assert run.data.metrics["candidate.fid"] == pytest.approx(cand["fid"]["value"])
    assert run.data.metrics["preprocess.new_images"] == 40
    curve = client.get_metric_history(run.info.run_id, "train/step_time_s")
    rows = [json.loads(x) for x in (root / "runs/nightly/2026-02-01/train/metrics.jsonl").read_text().splitlines()]
    assert [m.step for m in curve] == [r["step"] for r in rows] and len(rows) == 4  # 8 steps, log_every 2
    champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    assert champion.tags["imagegen.version"] == version and champion.run_id == run.info.run_id
    assert Path(champion.source) == (root / "registry/versions" / version / "model.pt").resolve()
    client.delete_registered_model_alias(MODEL_NAME, CHAMPION)  # e.g. moved by hand; sync puts it back on the current one
    assert sync_champion(uri, root) == str(champion.version)
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == str(champion.version)
    assert sync_champion(uri, tmp_path / "no-root") is None

    # the next night, nothing new: the Spark task adds an empty run, nothing is trained, champion stays
    night2 = _run_dag(_dag(airflow_python, tmp_path, env, ds="2026-02-02")["tasks"], spark)
    assert night2[0]["steps"]["preprocess"]["new_images"] == 0  # the first night's runs are not counted again
    assert night2[-1]["status"] == "done" and night2[-1]["steps"]["train"]["status"] == "skipped"
    assert night2[-1]["mlflow"]["model_version"] is None
    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version == champion.version
    assert len(client.search_runs([run.info.experiment_id])) == 2


def test_mlflow_failure_is_recorded_and_never_fails_the_night(tmp_path):
    from jobs.tracking import log_night

    lines: list[str] = []
    (tmp_path / "a-file").write_text("")
    uri = f"sqlite:///{tmp_path}/a-file/mlflow.db"  # no database can live under a regular file
    out = log_night(uri, {"date": "2026-02-01", "steps": {}}, tmp_path, lines.append)
    assert out["uri"] == uri and out["error"] and "run_id" not in out
    assert lines and lines[0].startswith(f"imagegen nightly: MLflow logging to {uri} failed")


def test_systemd_units_verify_and_run_imagegen_nightly(tmp_path):
    service, timer = SCHEDULES / "imagegen-nightly.service", SCHEDULES / "imagegen-nightly.timer"
    units = {}
    for path in (service, timer):
        cp = configparser.ConfigParser(interpolation=None, strict=False)
        cp.optionxform = str
        cp.read(path)
        units[path.suffix] = cp
    exec_start = shlex.split(units[".service"]["Service"]["ExecStart"])
    assert exec_start[1:2] == ["nightly"] and exec_start[0].endswith("/imagegen") and "--root" in exec_start
    assert units[".service"]["Service"]["Type"] == "oneshot"
    assert units[".timer"]["Timer"]["Persistent"] == "true" and units[".timer"]["Timer"]["Unit"] == service.name
    assert units[".timer"]["Install"]["WantedBy"] == "timers.target"
    if shutil.which("systemd-analyze") is None:
        return
    # systemd-analyze verify wants the ExecStart binary to exist: point it at a stand-in, keep everything else
    fake = tmp_path / "bin" / "imagegen"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    text = service.read_text().replace("/opt/imagegen/.venv/bin/imagegen", str(fake))
    (tmp_path / service.name).write_text(text.replace("User=imagegen\n", "").replace("Group=imagegen\n", ""))
    shutil.copy(timer, tmp_path / timer.name)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / timer.name), str(tmp_path / service.name)],
                       capture_output=True, text=True, check=False, timeout=120)
    problems = [x for x in r.stderr.splitlines() if str(tmp_path) in x or "imagegen" in x]
    assert r.returncode == 0 and not problems, r.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / service.name).write_text(text.replace("Type=oneshot", "Type=sometimes"))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(broken / service.name)], capture_output=True, text=True, check=False, timeout=120)
    assert "Failed to parse service type" in r.stderr and str(broken) in r.stderr  # the verification can fail


def test_crontab_line_has_five_time_fields_and_runs_imagegen_nightly_into_a_log():
    lines = [x for x in (SCHEDULES / "imagegen.cron").read_text().splitlines() if x.strip() and not x.startswith("#")]
    jobs = [x for x in lines if "=" not in x.split()[0]]  # SHELL=/PATH= lines are environment settings
    assert len(jobs) == 1
    fields = jobs[0].split(None, 5)
    minute, hour, dom, month, dow, command = fields
    assert (minute, hour, dom, month, dow) == ("30", "2", "*", "*", "*")
    argv = shlex.split(command)
    assert argv[0].endswith("/imagegen") and argv[1] == "nightly" and "flock" not in command
    assert argv[-3:] == [">>", "/var/log/imagegen/nightly.log", "2>&1"]


def test_kubernetes_cronjob_forbids_overlap_and_mounts_root_from_a_pvc():
    docs = list(yaml.safe_load_all((SCHEDULES / "imagegen-nightly-cronjob.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    cj = by_kind["CronJob"]
    assert cj["apiVersion"] == "batch/v1" and cj["spec"]["schedule"] == "30 2 * * *"
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    argv = container["command"] + container["args"]
    assert argv[0].endswith("/imagegen") and argv[1] == "nightly"
    root = argv[argv.index("--root") + 1]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == root)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == by_kind["PersistentVolumeClaim"]["metadata"]["name"]
    assert pod["restartPolicy"] == "Never"
