"""The optimizer and the per-step random generator of the training loop."""

from __future__ import annotations

import torch

from microdit.config.recipe import RecipeConfig


def build_optimizer(model: torch.nn.Module, recipe: RecipeConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (norm scales and biases are not decayed).
    Expert weights get ``optimizer.moe_lr_scale`` (the official code meant 0.5 but its name
    filter matched nothing; default 1)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_expert = param.ndim == 3 and (".mlp.w1" in name or ".mlp.w2" in name)  # stacked (E, in, out)
        groups.setdefault((param.ndim >= 2, is_expert), []).append(param)
    opt = recipe.optimizer
    param_groups = [
        {"params": params, "weight_decay": opt.weight_decay if decay else 0.0,
         "lr_scale": opt.moe_lr_scale if expert else 1.0}
        for (decay, expert), params in groups.items()
    ]
    return torch.optim.AdamW(param_groups, lr=recipe.phases[0].lr, betas=opt.betas, eps=opt.eps,
                             fused=next(model.parameters()).is_cuda)


def step_generator(seed: int, rank: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """A generator that depends only on (seed, rank, step, micro-batch): resume-exact randomness."""
    mixed = (seed * 1_000_003 + rank * 10_007 + step * 101 + micro) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(mixed)
