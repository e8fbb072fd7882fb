"""torchrun-aware helpers: rank, world size, process-group set-up and reductions.

Under `torchrun --nproc_per_node=N -m trainer ...` every rank runs the whole program; only rank 0 writes files and
prints. Outside torchrun every helper degrades to the single-process case.
"""
from __future__ import annotations

import functools
import gc
import os
from datetime import timedelta

import torch
import torch.distributed as dist


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def env_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else env_rank()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def select_device(name: str) -> torch.device:
    """`trainer.device`: auto is this rank's GPU (LOCAL_RANK) when there is one, else the CPU."""
    from .errors import UserError

    if name == "auto":
        return torch.device("cuda", env_local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but CUDA is not available here; use trainer.device=auto or cpu")
    return device


def init_from_env() -> None:
    """Start the process group when launched by torchrun (NCCL on CUDA, gloo on CPU)."""
    if env_world_size() <= 1 or is_distributed():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(env_local_rank())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def shutdown(wait: bool = True) -> None:
    """Tear the process group down while the interpreter is still whole.

    A DistributedDataParallel wrapper left in a reference cycle keeps gloo's group and its worker threads alive until
    interpreter finalisation, where freeing them can abort the process ("terminate called without an active
    exception"; 2 of 68 two-rank runs beside a CPU hog before this, 0 of 100 after: bench/ddp_exit.py). So: collect
    such cycles now, wait until every rank is done with its collectives (`wait`; not on a failure, where another rank
    may never arrive), then destroy the group.
    """
    if is_distributed():
        gc.collect()
        if wait:
            dist.barrier()
        dist.destroy_process_group()
        _host_group.cache_clear()
        gc.collect()


def broadcast_object(obj):
    """Rank 0's value of `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order; [obj] on one process."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks (in place on a copy); identity on one process."""
    if not is_distributed():
        return t
    t = t.clone()
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool) -> bool:
    """Whether `flag` is set on any rank (a max over the host group: no GPU sync), for what all ranks must act on
    alike at the same step, such as a Ctrl-C that reached them at different steps."""
    if not is_distributed():
        return flag
    t = torch.tensor(int(flag), dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_host_group())
    return bool(t.item())


def rank0_value(x: float) -> float:
    """Rank 0's `x` on every rank, for what all ranks must act on alike: the time spent, which decides when a time
    budget stops the stage and where a time-fitted schedule stands. On its own clock a rank could stop a step before
    the others, leaving them blocked in the next all-reduce, or step its lr differently. PyTorch Lightning's Timer
    broadcasts its stop decision the same way."""
    if not is_distributed():
        return x
    t = torch.tensor(x, dtype=torch.float64)
    dist.broadcast(t, src=0, group=_host_group())
    return t.item()


@functools.cache
def _host_group() -> dist.ProcessGroup:
    """A gloo group over all ranks for host-side values: a broadcast through NCCL would also wait for the GPU at every
    call (detectron2's comm.py keeps such a group for the same reason)."""
    return dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else dist.group.WORLD


def barrier() -> None:
    if is_distributed():
        dist.barrier()
