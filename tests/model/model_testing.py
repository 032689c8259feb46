"""Small helpers shared by the model tests: tiny configs, randomised weights, inputs, hooks."""

from __future__ import annotations

import torch

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


class Capture:
    """Records the first positional input and the output of a module on each call."""

    def __init__(self, module: torch.nn.Module):
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self._handles = [
            module.register_forward_pre_hook(lambda _m, args: self.inputs.append(args[0].detach().clone())),
            module.register_forward_hook(lambda _m, _a, out: self.outputs.append(out.detach().clone())),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
