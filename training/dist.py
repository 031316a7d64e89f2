"""Distribution, isolated: rank/world size, barrier, metric all-reduce, state broadcast, main-only I/O.

Three backends behind one set of functions (the training loop calls only these):

- ``single``: one process; every collective is the identity.
- ``horovod``: ``hvd.init()``; gradients are averaged by ``hvd.DistributedOptimizer`` (one per model,
  distinct parameter-name prefixes "G." / "D." / "V." so the two GAN optimizers never share tensor names).
- ``ddp``: ``torch.distributed`` (gloo on CPU, nccl on CUDA); gradients are averaged by wrapping each
  model in ``DistributedDataParallel``.

Environment variables are read ONLY in :func:`init` (to pick the backend for ``auto`` and to learn the
rank/world size). ``init`` must be called once per process before any other function here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from typing import Any, Iterator

import torch

from training.config import Backend  # defined with the rest of the configuration




@dataclasses.dataclass(frozen=True)
class _State:
    backend: Backend
    rank: int
    world_size: int
    local_rank: int


_STATE: _State | None = None


def resolve_backend(backend: Backend, env: dict[str, str] | None = None) -> Backend:
    """What `auto` means in this process (pure function of the environment, for tests)."""
    env = dict(os.environ) if env is None else env
    if backend != Backend.AUTO:
        return backend
    if "HOROVOD_RANK" in env:
        return Backend.HOROVOD
    if all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return Backend.DDP
    return Backend.SINGLE


def init(backend: Backend = Backend.AUTO) -> Backend:
    """Initialise the process group once; returns the backend actually used. Idempotent."""
    global _STATE
    backend = resolve_backend(Backend(backend))
    if _STATE is not None:
        if _STATE.backend != backend:
            raise RuntimeError(f"dist already initialised with {_STATE.backend.value}, asked for {backend.value}")
        return backend
    if backend == Backend.HOROVOD:
        import horovod.torch as hvd

        hvd.init()
        _STATE = _State(backend, hvd.rank(), hvd.size(), hvd.local_rank())
    elif backend == Backend.DDP:
        import torch.distributed as tdist

        local_rank = int(os.environ["LOCAL_RANK"])
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        if not tdist.is_initialized():
            tdist.init_process_group(
                "nccl" if torch.cuda.is_available() else "gloo", timeout=datetime.timedelta(minutes=10)
            )
        _STATE = _State(backend, tdist.get_rank(), tdist.get_world_size(), local_rank)
    else:
        _STATE = _State(Backend.SINGLE, 0, 1, 0)
    if backend == Backend.HOROVOD and torch.cuda.is_available():
        torch.cuda.set_device(_STATE.local_rank)
    return backend


def shutdown() -> None:
    """Leave the process group (ddp) so that the next init() starts clean (tests run several in one process)."""
    global _STATE
    if _STATE is not None and _STATE.backend == Backend.DDP:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()
    _STATE = None


def _state() -> _State:
    if _STATE is None:
        raise RuntimeError("training.dist.init() was not called")
    return _STATE


def backend() -> Backend:
    return _state().backend


def get_rank() -> int:
    return _state().rank


def get_world_size() -> int:
    return _state().world_size


def get_local_rank() -> int:
    return _state().local_rank


def is_main() -> bool:
    return get_rank() == 0


def device() -> torch.device:
    """The CUDA device of this local rank when there is a GPU, else the CPU."""
    return torch.device("cuda", get_local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def print0(*args: Any, **kwargs: Any) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    s = _state()
    if s.backend == Backend.HOROVOD:
        import horovod.torch as hvd

        hvd.barrier()
    elif s.backend == Backend.DDP:
        import torch.distributed as tdist

        tdist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. creates directories), the others after it (accelerate's idiom)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def allreduce_mean(metrics: dict[str, float]) -> dict[str, float]:
    """Mean over ranks of each value. Every rank must pass the same keys (sorted here so order cannot differ)."""
    s = _state()
    if s.backend == Backend.SINGLE or not metrics:
        return {k: float(v) for k, v in metrics.items()}
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    if s.backend == Backend.HOROVOD:
        import horovod.torch as hvd

        t = hvd.allreduce(t, op=hvd.Average, name="metrics")
    else:
        import torch.distributed as tdist

        t = t.to(device()) if tdist.get_backend() == "nccl" else t
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        t = t.cpu() / s.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def broadcast_object(obj: Any, root: int = 0) -> Any:
    """Small picklable values (paths, step counters) from `root` to everyone. In-memory only: never from a file."""
    s = _state()
    if s.backend == Backend.HOROVOD:
        import horovod.torch as hvd

        return hvd.broadcast_object(obj, root_rank=root)
    if s.backend == Backend.DDP:
        import torch.distributed as tdist

        box = [obj]
        tdist.broadcast_object_list(box, src=root, device=device() if tdist.get_backend() == "nccl" else None)
        return box[0]
    return obj


def broadcast_state(models: list[torch.nn.Module], optimizers: list[torch.optim.Optimizer]) -> None:
    """Make every rank hold rank 0's parameters, buffers (spectral-norm vectors, BN statistics) and optimizer states.

    Called once at start, after rank 0 loaded a checkpoint (if resuming). Fresh optimizers have empty
    states on every rank, which are trivially equal; horovod would initialise them with a zero-gradient
    step (advancing Adam's step counter), so empty states are left alone: the decision is taken from
    rank 0's state and broadcast, so all ranks take the same branch.
    """
    s = _state()
    if s.backend == Backend.SINGLE:
        return
    has_state = broadcast_object([len(o.state_dict()["state"]) > 0 for o in optimizers])
    if s.backend == Backend.HOROVOD:
        import horovod.torch as hvd

        for m in models:
            hvd.broadcast_parameters(m.state_dict(), root_rank=0)
        for o, has in zip(optimizers, has_state):
            if has:
                hvd.broadcast_optimizer_state(o, root_rank=0)
    else:
        import torch.distributed as tdist

        with torch.no_grad():
            for m in models:
                for t in m.state_dict().values():
                    tdist.broadcast(t, src=0)
        for o, has in zip(optimizers, has_state):
            if has:
                o.load_state_dict(broadcast_object(o.state_dict() if is_main() else None))


def wrap_optimizer(opt: torch.optim.Optimizer, model: torch.nn.Module, prefix: str) -> torch.optim.Optimizer:
    """Horovod: a DistributedOptimizer averaging this model's gradients under names `prefix` + parameter name.

    Two models means two DistributedOptimizers; the prefixes ("G.", "D.") keep their allreduce names
    distinct. With ddp/single the optimizer is returned unchanged (DDP averages in backward).
    """
    if _state().backend != Backend.HOROVOD:
        return opt
    import horovod.torch as hvd

    named = [(prefix + n, p) for n, p in model.named_parameters()]
    return hvd.DistributedOptimizer(opt, named_parameters=named, op=hvd.Average)


def wrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """DDP: wrap so backward averages gradients; horovod/single: the model itself.

    GAN use (see training/loop.py): D sees real and fake in ONE forward (concatenated batch), and in
    the G step the loop calls the unwrapped D (``unwrap(D)``) with D's parameters frozen, so D's
    gradients are synchronised exactly once per D step and never during the G step.
    """
    if _state().backend != Backend.DDP:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [get_local_rank()] if torch.cuda.is_available() else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def optimizer_step(opt: torch.optim.Optimizer, scaler: "torch.amp.GradScaler") -> None:
    """scaler.step(opt) that also works with horovod's DistributedOptimizer (sync before unscale)."""
    if _state().backend == Backend.HOROVOD and scaler.is_enabled():
        opt.synchronize()
        scaler.unscale_(opt)
        with opt.skip_synchronize():
            scaler.step(opt)
    else:
        scaler.step(opt)
