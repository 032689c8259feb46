"""The typed, validated MicroDiT architecture config: every knob the ablations sweep.

One ``ModelConfig`` describes a network completely (SPEC §1). Invalid combinations fail at
construction with a ``ConfigError`` naming the field (``model.mixer_width=100: ...``). Named
sizes live in ``microdit.model.sizes``; this file only knows what a valid architecture is.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, PositiveInt, model_validator

from microdit.config.base import StrictModel, need, validate_config
from microdit.errors import ConfigError

MASKING_STRATEGIES = ("none", "naive", "deferred")
Masking = Literal["none", "naive", "deferred"]
Ratio = Annotated[float, Field(ge=0.0, lt=1.0)]
Positive = Annotated[float, Field(gt=0)]


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value`` (the official width rounding)."""
    return multiple * ((value + multiple - 1) // multiple)


class ModelConfig(StrictModel):
    """MicroDiT architecture. Defaults are MicroDiT_XL_2 (SPEC §1) with a 1024-d caption encoder."""

    model_config = ConfigDict(**StrictModel.model_config, frozen=True)

    # Backbone
    width: PositiveInt = 1024  # D: token width of the backbone and of the conditioning vector c
    depth: PositiveInt = 28  # number of backbone blocks
    head_dim: PositiveInt = 64
    multiple_of: PositiveInt = 256  # FFN hidden widths are rounded up to this
    patch_size: PositiveInt = 2
    latent_channels: PositiveInt = 4  # 4 for the SDXL VAE, 16 for vae-kl-f8-d16, 3 for `pixels`
    caption_dim: PositiveInt = 1024  # Dy: 384 MiniLM, 1024 OpenCLIP-H, 4096 T5-XXL
    # Fixed sin-cos positions use arange(grid) / scale; None = grid / 16 (1 at 256 px, 2 at 512 px).
    pos_interp_scale: Positive | None = None
    norm_eps: Positive = 1e-6
    use_bias: bool = False  # biases on the linears inside blocks
    depth_init: bool = True  # output-side init std 0.02/sqrt(2(i+1)) instead of 0.02/sqrt(2 depth)

    # Patch-mixer (deferred masking): light blocks over all patches before the drop.
    mixer_depth: Annotated[int, Field(ge=0)] = 6  # 0 = no mixer
    mixer_width: PositiveInt = 768
    mixer_qkv_ratio: Positive = 1.0
    mixer_ffn_ratio: Positive = 4.0

    # Masking: which patches the backbone sees during training; the ratio is per phase.
    masking: Masking = "deferred"
    mask_ratio: Ratio = 0.75  # default training ratio; a forward call may override it

    # Expert-choice MoE (Zhou et al. 2022) feed-forward layers.
    num_experts: Annotated[int, Field(ge=0)] = 8  # 0 = dense everywhere
    expert_capacity: Positive = 2.0  # each expert takes int(capacity * T / E) tokens per sample
    experts_every_n: PositiveInt = 2
    # Dense twin: the MoE positions become dense SwiGLU layers whose FFN ratio is multiplied by
    # expert_capacity, so active parameters per token match the MoE model (MoE-vs-dense ablations).
    dense_twin: bool = False

    # Layer-wise scaling (OpenELM-style): per-block attention / FFN ratios over depth.
    layerwise_scaling: bool = True
    qkv_ratio_range: tuple[Positive, Positive] = (0.5, 1.0)
    ffn_ratio_range: tuple[Positive, Positive] = (0.5, 4.0)

    # ------------------------------------------------------------------ validation
    @model_validator(mode="after")
    def _validate(self) -> ModelConfig:
        need(self.width % self.head_dim == 0, "width", self.width, f"must be a multiple of head_dim={self.head_dim}")
        need(self.width % 4 == 0, "width", self.width, "must be divisible by 4 (2D sin-cos positions)")
        if self.mixer_depth > 0:
            need(self.mixer_width % self.head_dim == 0, "mixer_width", self.mixer_width,
                 f"must be a positive multiple of head_dim={self.head_dim}")
            need(self.mixer_width % 4 == 0, "mixer_width", self.mixer_width, "must be divisible by 4")
        need(not (self.masking == "deferred" and self.mixer_depth == 0), "masking", self.masking,
             "'deferred' masking needs a patch-mixer (mixer_depth > 0); use 'naive' to drop patches without one")
        need(not (self.masking == "naive" and self.mixer_depth > 0), "masking", self.masking,
             "'naive' masking drops patches before any mixer; set mixer_depth=0 or use 'deferred'")
        need(self.masking != "none" or self.mask_ratio == 0.0, "mask_ratio", self.mask_ratio,
             "must be 0 when masking='none'")
        need(self.num_experts != 1, "num_experts", self.num_experts, "must be 0 (dense) or >= 2")
        need(not self.dense_twin or self.num_experts >= 2, "dense_twin", self.dense_twin,
             "needs num_experts >= 2: it replaces those MoE positions with equally active dense layers")
        for name in ("qkv_ratio_range", "ffn_ratio_range"):
            lo, hi = getattr(self, name)
            need(lo <= hi, name, [lo, hi], "must be [low, high] with 0 < low <= high")
        return self

    # ------------------------------------------------------------------ derived sizes
    @property
    def use_mixer(self) -> bool:
        return self.mixer_depth > 0

    def qkv_ratio(self, i: int) -> float:
        """Attention width ratio of backbone block i (linspace over depth when layer-wise scaling)."""
        return (
            _linspace(*self.qkv_ratio_range, self.depth, i)
            if self.layerwise_scaling
            else self.qkv_ratio_range[1]
        )

    def ffn_ratio(self, i: int) -> float:
        """FFN expansion ratio of backbone block i (linspace over depth when layer-wise scaling)."""
        return (
            _linspace(*self.ffn_ratio_range, self.depth, i)
            if self.layerwise_scaling
            else self.ffn_ratio_range[1]
        )

    def attn_width(self, width: int, ratio: float) -> int:
        """Fused qkv width per projection: exactly d at ratio 1 (official), else
        round_up(int(d * ratio), 2 * head_dim)."""
        return width if ratio == 1 else round_up(int(width * ratio), 2 * self.head_dim)

    def swiglu_hidden(self, width: int, ratio: float) -> int:
        return round_up(int(2 / 3 * int(width * ratio)), self.multiple_of)

    def expert_hidden(self, width: int, ratio: float) -> int:
        return round_up(int(width * ratio), self.multiple_of)

    def backbone_moe_position(self, i: int) -> bool:
        """Backbone block i holds MoE when (i+1) % every_n == 0, except the last block (official rule)."""
        return bool(self.num_experts) and (i + 1) % self.experts_every_n == 0 and i < self.depth - 1

    def mixer_moe_position(self, i: int) -> bool:
        """Mixer block i holds MoE when (i+1) % every_n == 0 and i >= 1; no last-block exception."""
        return bool(self.num_experts) and (i + 1) % self.experts_every_n == 0 and i >= 1

    def ffn_kind(self, moe_position: bool, ffn_ratio: float) -> tuple[str, float]:
        """("moe" | "dense", ratio) of one block; the dense twin widens former MoE positions."""
        if not moe_position:
            return "dense", ffn_ratio
        return ("dense", ffn_ratio * self.expert_capacity) if self.dense_twin else ("moe", ffn_ratio)

    def pos_scale(self, grid: int) -> float:
        return self.pos_interp_scale if self.pos_interp_scale is not None else grid / 16

    def num_tokens(self, latent_size: int) -> int:
        if latent_size % self.patch_size:
            raise ConfigError(
                f"latent size {latent_size} is not divisible by model.patch_size={self.patch_size}"
            )
        return (latent_size // self.patch_size) ** 2

    def kept_tokens(self, latent_size: int, mask_ratio: float) -> int:
        """Tokens reaching the backbone: floor(T * (1 - r)) (SPEC §1 step 6)."""
        tokens = self.num_tokens(latent_size)
        return tokens if mask_ratio <= 0 else int(tokens * (1 - mask_ratio))

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_dict(cls, data: Any, where: str = "model") -> ModelConfig:
        return validate_config(cls, data, where)

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with ``changes`` (unknown fields are errors naming ``model.<field>``)."""
        return validate_config(type(self), {**self.model_dump(), **changes}, "model")


def _linspace(low: float, high: float, steps: int, i: int) -> float:
    """Value i of numpy.linspace(low, high, steps), computed the same way in float64."""
    if steps == 1:
        return float(low)
    import numpy as np

    return float(np.linspace(low, high, steps)[i])
