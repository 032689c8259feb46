"""Data-parallel wrapping and the few collectives the loop needs (no-ops for a single process).

DDP by default. FSDP (``resources.strategy: fsdp``) uses PyTorch's ``fully_shard`` per block
with ``reshard_after_forward=False``: gradients and optimizer state are sharded, parameters stay
gathered between forward and backward (the paper's SHARD_GRAD_OP).

``fully_shard`` replaces every parameter with a new sharded (DTensor) ``nn.Parameter``, so the
optimizer must be built afterwards: :func:`prepare_model_and_optimizer` does both in that order.
``torch.nn.utils.clip_grad_norm_`` works on the sharded gradients as is (it returns a replicated
DTensor holding the global norm).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from microdit.config.recipe import RecipeConfig, ResourcesConfig
from microdit.train.optim import build_optimizer


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


def prepare_model_and_optimizer(model: nn.Module, recipe: RecipeConfig, device: torch.device,
                                world: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Wrap / shard ``model`` first, then build the optimizer over its (possibly sharded) parameters.

    Returns ``(train_model, optimizer)``: ``train_model`` is what the loop calls forward on;
    ``model`` stays the module to clip, checkpoint and average (under FSDP it is sharded in place).
    Building the optimizer before ``fully_shard`` would leave it holding the replaced tensors,
    which never receive gradients: AdamW would skip them and the weights would never change.
    """
    train_model = wrap_model(model, recipe.resources, device, world)
    return train_model, build_optimizer(model, recipe)


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


def full_model_state(model: nn.Module, world: int) -> dict[str, torch.Tensor]:
    """The unsharded model weights (a collective under FSDP: call on every rank; rank 0 gets them)."""
    if not distributed(world) or not any(hasattr(p, "full_tensor") for p in model.parameters()):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                          optimizer_state: dict, world: int) -> None:
    if not distributed(world):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True))


def all_reduce_max(values: list[float], device: torch.device, world: int) -> list[float]:
    """Element-wise maximum over ranks (every rank gets the same numbers)."""
    if not distributed(world):
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [float(v) for v in tensor.tolist()]
