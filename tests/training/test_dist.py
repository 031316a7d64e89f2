"""Distribution: backend choice, single-process collectives, and real 2-process runs with horovodrun and torchrun
(gloo, CPU): ranks read disjoint rows covering the dataset, parameters stay identical, metrics are averaged."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from training import dist
from training.config import TrainConfig
from training.dist import Backend

REPO = Path(__file__).resolve().parents[2]
TINY_ARGS = ["--batch-size", "8", "--base-channels", "8", "--z-dim", "16", "--num-samples", "8", "--log-every", "2",
             "--sample-every", "0", "--debug-probe", "true"]


def test_resolve_backend_from_environment() -> None:
    assert dist.resolve_backend(Backend.AUTO, {}) == Backend.SINGLE
    assert dist.resolve_backend(Backend.AUTO, {"HOROVOD_RANK": "0", "RANK": "0"}) == Backend.HOROVOD
    assert dist.resolve_backend(Backend.AUTO, {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == Backend.DDP
    assert dist.resolve_backend(Backend.AUTO, {"RANK": "1"}) == Backend.SINGLE  # incomplete torchrun env
    assert dist.resolve_backend(Backend.DDP, {}) == Backend.DDP  # explicit wins


def test_single_process_collectives() -> None:
    assert dist.init(Backend.SINGLE) == Backend.SINGLE
    assert (dist.get_rank(), dist.get_world_size(), dist.get_local_rank(), dist.is_main()) == (0, 1, 0, True)
    assert dist.allreduce_mean({"a": 1.5, "b": 2}) == {"a": 1.5, "b": 2.0}
    assert dist.broadcast_object({"x": [1]}) == {"x": [1]}
    with pytest.raises(RuntimeError, match="already initialised"):
        dist.init(Backend.HOROVOD)
    dist.barrier()


def check_probes(run: Path, data: Path, world: int, batch: int, backend: str) -> list[dict]:
    """The multi-process contract, from each rank's probe file against the dataset itself."""
    probes = [json.loads((run / "probe" / f"rank-{r}.json").read_text()) for r in range(world)]
    assert [p["rank"] for p in probes] == list(range(world))
    assert {p["backend"] for p in probes} == {backend} and {p["world_size"] for p in probes} == {world}
    all_ids = set(pads.dataset(str(data / "images"), format="parquet", partitioning="hive").to_table(columns=["image_id"])["image_id"].to_pylist())
    seen = [p["ids"] for p in probes]
    steps = probes[0]["step"]
    for ids in seen:  # one epoch: every step took `batch` rows, no row twice on a rank
        assert len(ids) == steps * batch and len(set(ids)) == len(ids)
    for i in range(world):
        for j in range(i + 1, world):
            assert not set(seen[i]) & set(seen[j]), f"ranks {i} and {j} read the same rows"
    union = set().union(*map(set, seen))
    assert union <= all_ids and len(all_ids) - len(union) < world * batch  # documented drop per epoch
    assert len({p["param_sha256"] for p in probes}) == 1, "parameters differ across ranks"
    for key in probes[0]["local_metrics"]:
        mean = sum(p["local_metrics"][key] for p in probes) / world
        for p in probes:
            assert p["averaged_metrics"][key] == pytest.approx(mean, rel=1e-6, abs=1e-9)
    assert len({p["local_metrics"][next(iter(p["local_metrics"]))] for p in probes}) == world  # ranks really differ
    return probes


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_horovodrun_two_ranks(tiny_dataset: Path, tmp_path: Path, venv_bin: Path, subprocess_env: dict) -> None:
    run = tmp_path / "run"
    _run([str(venv_bin / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", str(venv_bin / "imagegen"), "train",
          "--data", str(tiny_dataset), "--run-dir", str(run), "--model", "cdcgan", "--epochs", "1", "--lr", "1e-4",
          "--lr-scale-with-world", "true", *TINY_ARGS], subprocess_env)
    probes = check_probes(run, tiny_dataset, world=2, batch=8, backend="horovod")
    assert probes[0]["step"] == 6  # 96 rows / (2 ranks x 8)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]  # written once, by rank 0
    # 1e-4 x world 2; D's Adam also carries the lazy-R1 factor k / (k + 1) (training/loop.py, StyleGAN2)
    k = TrainConfig.__dataclass_fields__["r1_every"].default
    assert rows[-1]["lr_G"] == pytest.approx(2e-4) and rows[-1]["lr_D"] == pytest.approx(2e-4 * k / (k + 1))
    assert rows[-1]["global_batch"] == 16
    assert [p.name for p in (run / "checkpoints").glob("*.pt")] == ["ckpt-00000006.pt"]

    # resume on 2 ranks: rank 0 loads, both optimizers' states and all networks are broadcast, ranks stay in sync
    _run([str(venv_bin / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", str(venv_bin / "imagegen"), "train",
          "--data", str(tiny_dataset), "--run-dir", str(run), "--model", "cdcgan", "--steps", "8", "--lr", "1e-4",
          "--lr-scale-with-world", "true", "--resume", "auto", *TINY_ARGS], subprocess_env)
    resumed = [json.loads((run / "probe" / f"rank-{r}.json").read_text()) for r in range(2)]
    assert [p["step"] for p in resumed] == [8, 8] and len(resumed[0]["ids"]) == 2 * 8
    assert resumed[0]["param_sha256"] == resumed[1]["param_sha256"] != probes[0]["param_sha256"]
    assert not set(resumed[0]["ids"]) & set(resumed[1]["ids"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_torchrun_ddp_two_ranks(tiny_dataset: Path, tmp_path: Path, venv_bin: Path, subprocess_env: dict, model: str) -> None:
    run = tmp_path / "run"
    _run([str(venv_bin / "torchrun"), "--nproc_per_node", "2", "-m", "jobs.train", "--data", str(tiny_dataset),
          "--run-dir", str(run), "--model", model, "--epochs", "1", *TINY_ARGS], subprocess_env)
    check_probes(run, tiny_dataset, world=2, batch=8, backend="ddp")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6] and rows[-1]["global_batch"] == 16
