"""Data-parallel wrapping, compilation and the few collectives the loop needs (no-ops for one process).

DDP by default (``broadcast_buffers=False``: the only buffer is the fixed position table, identical
on every rank, which DDP would otherwise re-send before every forward). FSDP
(``resources.strategy: fsdp``) uses PyTorch's ``fully_shard`` per block with
``reshard_after_forward=False``: gradients and optimizer state are sharded, parameters stay
gathered between forward and backward (the paper's SHARD_GRAD_OP). Under bf16 its
``MixedPrecisionPolicy`` gathers parameters in bf16 (half the all-gather bytes, no autocast weight
copies) and reduce-scatters gradients in fp32 (the official composer ``DEFAULT`` policy), and
:func:`gradient_sync` defers the reduce-scatter of accumulated micro-batches to the last one (as
DDP's ``no_sync``), instead of one reduce-scatter per micro-batch.

``fully_shard`` replaces every parameter with a new sharded (DTensor) ``nn.Parameter``, so the
optimizer must be built afterwards: :func:`prepare_model_and_optimizer` does both in that order.
``torch.nn.utils.clip_grad_norm_`` works on the sharded gradients as is (it returns a replicated
DTensor holding the global norm).

``compile_model`` compiles with static shapes (``dynamic=False``): each phase (resolution, kept
tokens, micro-batch) gets its own specialised graph, compiled once, instead of the dynamic-shape
recompile PyTorch otherwise makes when a second shape appears.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from microdit.config.recipe import RecipeConfig, ResourcesConfig
from microdit.train.optim import build_optimizer


def distributed(world: int) -> bool:
    return world > 1 and dist.is_available() and dist.is_initialized()


def uses_bf16(resources: ResourcesConfig, device: torch.device) -> bool:
    """bf16 autocast: asked for, or ``auto`` on a GPU (CPU stays fp32)."""
    return resources.precision == "bf16" or (resources.precision == "auto" and device.type == "cuda")


def compile_model(module: nn.Module, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` with static shapes: one graph per phase shape (``backend``: tests count graphs
    with a cheaper one; the shapes and graph breaks are decided before the backend runs)."""
    return torch.compile(module, dynamic=False, backend=backend)


def wrap_model(model: nn.Module, resources: ResourcesConfig, device: torch.device, world: int) -> nn.Module:
    """The module the loop calls forward on (DDP / FSDP / compiled); ``model`` stays the plain one."""
    wrapped: nn.Module = model
    if distributed(world):
        if resources.strategy == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
                if uses_bf16(resources, device) else MixedPrecisionPolicy()
            for block in list(getattr(model, "patch_mixer", [])) + list(model.blocks):
                fully_shard(block, reshard_after_forward=False, mp_policy=policy)
            fully_shard(model, reshard_after_forward=False, mp_policy=policy)
        else:
            wrapped = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, **_no_buffer_sync())
    if resources.compile:
        wrapped = compile_model(wrapped)
    return wrapped


def _no_buffer_sync() -> dict[str, bool]:
    """DDP's switch for not re-sending buffers before every forward (renamed in newer PyTorch)."""
    import inspect

    parameters = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}


@contextlib.contextmanager
def gradient_sync(train_model: nn.Module, model: nn.Module, enabled: bool) -> Iterator[None]:
    """Inside, a backward only accumulates gradients locally when ``enabled`` is False (every
    micro-batch but the last): DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync(False)``
    (its unsharded gradients then wait for the last micro-batch's single reduce-scatter)."""
    if enabled or not hasattr(model, "set_requires_gradient_sync") and not hasattr(train_model, "no_sync"):
        yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: the plain module is the FSDPModule
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    with train_model.no_sync():
        yield


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


def step_sync(loss: torch.Tensor, spent: float, over_budget: bool, device: torch.device,
              world: int, run_dollars: float = 0.0) -> tuple[float, float, bool, float]:
    """The one host sync of a training step: (mean loss over ranks, the largest phase spend, whether
    any rank is over a budget, the largest run spend), from one all-gather of four numbers per rank and
    one ``tolist``. Every rank gets the same answer, so all take the same next decision (stop, LR of a
    dollar phase, evaluate at a dollar milestone)."""
    local = torch.tensor([0.0, float(spent), 1.0 if over_budget else 0.0, float(run_dollars)],
                         dtype=torch.float64, device=device)  # (4,)
    local[0] = loss.detach().reshape(()).to(device, torch.float64)
    rows = local[None]  # (1, 4)
    if distributed(world):
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local)
        rows = torch.stack(gathered)  # (W, 4)
    values = rows.tolist()  # the host sync
    return (sum(r[0] for r in values) / len(values), max(r[1] for r in values), max(r[2] for r in values) > 0,
            max(r[3] for r in values))


def all_reduce_max(values: list[float], device: torch.device, world: int) -> list[float]:
    """Element-wise maximum over ranks (every rank gets the same numbers)."""
    if not distributed(world):
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [float(v) for v in tensor.tolist()]
