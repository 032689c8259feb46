"""Small helpers shared by the model tests: tiny configs, randomised weights, inputs, hooks."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from microdit.config.model import ModelConfig
from microdit.model import MicroDiT
from microdit.model.sizes import model_config


def nano(**overrides) -> ModelConfig:
    """MicroDiT_Nano_2 (width 128, depth 4, mixer 2 x 128, 4 experts) with overrides."""
    return model_config("MicroDiT_Nano_2", **overrides)


def randomised(config: ModelConfig, std: float = 0.05, seed: int = 0) -> MicroDiT:
    """A model whose every parameter is N(0, std): non-zero outputs through every path.

    The paper's init zeroes the final layer and every adaLN gate, so an untrained model outputs
    exactly zero; tests about data flow need a model where everything matters.
    """
    torch.manual_seed(seed)
    model = MicroDiT(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, std)
    return model


def inputs(config: ModelConfig, n: int = 2, latent: int = 16, caption_len: int = 8, seed: int = 0):
    """(x (N, C, H, W), c_noise (N,), y (N, L, Dy)) drawn from a fixed generator."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, config.latent_channels, latent, latent, generator=gen)
    c_noise = torch.randn(n, generator=gen)
    y = torch.randn(n, caption_len, config.caption_dim, generator=gen)
    return x, c_noise, y


@contextlib.contextmanager
def cuda_autocast_policy():
    """CUDA autocast's policy for our ops, emulated under CPU autocast: ``layer_norm`` runs in
    fp32 (CPU autocast keeps it bf16) and SDPA casts its inputs to bf16."""
    layer_norm, sdpa = F.layer_norm, F.scaled_dot_product_attention

    def fp32_layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
        if not torch.is_autocast_enabled("cpu"):  # autocast off (a low-precision norm): as given
            return layer_norm(x, shape, weight, bias, eps)
        with torch.autocast("cpu", enabled=False):
            as32 = [None if t is None else t.float() for t in (weight, bias)]
            return layer_norm(x.float(), shape, *as32, eps)

    def bf16_sdpa(q, k, v, *args, **kwargs):
        return sdpa(*(t.to(torch.bfloat16) for t in (q, k, v)), *args, **kwargs)

    F.layer_norm, F.scaled_dot_product_attention = fp32_layer_norm, bf16_sdpa
    try:
        yield
    finally:
        F.layer_norm, F.scaled_dot_product_attention = layer_norm, sdpa


class Capture:
    """Records the first positional input and the output of a module on each call (a block's
    output is its residual stream: the tensor part of ``(tensor, router_stats)``)."""

    def __init__(self, module: torch.nn.Module):
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self._handles = [
            module.register_forward_pre_hook(lambda _m, args: self.inputs.append(args[0].detach().clone())),
            module.register_forward_hook(lambda _m, _a, out: self.outputs.append(_tensor(out).detach().clone())),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output
