"""Registry of named MicroDiT sizes: the two official ones and a ladder for ablations.

``MicroDiT_Tiny_2`` and ``MicroDiT_XL_2`` are the released architectures (SPEC §1, exact
parameter counts with a 1024-d caption encoder). The ladder below them goes down to a size
the CPU test-suite trains in seconds. Every size has a ``<name>_dense`` twin with equal active
parameters per token (MoE positions become SwiGLU layers widened by the expert capacity).
"""

from __future__ import annotations

from collections.abc import Callable

from microdit.config.model import ModelConfig
from microdit.errors import ConfigError

_SIZES: dict[str, Callable[[], ModelConfig]] = {}


def register(name: str) -> Callable[[Callable[[], ModelConfig]], Callable[[], ModelConfig]]:
    def wrap(factory: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
        _SIZES[name] = factory
        _SIZES[f"{name}_dense"] = lambda: factory().replace(dense_twin=True)
        return factory

    return wrap


@register("MicroDiT_Nano_2")
def nano() -> ModelConfig:
    """CPU size for tests and the demo: trains a step in well under a second at 16x16 latents."""
    return ModelConfig(
        width=128,
        depth=4,
        head_dim=32,
        multiple_of=32,
        mixer_depth=2,
        mixer_width=128,
        num_experts=4,
        caption_dim=384,
        latent_channels=3,
    )


@register("MicroDiT_Nano_4")
def nano_patch4() -> ModelConfig:
    """Nano with 4x4 patches: 4x fewer tokens, the embedded demo's size (a few minutes on 2 CPU cores)."""
    return nano().replace(patch_size=4)


@register("MicroDiT_Micro_2")
def micro() -> ModelConfig:
    """The quickstart sweep's size on CPU (a few M parameters)."""
    return ModelConfig(
        width=256,
        depth=8,
        head_dim=32,
        multiple_of=64,
        mixer_depth=2,
        mixer_width=256,
        num_experts=4,
        caption_dim=384,
        latent_channels=3,
    )


@register("MicroDiT_Small_2")
def small() -> ModelConfig:
    """Single-GPU ablations (~60M parameters)."""
    return ModelConfig(width=384, depth=12, head_dim=32, multiple_of=128, mixer_depth=2, mixer_width=384)


@register("MicroDiT_Tiny_2")
def tiny() -> ModelConfig:
    """Official MicroDiT_Tiny_2: 200,692,752 parameters."""
    return ModelConfig(width=512, depth=16, head_dim=32, multiple_of=256, mixer_depth=4, mixer_width=512)


@register("MicroDiT_Base_2")
def base() -> ModelConfig:
    """Between Tiny and XL (~0.5B parameters) for 8-GPU ablations at a fraction of XL's cost."""
    return ModelConfig(width=768, depth=22, head_dim=64, multiple_of=256, mixer_depth=4, mixer_width=512)


@register("MicroDiT_XL_2")
def xl() -> ModelConfig:
    """Official MicroDiT_XL_2: 1,165,442,320 parameters (the paper's $1,890 model)."""
    return ModelConfig(width=1024, depth=28, head_dim=64, multiple_of=256, mixer_depth=6, mixer_width=768)


def size_names() -> list[str]:
    return list(_SIZES)


def model_config(name: str, **overrides) -> ModelConfig:
    """The config of a named size with field overrides (e.g. ``caption_dim=384``)."""
    if name not in _SIZES:
        raise ConfigError(f"model.size={name!r} is not a known size; choose one of {', '.join(_SIZES)}")
    return _SIZES[name]().replace(**overrides) if overrides else _SIZES[name]()


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Total and active-per-token parameters, built on the meta device (no memory).

    Active: with expert choice each token is processed by ``capacity`` experts on average, so an
    MoE layer contributes its router plus capacity/E of its expert weights.
    """
    import torch

    from microdit.model.microdit import MicroDiT
    from microdit.model.moe import ExpertChoiceMoE

    with torch.device("meta"):
        model = MicroDiT(config)
    total = sum(p.numel() for p in model.parameters())
    experts = sum(m.w1.numel() + m.w2.numel() for m in model.modules() if isinstance(m, ExpertChoiceMoE))
    fraction = min(1.0, config.expert_capacity / config.num_experts) if config.num_experts else 0.0
    active = total - experts + round(experts * fraction)
    return {"total": total, "active": active, "experts": experts}
