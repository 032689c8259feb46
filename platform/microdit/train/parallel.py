"""Data-parallel wrapping and the few collectives the loop needs (no-ops for a single process).

DDP by default. FSDP (``resources.strategy: fsdp``) uses PyTorch's ``fully_shard`` per block
with ``reshard_after_forward=False``: gradients and optimizer state are sharded, parameters stay
gathered between forward and backward (the paper's SHARD_GRAD_OP).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from microdit.config.recipe import ResourcesConfig


def distributed(world: int) -> bool:
    return world > 1 and dist.is_available() and dist.is_initialized()


def wrap_model(model: nn.Module, resources: ResourcesConfig, device: torch.device, world: int) -> nn.Module:
    """The module the loop calls forward on (DDP / FSDP / compiled); ``model`` stays the plain one."""
    wrapped: nn.Module = model
    if distributed(world):
        if resources.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in list(getattr(model, "patch_mixer", [])) + list(model.blocks):
                fully_shard(block, reshard_after_forward=False)
            fully_shard(model, reshard_after_forward=False)
        else:
            wrapped = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
    if resources.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def all_reduce_mean(value: float, device: torch.device, world: int) -> float:
    if not distributed(world):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world


def any_rank(flag: bool, device: torch.device, world: int) -> bool:
    """True on every rank when any rank says True (keeps ranks in lock-step)."""
    if not distributed(world):
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def all_gather_objects(obj: Any, world: int) -> list[Any]:
    if not distributed(world):
        return [obj]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, world: int) -> tuple[dict, dict]:
    """Unsharded model and optimizer state on CPU (a collective under FSDP: call on every rank)."""
    if not distributed(world):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=options)


def load_full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                          optimizer_state: dict, world: int) -> None:
    if not distributed(world):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True))
