"""The launchers users run, started for real on gloo/CPU: each rank reports what allreduce gave it."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HOROVOD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import horovod.torch as hvd

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    summed = hvd.allreduce(torch.tensor([float(rank + 1), 10.0 * rank]), op=hvd.Sum, name="probe")
    # DistributedOptimizer: each rank has a different gradient; after step() the weights agree.
    model = torch.nn.Linear(2, 1, bias=False)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), named_parameters=model.named_parameters())
    loss = model(torch.tensor([[float(rank + 1), 1.0]])).sum()
    loss.backward()
    opt.step()
    weights = [float(w) for w in model.weight.detach().flatten()]
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
        json.dump({"rank": rank, "size": size, "sum": summed.tolist(), "weights": weights}, f)
    """
)

TORCHRUN_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank + 1), 10.0 * rank])
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
        json.dump({"rank": rank, "size": size, "sum": t.tolist(), "local_rank": int(os.environ["LOCAL_RANK"])}, f)
    dist.destroy_process_group()
    """
)


def _run(cmd, env, timeout=240):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[0]} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def _reports(out_dir, n):
    reports = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(n)]
    assert [r["rank"] for r in reports] == list(range(n))
    return reports


def test_horovodrun_gloo_allreduce_and_distributed_optimizer(tmp_path, venv_bin, subprocess_env):
    script = tmp_path / "probe.py"
    script.write_text(HOROVOD_SCRIPT)
    _run([str(venv_bin / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(script), str(tmp_path)], subprocess_env)
    reports = _reports(tmp_path, 2)
    for r in reports:
        assert r["size"] == 2
        assert r["sum"] == [3.0, 10.0]  # (1 + 2, 0 + 10) from ranks 0 and 1
    # Both ranks applied the same averaged gradient, so the weights are identical.
    assert reports[0]["weights"] == reports[1]["weights"]


def test_torchrun_gloo_allreduce(tmp_path, venv_bin, subprocess_env):
    script = tmp_path / "probe.py"
    script.write_text(TORCHRUN_SCRIPT)
    _run([str(venv_bin / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", "29531", str(script), str(tmp_path)], subprocess_env)
    reports = _reports(tmp_path, 2)
    assert [r["local_rank"] for r in reports] == [0, 1]
    for r in reports:
        assert r["size"] == 2 and r["sum"] == [3.0, 10.0]
