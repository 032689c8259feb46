"""The typed, validated MicroDiT architecture config: every knob the ablations sweep.

One ``ModelConfig`` describes a network completely (SPEC §1). Invalid combinations fail at
construction with a ``ConfigError`` naming the field. Named sizes live in
``microdit.model.sizes``; this file only knows what a valid architecture is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from microdit.errors import ConfigError

MASKING_STRATEGIES = ("none", "naive", "deferred")


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value`` (the official width rounding)."""
    return multiple * ((value + multiple - 1) // multiple)


@dataclass(frozen=True)
class ModelConfig:
    """MicroDiT architecture. Defaults are MicroDiT_XL_2 (SPEC §1) with a 1024-d caption encoder."""

    # Backbone
    width: int = 1024  # D: token width of the backbone and of the conditioning vector c
    depth: int = 28  # number of backbone blocks
    head_dim: int = 64
    multiple_of: int = 256  # FFN hidden widths are rounded up to this
    patch_size: int = 2
    latent_channels: int = 4  # 4 for the SDXL VAE, 16 for vae-kl-f8-d16, 3 for `pixels`
    caption_dim: int = 1024  # Dy: 384 MiniLM, 1024 OpenCLIP-H, 4096 T5-XXL
    # Fixed sin-cos positions use arange(grid) / scale; None = grid / 16 (1 at 256 px, 2 at 512 px).
    pos_interp_scale: float | None = None
    norm_eps: float = 1e-6
    use_bias: bool = False  # biases on the linears inside blocks
    depth_init: bool = True  # output-side init std 0.02/sqrt(2(i+1)) instead of 0.02/sqrt(2 depth)

    # Patch-mixer (deferred masking): light blocks over all patches before the drop.
    mixer_depth: int = 6  # 0 = no mixer
    mixer_width: int = 768
    mixer_qkv_ratio: float = 1.0
    mixer_ffn_ratio: float = 4.0

    # Masking: which patches the backbone sees during training; the ratio is per phase.
    masking: str = "deferred"  # none | naive | deferred
    mask_ratio: float = 0.75  # default training ratio; a forward call may override it

    # Expert-choice MoE (Zhou et al. 2022) feed-forward layers.
    num_experts: int = 8  # 0 = dense everywhere
    expert_capacity: float = 2.0  # each expert takes int(capacity * T / E) tokens per sample
    experts_every_n: int = 2
    # Dense twin: the MoE positions become dense SwiGLU layers whose FFN ratio is multiplied by
    # expert_capacity, so active parameters per token match the MoE model (MoE-vs-dense ablations).
    dense_twin: bool = False

    # Layer-wise scaling (OpenELM-style): per-block attention / FFN ratios over depth.
    layerwise_scaling: bool = True
    qkv_ratio_range: tuple[float, float] = (0.5, 1.0)
    ffn_ratio_range: tuple[float, float] = (0.5, 4.0)

    def __post_init__(self) -> None:
        # YAML gives lists; keep tuples so the config stays hashable and frozen.
        object.__setattr__(self, "qkv_ratio_range", tuple(self.qkv_ratio_range))
        object.__setattr__(self, "ffn_ratio_range", tuple(self.ffn_ratio_range))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"model.{name}={getattr(self, name)!r}: {msg}")

        for name in (
            "width",
            "depth",
            "head_dim",
            "multiple_of",
            "patch_size",
            "latent_channels",
            "caption_dim",
        ):
            need(
                isinstance(getattr(self, name), int) and getattr(self, name) > 0,
                name,
                "must be a positive integer",
            )
        need(self.width % self.head_dim == 0, "width", f"must be a multiple of head_dim={self.head_dim}")
        need(self.width % 4 == 0, "width", "must be divisible by 4 (2D sin-cos positions)")
        need(self.masking in MASKING_STRATEGIES, "masking", f"allowed: {', '.join(MASKING_STRATEGIES)}")
        need(0.0 <= self.mask_ratio < 1.0, "mask_ratio", "must be in [0, 1)")
        need(self.mixer_depth >= 0, "mixer_depth", "must be >= 0 (0 disables the patch-mixer)")
        if self.mixer_depth > 0:
            need(
                self.mixer_width > 0 and self.mixer_width % self.head_dim == 0,
                "mixer_width",
                f"must be a positive multiple of head_dim={self.head_dim}",
            )
            need(self.mixer_width % 4 == 0, "mixer_width", "must be divisible by 4")
            need(self.mixer_qkv_ratio > 0, "mixer_qkv_ratio", "must be > 0")
            need(self.mixer_ffn_ratio > 0, "mixer_ffn_ratio", "must be > 0")
        need(
            not (self.masking == "deferred" and self.mixer_depth == 0),
            "masking",
            "'deferred' masking needs a patch-mixer (mixer_depth > 0); use 'naive' to drop patches without one",
        )
        need(
            not (self.masking == "naive" and self.mixer_depth > 0),
            "masking",
            "'naive' masking drops patches before any mixer; set mixer_depth=0 or use 'deferred'",
        )
        need(self.masking != "none" or self.mask_ratio == 0.0, "mask_ratio", "must be 0 when masking='none'")
        need(self.num_experts >= 0 and self.num_experts != 1, "num_experts", "must be 0 (dense) or >= 2")
        need(
            not self.dense_twin or self.num_experts >= 2,
            "dense_twin",
            "needs num_experts >= 2: it replaces those MoE positions with equally active dense layers",
        )
        if self.num_experts:
            need(self.expert_capacity > 0, "expert_capacity", "must be > 0")
            need(self.experts_every_n >= 1, "experts_every_n", "must be >= 1")
        for name in ("qkv_ratio_range", "ffn_ratio_range"):
            lo_hi = getattr(self, name)
            need(
                len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1], name, "must be (low, high) with 0 < low <= high"
            )
        need(
            self.pos_interp_scale is None or self.pos_interp_scale > 0,
            "pos_interp_scale",
            "must be > 0 or null",
        )

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
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["qkv_ratio_range"] = list(self.qkv_ratio_range)
        data["ffn_ratio_range"] = list(self.ffn_ratio_range)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model: unknown field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"model: unknown field(s) {unknown}; allowed: {sorted(known)}")
        return replace(self, **changes)


def _linspace(low: float, high: float, steps: int, i: int) -> float:
    """Value i of numpy.linspace(low, high, steps), computed the same way in float64."""
    if steps == 1:
        return float(low)
    import numpy as np

    return float(np.linspace(low, high, steps)[i])
