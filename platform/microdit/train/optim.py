"""The optimizer and the per-step random generator of the training loop."""

from __future__ import annotations

import numpy as np
import torch

from microdit.config.recipe import RecipeConfig


def build_optimizer(model: torch.nn.Module, recipe: RecipeConfig) -> torch.optim.Optimizer:
    """AdamW over ``model``'s parameters (build it after FSDP sharding: it must hold the sharded ones).

    ``optimizer.weight_decay_on``: ``all`` decays every parameter (the official run), ``matrices``
    exempts 1-D parameters (norm scales, biases). Expert weights get ``optimizer.moe_lr_scale`` (the
    official code meant 0.5 but its name filter matched nothing; default 1)."""
    opt = recipe.optimizer
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_expert = param.ndim == 3 and (".mlp.w1" in name or ".mlp.w2" in name)  # stacked (E, in, out)
        decay = opt.weight_decay_on == "all" or param.ndim >= 2
        groups.setdefault((decay, is_expert), []).append(param)
    param_groups = [
        {"params": params, "weight_decay": opt.weight_decay if decay else 0.0,
         "lr_scale": opt.moe_lr_scale if expert else 1.0}
        for (decay, expert), params in groups.items()
    ]
    return torch.optim.AdamW(param_groups, lr=recipe.phases[0].lr, betas=opt.betas, eps=opt.eps,
                             fused=next(model.parameters()).is_cuda)


def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    """A 63-bit seed hashed from (seed, rank, step, micro-batch) with numpy's SeedSequence, so no two
    (rank, step, micro) tuples share a random stream (a linear mix of them collides)."""
    words = np.random.SeedSequence([seed, rank, step, micro]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31 ^ int(words[1])) & (2**63 - 1)


def step_generator(seed: int, rank: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """A generator that depends only on (seed, rank, step, micro-batch): resume-exact randomness."""
    return torch.Generator(device=device).manual_seed(step_seed(seed, rank, step, micro))
