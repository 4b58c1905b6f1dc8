"""Process-group helpers. World size 1 runs the very same code with every call a no-op.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `init` joins the group when they are present.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init() -> torch.device:
    """Join the process group if torchrun started us; return this process's device."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    return device()


def device() -> torch.device:
    """This process's device: its GPU (LOCAL_RANK) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Average tensors across processes, in place."""
    if world_size() == 1:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(world_size())


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum tensors across processes, in place."""
    if world_size() == 1:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def all_agree(value: bool) -> bool:
    """True when `value` is true on every process (one reduction), so all take the same branch."""
    if world_size() == 1:
        return value
    flag = torch.tensor(float(value), device=_reduction_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _reduction_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_objects(value) -> list:
    """`value` from every process, in rank order (a one-item list with one process)."""
    if world_size() == 1:
        return [value]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
