"""Activation memory of a MicroDiT training step, replayed symbolically op by op (issue 12).

The forward runs exactly as ``microdit.model`` runs it (patch embedding, caption path, patch-mixer
on all T tokens, deferred/naive masking, backbone on the kept tokens, final layer, EDM loss in
fp32); each op records the tensors it saves for backward (LayerNorm input + mean/rstd, both
operands of a mul, the input of a linear, ...), views share their base's storage, and every
storage is counted once: the quantity ``count_saved_bytes`` measures with
``torch.autograd.graph.saved_tensors_hooks``. Dtypes follow the autocast policy of the device and
attention backend described in ``microdit.model.memory``; that module adds parameters, gradients,
optimizer state, sharding and workspace on top. Two execution switches are replayed too:
``low_precision_norms`` (every LayerNorm in bf16 under autocast) and ``activation_checkpointing``
(a checkpointed block keeps only its inputs; its backward recomputes everything it would have
saved, which then counts as that block's backward transient).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from microdit.config.model import ModelConfig

TIMESTEP_FEATURES = 512  # sinusoidal features of c_noise (SPEC §1 step 3)

Precision = Literal["bf16", "fp32"]
Strategy = Literal["ddp", "fsdp"]
Attention = Literal["flash", "math"]
Device = Literal["cuda", "cpu"]

_BYTES = {"fp32": 4, "bf16": 2, "int64": 8, "bool": 1}


# ---------------------------------------------------------------------------------------------
# Symbolic forward: tensors are (numel per image, dtype); a view shares its base's storage.
# ---------------------------------------------------------------------------------------------
class _T:
    __slots__ = ("base", "dtype", "numel")

    def __init__(self, numel: int, dtype: str, base: _T | None = None):
        self.numel, self.dtype, self.base = int(numel), dtype, base

    @property
    def storage(self) -> _T:
        return self.base.storage if self.base is not None else self

    def view(self, numel: int | None = None) -> _T:
        """A view of (part of) this storage, e.g. one chunk of a fused projection."""
        return _T(self.numel if numel is None else numel, self.dtype, base=self.storage)


def _promote(*dtypes: str) -> str:
    return "fp32" if "fp32" in dtypes else "bf16"


@dataclass
class _Sim:
    """Replays the forward of one image, recording what autograd saves (deduplicated by storage)."""

    autocast: bool
    device: Device
    attention: Attention
    low_precision_norms: bool = False
    checkpoint_blocks: bool = False
    saved: dict[int, tuple[_T, str]] = field(default_factory=dict)
    section: str = "embed"
    cumulative: list[tuple[str, int, int]] = field(default_factory=list)  # (name, saved so far, transient)

    # dtype policy ------------------------------------------------------------------------
    def mm_dtype(self, dtype: str) -> str:  # linear, conv, bmm (einsum)
        return "bf16" if self.autocast else dtype

    def sdpa_dtype(self, dtype: str) -> str:  # SDPA: lower precision on CUDA autocast
        return "bf16" if self.autocast and self.device == "cuda" else dtype

    def norm_dtype(self, dtype: str) -> str:  # layer_norm: fp32 on CUDA autocast, as is on CPU
        if self.autocast and self.low_precision_norms:
            return "bf16"  # microdit.model.norms.layer_norm casts input and weight down
        return "fp32" if self.autocast and self.device == "cuda" else dtype

    # bookkeeping -------------------------------------------------------------------------
    def new(self, numel: int, dtype: str) -> _T:
        return _T(numel, dtype)

    def save(self, *tensors: _T) -> None:
        for t in tensors:
            s = t.storage
            self.saved.setdefault(id(s), (s, self.section))  # keeps s alive: ids stay unique

    def cast(self, t: _T, dtype: str) -> _T:
        return t if t.dtype == dtype else _T(t.numel, dtype)

    @property
    def saved_bytes(self) -> int:
        return sum(s.numel * _BYTES[s.dtype] for s, _ in self.saved.values())

    def mark(self, name: str, transient: int = 0) -> None:
        """End of a forward stage; ``transient`` is the extra memory its backward needs."""
        self.cumulative.append((name, self.saved_bytes, transient))

    # ops ---------------------------------------------------------------------------------
    def linear(self, x: _T, rows: int, out_features: int) -> _T:
        xin = self.cast(x, self.mm_dtype(x.dtype))
        self.save(xin)
        return self.new(rows * out_features, xin.dtype)

    def layer_norm(self, x: _T, rows: int, affine: bool) -> _T:
        xin = self.cast(x, self.norm_dtype(x.dtype))
        # mean / rstd: fp32 (CUDA accumulates in fp32), except on CPU a bf16 layer_norm without an
        # fp32 weight keeps them bf16 (measured)
        fp32_weight = affine and not (self.autocast and self.low_precision_norms)
        stats = "fp32" if (xin.dtype == "fp32" or fp32_weight or self.device == "cuda") else xin.dtype
        self.save(xin, self.new(rows, stats), self.new(rows, stats))
        return self.new(x.numel, xin.dtype)

    def pointwise(self, x: _T) -> _T:  # GELU / SiLU save their input
        self.save(x)
        return self.new(x.numel, x.dtype)

    def mul(self, a: _T, b: _T) -> _T:  # both operands require grad: both saved
        self.save(a, b)
        return self.new(max(a.numel, b.numel), _promote(a.dtype, b.dtype))

    def add(self, a: _T, b: _T) -> _T:
        return self.new(max(a.numel, b.numel), _promote(a.dtype, b.dtype))

    def modulate(self, h: _T, mod: _T, width: int) -> _T:
        """h * (1 + scale) + shift: saves h and the new (1 + scale) tensor."""
        one_plus_scale = self.new(width, mod.dtype)
        return self.add(self.mul(h, one_plus_scale), mod.view())

    def sdpa(self, q: _T, k: _T, v: _T, tokens: int, source: int, heads: int, width: int) -> _T:
        dt = self.sdpa_dtype(q.dtype)
        if self.attention == "flash":
            qi, ki, vi = self.cast(q, dt), self.cast(k, dt), self.cast(v, dt)
            out, lse = self.new(tokens * width, dt), self.new(heads * tokens, "fp32")
            self.save(qi, ki, vi, out, lse)
            return out.view()  # (N, T, H, E) layout: the head merge is a view
        inner = "fp32" if dt == "bf16" else dt  # the math backend upcasts bf16 inputs (measured on CPU)
        self.save(
            self.new(tokens * width, inner),  # q * sqrt(scale)
            self.new(source * width, inner),  # k^T * sqrt(scale)
            self.new(heads * tokens * source, inner),  # softmax(q k^T): the T x S matrix
            self.new(source * width, inner),  # v made contiguous
        )
        return self.new(tokens * width, dt)  # (N, H, T, E) contiguous: the head merge copies

    # modules -----------------------------------------------------------------------------
    def self_attention(self, x: _T, tokens: int, width: int, qkv: int, head_dim: int) -> _T:
        fused = self.linear(x, tokens, 3 * qkv)
        q, k, v = (fused.view(tokens * qkv) for _ in range(3))  # chunk(3): views of one storage
        q = self.layer_norm(q, tokens, affine=False)  # QK-norm over the full projected width
        k = self.layer_norm(k, tokens, affine=False)
        out = self.sdpa(q, k, v, tokens, tokens, qkv // head_dim, qkv)
        return self.linear(out, tokens, width)

    def cross_attention(self, x: _T, ctx: _T, tokens: int, length: int, width: int, head_dim: int) -> _T:
        q = self.layer_norm(self.linear(x, tokens, width), tokens, affine=False)
        kv = self.linear(ctx, length, 2 * width)
        k = self.layer_norm(kv.view(length * width), length, affine=False)
        out = self.sdpa(q, k, kv.view(length * width), tokens, length, width // head_dim, width)
        return self.linear(out, tokens, width)

    def swiglu(self, x: _T, tokens: int, width: int, hidden: int) -> _T:
        gate = self.pointwise(self.linear(x, tokens, hidden))  # SiLU(W1 x)
        return self.linear(self.mul(gate, self.linear(x, tokens, hidden)), tokens, width)

    def moe(self, x: _T, tokens: int, width: int, hidden: int, experts: int, capacity: float) -> _T:
        k = max(1, min(tokens, int(capacity * tokens / experts)))  # tokens per expert
        slots = experts * k
        self.linear(x, tokens, experts)  # router logits
        probs = self.new(tokens * experts, "fp32")  # softmax(logits.float()) saves its output
        index = self.new(slots, "int64")  # top-k indices, saved by topk, gather and scatter_add
        gates = self.new(slots, "fp32")
        self.save(probs, index, x)  # gather saves its input (the expanded x) and the index
        mm = self.mm_dtype(x.dtype)
        self.save(self.new(slots * width, mm))  # einsum's (E, N*k, d) copy of the picked tokens
        hidden_t = self.new(slots * hidden, mm)
        act = self.pointwise(hidden_t)  # GELU saves the expert pre-activations
        self.save(self.new(slots * hidden, act.dtype))  # einsum's (E, N*k, h) copy of GELU's output
        out = self.new(slots * width, mm)
        self.mul(out, self.cast(gates, out.dtype))  # scale by routing probability
        return self.new(tokens * width, mm)  # scatter_add_ in the matmul dtype (returned as is)

    def run_block(self, cfg: ModelConfig, x: _T, c: _T, ctx: _T, *shape) -> tuple[_T, int]:
        """A block as the model runs it: checkpointed blocks save only their inputs (x, c, ctx)."""
        if not self.checkpoint_blocks:
            return self.block(cfg, x, c, ctx, *shape)
        before, start = dict(self.saved), self.saved_bytes
        out, transient = self.block(cfg, x, c, ctx, *shape)
        recomputed = self.saved_bytes - start  # rebuilt in backward, alive during its backward
        self.saved = before
        self.save(x, c, ctx)
        return self.new(out.numel, out.dtype), recomputed + transient

    def block(
        self,
        cfg: ModelConfig,
        x: _T,
        c: _T,
        ctx: _T,
        tokens: int,
        length: int,
        width: int,
        qkv_ratio: float,
        ffn: str,
        ffn_ratio: float,
    ) -> tuple[_T, int]:
        """One DiTBlock; returns the new residual stream and the block's backward transient."""
        mod = self.linear(self.pointwise(c), 1, 6 * width)  # adaLN: GELU(c) -> Linear -> 6 chunks
        qkv = cfg.attn_width(width, qkv_ratio)
        h = self.modulate(self.layer_norm(x, tokens, True), mod, width)
        attn = self.self_attention(h, tokens, width, qkv, cfg.head_dim)
        x = self.add(x, self.mul(mod.view(), attn))
        cross = self.cross_attention(
            self.layer_norm(x, tokens, True), ctx, tokens, length, width, cfg.head_dim
        )
        x = self.add(x, cross)
        h = self.modulate(self.layer_norm(x, tokens, True), mod, width)
        if ffn == "moe":
            hidden = cfg.expert_hidden(width, ffn_ratio)
            out = self.moe(h, tokens, width, hidden, cfg.num_experts, cfg.expert_capacity)
            slots = cfg.num_experts * max(1, min(tokens, int(cfg.expert_capacity * tokens / cfg.num_experts)))
            widest = 3 * slots * hidden + 2 * slots * width
        else:
            hidden = cfg.swiglu_hidden(width, ffn_ratio)
            out = self.swiglu(h, tokens, width, hidden)
            widest = 3 * tokens * hidden
        x = self.add(x, self.mul(mod.view(), out))
        # Backward transients: gradients of the residual stream in and out (fp32 at worst), then
        # the widest of the FFN's intermediate gradients or attention's dq/dk/dv/dout (+ fp32 dq).
        c_bytes = _BYTES[self.mm_dtype("fp32")]
        attn_tr = 4 * tokens * qkv * c_bytes + 4 * tokens * qkv
        if self.attention == "math":
            attn_tr += 2 * (qkv // cfg.head_dim) * tokens * tokens * 4
        return x, 2 * tokens * width * 4 + max(widest * c_bytes, attn_tr)


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActivationProfile:
    """Per-image bytes saved for backward, and the backward-peak view of them."""

    saved: int  # bytes saved for backward per image (what count_saved_bytes measures / N)
    by_stage: dict[str, int]  # embed (patches + caption path + c), mixer, backbone, final, loss
    backward_peak: int  # max over stages of (saved up to that stage + its backward transient)

    @property
    def transient(self) -> int:
        return self.backward_peak - self.saved


def activation_profile(
    config: ModelConfig,
    latent_size: int,
    mask_ratio: float = 0.0,
    *,
    caption_len: int = 77,
    precision: Precision = "bf16",
    device: Device = "cuda",
    attention: Attention = "flash",
    masking: str | None = None,
    low_precision_norms: bool = False,
    activation_checkpointing: bool = False,
) -> ActivationProfile:
    """Bytes autograd saves per image for one training forward (network + EDM loss).

    ``mask_ratio`` drops floor(T·r) patches as the model does (the mixer sees all T tokens under
    deferred masking); ``masking`` overrides ``config.masking`` like a phase does.
    """
    return _activation_profile(
        config,
        latent_size,
        float(mask_ratio),
        caption_len,
        precision,
        device,
        attention,
        masking or config.masking,
        bool(low_precision_norms),
        bool(activation_checkpointing),
    )


@lru_cache(maxsize=256)
def _activation_profile(
    cfg: ModelConfig,
    latent: int,
    ratio: float,
    length: int,
    precision: str,
    device: str,
    attention: str,
    masking: str,
    low_precision_norms: bool,
    checkpoint_blocks: bool,
) -> ActivationProfile:
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision={precision!r}: expected 'bf16' or 'fp32'")
    if attention not in ("flash", "math"):
        raise ValueError(f"attention={attention!r}: expected 'flash' or 'math'")
    sim = _Sim(autocast=precision == "bf16", device=device, attention=attention,  # type: ignore[arg-type]
               low_precision_norms=low_precision_norms, checkpoint_blocks=checkpoint_blocks)
    d, p, ch = cfg.width, cfg.patch_size, cfg.latent_channels
    tokens = cfg.num_tokens(latent)
    masked = masking != "none" and ratio > 0
    kept = int(tokens * (1 - ratio)) if masked else tokens

    # -- embeddings and conditioning
    sim.section = "embed"
    x_in = sim.new(ch * latent * latent, "fp32")  # c_in * x
    x = sim.linear(x_in, tokens, d)  # patch conv
    x = sim.new(tokens * d, _promote(x.dtype, "fp32"))  # + the fp32 position buffer: an fp32 stream, nothing saved
    y = sim.new(length * cfg.caption_dim, "fp32")
    y = sim.linear(sim.layer_norm(sim.pointwise(sim.linear(y, length, d)), length, True), length, d)
    h = sim.self_attention(sim.layer_norm(y, length, True), length, d, d, cfg.head_dim)
    y = sim.add(y, h)
    ctx = sim.add(y, sim.swiglu(sim.layer_norm(y, length, True), length, d, cfg.swiglu_hidden(d, 4.0)))
    pooled = sim.new(d, ctx.dtype)  # context.mean(dim=1) saves nothing
    pooled = sim.linear(sim.layer_norm(sim.pointwise(sim.linear(pooled, 1, d)), 1, True), 1, d)
    temb = sim.linear(sim.pointwise(sim.linear(sim.new(TIMESTEP_FEATURES, "fp32"), 1, d)), 1, d)
    c = sim.add(temb, pooled)
    sim.mark("embed")

    keep_idx = sim.new(kept, "int64")
    if masked and masking == "naive":
        sim.save(x, keep_idx)  # gather saves its input and the index
        x = sim.new(kept * d, x.dtype)

    # -- patch-mixer (all T tokens under deferred masking)
    if cfg.use_mixer:
        sim.section = "mixer"
        dm = cfg.mixer_width
        mix_tokens = kept if masking == "naive" else tokens
        mixed, mix_ctx = x, ctx
        if dm != d:
            mixed = sim.linear(sim.layer_norm(x, mix_tokens, True), mix_tokens, dm)
            mix_ctx = sim.linear(sim.layer_norm(ctx, length, True), length, dm)
        for i in range(cfg.mixer_depth):
            kind, ratio_i = cfg.ffn_kind(cfg.mixer_moe_position(i), cfg.mixer_ffn_ratio)
            mixed, tr = sim.run_block(
                cfg, mixed, c, mix_ctx, mix_tokens, length, dm, cfg.mixer_qkv_ratio, kind, ratio_i
            )
            sim.mark(f"mixer.{i}", tr)
        if masked and masking == "deferred":
            sim.save(mixed, keep_idx)
            mixed = sim.new(kept * dm, mixed.dtype)
        x = sim.linear(sim.layer_norm(mixed, kept, True), kept, d) if dm != d else mixed

    # -- backbone on the kept tokens
    sim.section = "backbone"
    for i in range(cfg.depth):
        kind, ratio_i = cfg.ffn_kind(cfg.backbone_moe_position(i), cfg.ffn_ratio(i))
        x, tr = sim.run_block(cfg, x, c, ctx, kept, length, d, cfg.qkv_ratio(i), kind, ratio_i)
        sim.mark(f"blocks.{i}", tr)

    # -- final layer, refill, EDM preconditioning and loss (fp32)
    sim.section = "final"
    mod = sim.linear(sim.pointwise(c), 1, 2 * d)
    sim.linear(sim.modulate(sim.layer_norm(x, kept, True), mod, d), kept, p * p * ch)
    if masked:
        sim.save(keep_idx)  # scatter into the zero refill saves the index
    sim.section = "loss"
    sim.save(sim.new(1, "fp32"))  # c_out * F: c_out
    sim.save(sim.new(ch * latent * latent, "fp32"), sim.new(1, "fp32"))  # (D - x0)**2 and lambda(sigma)
    if masked:  # channel mean -> avg_pool (input saved) -> where (mask) -> / kept count
        sim.save(sim.new(latent * latent, "fp32"), sim.new(tokens, "bool"), sim.new(1, "int64"))
    sim.mark("loss", 0)

    by_stage: dict[str, int] = {}
    for s, stage in sim.saved.values():
        by_stage[stage] = by_stage.get(stage, 0) + s.numel * _BYTES[s.dtype]
    peak = max(saved + transient for _, saved, transient in sim.cumulative)
    return ActivationProfile(saved=sim.saved_bytes, by_stage=by_stage, backward_peak=peak)


def activation_bytes_per_image(
    config: ModelConfig, latent_size: int, mask_ratio: float = 0.0, **kwargs
) -> int:
    """Shorthand: ``activation_profile(...).saved``."""
    return activation_profile(config, latent_size, mask_ratio, **kwargs).saved


@contextlib.contextmanager
def count_saved_bytes(exclude: Iterable = ()):
    """Counts bytes autograd saves for backward inside the block, each storage once.

    ``exclude``: tensors (e.g. ``model.parameters()``) whose storages are not counted. Yields a
    dict whose ``"bytes"`` entry is final once the block exits. Saved tensors are kept alive by
    the graph as usual (the counted memory really is held until backward).
    """
    import torch

    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[int] = set()
    result = {"bytes": 0, "tensors": 0}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr not in seen:
            seen.add(ptr)
            result["bytes"] += storage.nbytes()
            result["tensors"] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
