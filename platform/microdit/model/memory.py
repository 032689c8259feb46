"""Analytic peak-memory model of one MicroDiT training step on one GPU (issue 12).

Everything is derived from the architecture (``ModelConfig``), nothing is measured at import:

- **activations**: the bytes autograd saves for backward, per image. The forward is replayed
  symbolically, op by op, exactly as ``microdit.model`` runs it (patch embedding, caption path,
  patch-mixer on all T tokens, deferred/naive masking, backbone on the kept tokens, final layer,
  EDM loss in fp32), with the tensors each op saves (LayerNorm input + mean/rstd, both operands
  of a mul, the input of a linear, ...) and views sharing their base's storage, so every
  storage is counted once: the same quantity ``count_saved_bytes`` measures with
  ``torch.autograd.graph.saved_tensors_hooks``.
- **dtypes**: ``precision="fp32"`` keeps everything fp32. ``"bf16"`` follows the autocast
  policy of the device: on CUDA, linears/convs/bmm/SDPA run in bf16 but ``layer_norm`` (and
  ``softmax``, ``pow``) run in fp32, so every norm saves an fp32 copy of its input and its fp32
  output feeds an fp32 modulate whose result each following linear casts (and saves) again in
  bf16. The token stream starts fp32 (bf16 patch embedding + the fp32 position buffer, the
  official dtype flow) and stays fp32 until a linear (the mixer's width map) makes it bf16;
  residual adds keep the wider dtype, MoE returns its matmul dtype. On CPU, autocast keeps
  ``layer_norm`` in bf16 (measured), which saves ~40% less: ``device="cpu"`` reproduces a CPU
  autocast measurement, ``device="cuda"`` is what a GPU saves.
- **attention**: ``"flash"`` (flash / memory-efficient SDPA on GPU, and the fused CPU flash
  kernel PyTorch picks on CPU by default) saves q, k, v, the output and an O(T) logsumexp;
  ``"math"`` saves scaled q and k, a copy of v, the (heads x T x S) softmax matrix and a copy
  of the output (in fp32 on GPU, where the math backend upcasts bf16 inputs).
- **state**: fp32 parameters, fp32 gradients, AdamW's two fp32 moments, the bf16 copy of every
  matmul weight that autocast caches for the step (everything but LayerNorm weights), an
  optional fp32 EMA copy. DDP (``world_size`` > 1) keeps everything full and adds its gradient
  buckets (≈ 1x the gradients, ``gradient_as_bucket_view=False``). FSDP ``SHARD_GRAD_OP``
  (``fully_shard(reshard_after_forward=False)``) divides gradients and optimizer state by W and
  keeps the full gathered parameters through forward and backward (plus the fp32 1/W shard): in
  bf16 under bf16 precision (``MixedPrecisionPolicy(param_dtype=bf16)``; autocast then casts no
  weight), and needs the unsharded gradients of one unit (a block, or the root, in the parameter
  dtype) plus its fp32 reduce-scatter buffer while reducing. With gradient accumulation
  (``accumulation`` > 1) FSDP defers the reduce-scatter to the last micro-batch, so the unsharded
  gradients of the whole model (parameter dtype) are held across the micro-batches.
- **workspace/other**: the backward peak is taken over the backward pass: when block i runs its
  backward, the activations saved up to block i are still alive, plus that block's gradient
  transients (gradients of the residual stream, of the widest intermediate, flash's fp32 dq
  accumulator). Plus a fixed CUDA context / cuBLAS / NCCL allowance and a fragmentation reserve
  (both rough, stated as constants below). The optimizer step is a second candidate peak
  (activations freed, foreach AdamW temporaries ≈ one fp32 copy of the local parameters).

``low_precision_norms`` (bf16 LayerNorms, the official recipe) and ``activation_checkpointing``
(per block: only block inputs stay, one block's activations are rebuilt at a time in backward)
are replayed as the model runs them.

Not modelled: ``torch.compile`` (inductor recomputes cheap elementwise ops and usually saves
less than eager: this model is then an upper bound), CPU offload.

Usage::

    from microdit.model.memory import estimate_memory, max_micro_batch
    est = estimate_memory(model_config("MicroDiT_XL_2"), latent_size=32, mask_ratio=0.75,
                          micro_batch=256, strategy="fsdp", world_size=8)
    est.total, est.fits(), est.rows()
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from microdit.config.model import ModelConfig
from microdit.model.activations import (  # re-exported: the public memory API lives here
    ActivationProfile,
    Attention,
    Device,
    Precision,
    Strategy,
    activation_bytes_per_image,
    activation_profile,
    count_saved_bytes,
)

GIB = 2**30
H100_80GB_BYTES = 81559 * 2**20  # what nvidia-smi reports as total memory of an 80 GB H100 (79.6 GiB)
CUDA_CONTEXT_BYTES = int(0.5 * GIB)  # CUDA context + cuBLAS workspaces (outside PyTorch's allocator)
NCCL_BYTES = int(0.5 * GIB)  # NCCL communicator buffers when world_size > 1
FRAGMENTATION = 0.05  # caching-allocator fragmentation reserve on activations + transients
# ---------------------------------------------------------------------------------------------
# Parameters, sharding units
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParameterStats:
    total: int  # parameter count
    matmul: int  # parameters autocast casts to bf16 (all but LayerNorm weights)
    largest_unit: int  # largest FSDP unit (a mixer/backbone block, or the root's own parameters)


@lru_cache(maxsize=64)
def parameter_stats(config: ModelConfig) -> ParameterStats:
    """Counted on the meta device (no memory)."""
    import torch
    from torch import nn

    from microdit.model.microdit import MicroDiT

    with torch.device("meta"):
        model = MicroDiT(config)
    total = sum(p.numel() for p in model.parameters())
    norms = sum(p.numel() for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())
    units = [
        sum(p.numel() for p in b.parameters()) for b in [*getattr(model, "patch_mixer", []), *model.blocks]
    ]
    root = total - sum(units)
    return ParameterStats(total=total, matmul=total - norms, largest_unit=max([root, *units]))


# ---------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    """Peak GPU memory of one training step on one rank, in bytes (see the module docstring)."""

    micro_batch: int
    precision: str
    strategy: str
    world_size: int
    attention: str
    parameters: int  # fp32 parameters held (FSDP: the gathered full set + this rank's shard)
    weight_copies: int  # bf16 autocast copies of matmul weights, cached for the step
    gradients: int  # fp32 gradients held (FSDP: this rank's shard)
    grad_buckets: int  # DDP's flat all-reduce buckets (≈ 1x gradients)
    accumulated_grads: int  # FSDP with accumulation: unsharded gradients held until the last micro-batch
    optimizer: int  # AdamW exp_avg + exp_avg_sq, fp32 (FSDP: this rank's shard)
    ema: int  # fp32 EMA shadow when tracked
    activations_per_image: int  # saved for backward per image
    activations: int  # micro_batch x activations_per_image
    backward_transient: int  # extra at the backward peak (gradient buffers of the busiest block)
    fsdp_transient: int  # unsharded gradients + reduce-scatter buffer of the largest unit
    fixed_overhead: int  # CUDA context, cuBLAS, NCCL
    fragmentation: int  # allocator reserve on activations + transients
    optimizer_step_extra: int  # foreach AdamW temporaries (activations already freed)

    @property
    def weights(self) -> int:
        return self.parameters + self.weight_copies

    @property
    def grads(self) -> int:
        return self.gradients + self.grad_buckets + self.accumulated_grads

    @property
    def workspace(self) -> int:
        return (
            self.backward_transient
            + self.fsdp_transient
            + self.fixed_overhead
            + self.fragmentation
            + self.ema
        )

    @property
    def backward_peak(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.workspace

    @property
    def step_peak(self) -> int:
        return (
            self.parameters
            + self.grads
            + self.optimizer
            + self.ema
            + self.fixed_overhead
            + self.optimizer_step_extra
        )

    @property
    def total(self) -> int:
        return max(self.backward_peak, self.step_peak)

    def fits(self, capacity: int = H100_80GB_BYTES) -> bool:
        return self.total <= capacity

    def rows(self) -> list[tuple[str, int]]:
        """The table ``microdit model --memory`` prints: (label, bytes)."""
        return [
            ("weights", self.weights),
            ("grads", self.grads),
            ("optimizer", self.optimizer),
            ("activations", self.activations),
            ("workspace/other", self.workspace),
            ("total", self.total),
        ]


def estimate_memory(
    config: ModelConfig,
    latent_size: int,
    mask_ratio: float = 0.0,
    micro_batch: int = 1,
    *,
    caption_len: int = 77,
    precision: Precision = "bf16",
    strategy: Strategy = "ddp",
    world_size: int = 8,
    attention: Attention = "flash",
    device: Device = "cuda",
    ema: bool = False,
    masking: str | None = None,
    low_precision_norms: bool = False,
    activation_checkpointing: bool = False,
    accumulation: int = 1,
) -> MemoryEstimate:
    """Predicted peak memory per GPU for a training step at ``micro_batch`` images per forward.

    ``precision="bf16"`` is bf16 autocast over fp32 master weights (the trainer's GPU mode);
    ``strategy`` "ddp" keeps full state on every rank (gradient buckets only when world_size > 1),
    "fsdp" shards gradients and optimizer state over ``world_size`` ranks (SHARD_GRAD_OP);
    ``accumulation``: micro-batches per optimizer step (matters to FSDP, see the module docstring).
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch={micro_batch}: must be >= 1")
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: must be >= 1")
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy={strategy!r}: expected 'ddp' or 'fsdp'")
    if accumulation < 1:
        raise ValueError(f"accumulation={accumulation}: must be >= 1")
    stats = parameter_stats(config)
    prof = activation_profile(
        config,
        latent_size,
        mask_ratio,
        caption_len=caption_len,
        precision=precision,
        device=device,
        attention=attention,
        masking=masking,
        low_precision_norms=low_precision_norms,
        activation_checkpointing=activation_checkpointing,
    )
    p4 = 4 * stats.total
    sharded = strategy == "fsdp" and world_size > 1
    shard = world_size if sharded else 1
    gathered = 2 if (sharded and precision == "bf16") else 4  # bytes per gathered FSDP parameter
    activations = micro_batch * prof.saved
    transient = micro_batch * prof.transient
    return MemoryEstimate(
        micro_batch=micro_batch,
        precision=precision,
        strategy=strategy,
        world_size=world_size,
        attention=attention,
        parameters=gathered * stats.total + p4 // world_size if sharded else p4,
        weight_copies=2 * stats.matmul if precision == "bf16" and not sharded else 0,
        gradients=p4 // shard,
        grad_buckets=p4 if (strategy == "ddp" and world_size > 1) else 0,
        accumulated_grads=gathered * stats.total if sharded and accumulation > 1 else 0,
        optimizer=2 * p4 // shard,
        ema=(p4 // shard) if ema else 0,
        activations_per_image=prof.saved,
        activations=activations,
        backward_transient=transient,
        fsdp_transient=(gathered + 4) * stats.largest_unit if sharded else 0,
        fixed_overhead=CUDA_CONTEXT_BYTES + (NCCL_BYTES if world_size > 1 else 0),
        fragmentation=int(FRAGMENTATION * (activations + transient)),
        optimizer_step_extra=p4 // shard,
    )


def max_micro_batch(
    config: ModelConfig,
    latent_size: int,
    mask_ratio: float = 0.0,
    *,
    capacity: int = H100_80GB_BYTES,
    multiple_of: int = 1,
    **kwargs,
) -> int:
    """Largest micro-batch (a multiple of ``multiple_of``) whose predicted peak fits ``capacity``; 0 if none."""
    one = estimate_memory(config, latent_size, mask_ratio, 1, **kwargs)
    if not one.fits(capacity):
        return 0
    per_image = (
        estimate_memory(config, latent_size, mask_ratio, 2, **kwargs).backward_peak - one.backward_peak
    )
    batch = max(1, (capacity - (one.backward_peak - per_image)) // max(per_image, 1))
    while batch > 1 and not estimate_memory(config, latent_size, mask_ratio, batch, **kwargs).fits(capacity):
        batch -= 1
    while estimate_memory(config, latent_size, mask_ratio, batch + 1, **kwargs).fits(capacity):
        batch += 1
    return (batch // multiple_of) * multiple_of


def format_bytes(value: int) -> str:
    return f"{value / GIB:,.2f} GiB"


__all__ = [
    "H100_80GB_BYTES",
    "ActivationProfile",
    "MemoryEstimate",
    "ParameterStats",
    "activation_bytes_per_image",
    "activation_profile",
    "count_saved_bytes",
    "estimate_memory",
    "max_micro_batch",
    "parameter_stats",
]
