"""The training recipe: model, data mix, phases, resources, price, tracking (one YAML file).

A recipe is a list of phases (SPEC §4: resolution, mask ratio and masking strategy, length, LR
schedule, clip, EMA, noise distribution, batch, optimizer-state carry-over, data override) plus
everything a run needs. ``load_recipe`` reads YAML, applies ``--set`` overrides and validates
every field (pydantic, ``config/base.py``): errors name the dotted path, the value and the fix.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_serializer,
    model_validator,
)

from microdit.config.base import FieldError, StrictModel, need, validate_config
from microdit.config.data import DataMixConfig
from microdit.config.model import Masking, ModelConfig, Ratio
from microdit.config.overrides import apply_overrides
from microdit.config.shipped import RECIPES, resolve
from microdit.errors import ConfigError

# $ per accelerator-hour. H100: the paper's $1,890 over 499 H100-hours. CPU: one worker's share
# of a small cloud VM. Override per run with resources.price_per_hour.
PRICE_PER_HOUR = {"H100": 3.79, "H200": 4.50, "A100": 1.79, "L4": 0.80, "CPU": 0.05}
# Dense bf16 peak FLOP/s per device for MFU; CPU has no meaningful peak (log FLOP/s instead).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}
# Test hooks: a one-time failure on the last rank, a NaN loss, a JSONL file per rank of the row ids
# each micro-batch consumed (to check resume exactness: no duplicate, no gap), and a one-time SIGKILL
# of the process that drives the run (a sweep trial lost to an infrastructure failure).
DEBUG_KEYS = ("fail_at_step", "nan_at_step", "record_ids_dir", "kill_driver_at_step")
# The official monitoring protocol (SPEC §4): 30 Heun steps, guidance 5. Every sampling default uses it.
OFFICIAL_SAMPLE_STEPS = 30
OFFICIAL_GUIDANCE = 5.0
UnitInterval = Annotated[float, Field(ge=0.0, le=1.0)]


class PhaseData(StrictModel):
    """A phase's override of the recipe's data mix (SPEC §4: the 512-px phases use other sets)."""

    real: str | None = None
    synthetic: str | None = None
    synthetic_fraction: UnitInterval | None = None


class PhaseConfig(StrictModel):
    """One training phase. Length: exactly one of steps / images / dollars."""

    name: str = "phase"
    resolution: Annotated[int, Field(ge=8)] = 256  # pixels; the latent column latent_<resolution>
    mask_ratio: Ratio = 0.0
    masking: Masking | None = None  # none | naive | deferred; None = the model's strategy
    steps: PositiveInt | None = None
    images: PositiveInt | None = None
    dollars: PositiveFloat | None = None
    batch_size: PositiveInt = 2048  # global batch = micro_batch x workers x accumulation
    micro_batch: PositiveInt | None = None  # per-worker batch per forward; None = batch_size / workers
    lr: PositiveFloat = 8e-5
    # cosine decays to lr_floor x lr over the phase (steps / images; a dollar phase over its dollars)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: NonNegativeInt = 0
    lr_floor: UnitInterval = 0.33
    grad_clip: NonNegativeFloat = 0.25  # global-norm clip; 0 disables
    ema_half_life_images: PositiveFloat | None = None  # None = no EMA in this phase
    ema_start_images: NonNegativeInt = 0  # images seen within the phase before EMA starts tracking
    p_mean: float = -0.6  # ln(sigma) ~ N(p_mean, p_std^2)
    p_std: PositiveFloat = 1.2
    caption_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    # keep: AdamW moments and step counter carry over from the previous phase (official 1->2, 3->4);
    # reset: weights only, fresh optimizer state (official 256 -> 512 px transition)
    optimizer_state: Literal["keep", "reset"] = "keep"
    data: PhaseData | None = None  # override the recipe's data sets / synthetic fraction

    @field_serializer("data")
    def _data_as_given(self, data: PhaseData | None) -> dict[str, Any] | None:
        """Only the keys the phase set (an explicit null clears a set; an absent key inherits)."""
        return None if data is None else data.model_dump(exclude_unset=True)

    @model_validator(mode="after")
    def _length(self) -> PhaseConfig:
        lengths = [k for k in ("steps", "images", "dollars") if getattr(self, k) is not None]
        need(len(lengths) == 1, "steps/images/dollars", lengths, "give exactly one phase length")
        return self

    def per_worker_micro_batch(self, num_workers: int) -> int:
        return self.micro_batch or self.batch_size // max(num_workers, 1)

    def accumulation(self, num_workers: int) -> int:
        return self.batch_size // (self.per_worker_micro_batch(num_workers) * max(num_workers, 1))

    def total_steps(self) -> int | None:
        """The phase length in optimizer steps; None for a dollar-length phase (known only at run time)."""
        if self.steps is not None:
            return self.steps
        if self.images is not None:
            return math.ceil(self.images / self.batch_size)
        return None

    def ema_decay_per_step(self) -> float | None:
        """Per-step decay from the half-life in images: decay^(half_life / batch) = 1/2."""
        if self.ema_half_life_images is None:
            return None
        return 0.5 ** (self.batch_size / self.ema_half_life_images)


class ResourcesConfig(StrictModel):
    """Where and how a run trains, and what it costs per accelerator-hour."""

    num_workers: NonNegativeInt = 2  # 0 runs the loop in the driver process
    use_gpu: bool = False
    cpus_per_worker: PositiveFloat = 0.5  # small on CPU boxes: Ray Data read tasks need the rest
    gpus_per_worker: PositiveFloat = 1.0
    accelerator: str = "CPU"  # key into the price / peak tables; on GPUs also Ray's accelerator_type request
    request_accelerator_type: bool = True  # false: schedule on any GPU (the price/MFU may then be wrong)
    price_per_hour: NonNegativeFloat | None = None  # $ per accelerator-hour; None = PRICE_PER_HOUR[accelerator]
    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp shards grads and optimizer state (SHARD_GRAD_OP)
    compile: bool = False
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    low_precision_norms: bool = False  # LayerNorms in the autocast dtype (official low_precision_layernorm)
    activation_checkpointing: bool = False  # recompute each mixer/backbone block in backward
    attention_kernel: Literal["auto", "flash", "efficient", "cudnn", "math"] = "auto"  # pin SDPA's backend
    torch_threads: PositiveInt = 1  # intra-op threads per CPU worker

    @model_validator(mode="after")
    def _price(self) -> ResourcesConfig:
        need(self.accelerator in PRICE_PER_HOUR or self.price_per_hour is not None, "accelerator",
             self.accelerator, f"known: {', '.join(PRICE_PER_HOUR)}; or set resources.price_per_hour")
        need(not (self.use_gpu and self.accelerator == "CPU"), "accelerator", self.accelerator,
             "use_gpu=true needs a GPU accelerator name (H100, A100, ...)")
        return self

    @property
    def hourly_price(self) -> float:
        return self.price_per_hour if self.price_per_hour is not None else PRICE_PER_HOUR[self.accelerator]

    @property
    def billed_devices(self) -> int:
        return max(self.num_workers, 1)

    @property
    def peak_flops(self) -> float | None:
        return PEAK_FLOPS.get(self.accelerator) if self.use_gpu else None


class TrackingConfig(StrictModel):
    """MLflow and checkpoint settings."""

    mlflow_uri: str | None = None  # None = $MLFLOW_TRACKING_URI or sqlite:///<root>/mlflow.db (one machine)
    experiment: str = "microdit"
    storage_path: str | None = None  # Ray Train runs: a path or URI; None = <root>/runs ($MICRODIT_ROOT)
    log_every_steps: PositiveInt = 10
    checkpoint_every_steps: PositiveInt = 100
    keep_checkpoints: PositiveInt = 2
    max_failures: Annotated[int, Field(ge=-1)] = 2  # -1 = retry forever
    sample_grid: bool = True  # sample grid at phase ends
    sample_steps: PositiveInt = OFFICIAL_SAMPLE_STEPS
    sample_guidance: Annotated[float, Field(ge=1.0)] = OFFICIAL_GUIDANCE


class EvalConfig(StrictModel):
    """In-training evaluation: a small FID (and a sample grid) at phase ends, every N images and at
    milestones of the run's spend (``at_dollars``, ``at_fraction``: the points of an anytime curve,
    and the rungs a sweep's ``cost_asha`` scheduler decides on)."""

    reference: str = "demo_real_heldout"  # a prepared set (its held-out real images and captions)
    num_samples: Annotated[int, Field(ge=2)] = 128  # the metric is named after it: fid_128, fid_1k...
    steps: PositiveInt = OFFICIAL_SAMPLE_STEPS
    guidance: Annotated[float, Field(ge=1.0)] = OFFICIAL_GUIDANCE  # 1 = no guidance
    every_images: PositiveInt | None = None  # also evaluate every N images seen (None: phase ends only)
    at_phase_end: bool = True
    clip_model: str | None = None
    at_dollars: list[PositiveFloat] = Field(default_factory=list)  # once the run has cost each amount
    # fractions of the run budget (max_dollars, else max_images): [0.25, 0.5] = a quarter and half-way
    at_fraction: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(default_factory=list)
    seed: NonNegativeInt | None = None  # the sampling noise (None: the recipe's seed)


class OptimizerConfig(StrictModel):
    """AdamW settings shared by every phase (the LR is per phase)."""

    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.1
    # all: decay every parameter (the official run: its exemption filter matches nothing);
    # matrices: exempt 1-D parameters (norm scales, biases), the common DiT/GPT practice
    weight_decay_on: Literal["all", "matrices"] = "all"
    moe_lr_scale: PositiveFloat = 1.0  # the official code meant 0.5 for experts but its filter matched nothing


def deviation_from_official(steps: int, guidance: float) -> str | None:
    """A one-line note when a sampling protocol differs from the official 30 steps / guidance 5."""
    if steps == OFFICIAL_SAMPLE_STEPS and guidance == OFFICIAL_GUIDANCE:
        return None
    return f"{steps} Heun steps, guidance {guidance:g} (official monitoring: {OFFICIAL_SAMPLE_STEPS} / {OFFICIAL_GUIDANCE:g})"


class RecipeConfig(StrictModel):
    """A whole training run."""

    name: str
    model: dict[str, Any]  # {size: NAME, <any ModelConfig field>: value}
    data: DataMixConfig
    phases: list[PhaseConfig]
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    evaluation: EvalConfig | None = None  # None: no in-training FID (sample grids still at phase ends)
    seed: NonNegativeInt = 0
    vae_factor: Literal[1, 2, 4, 8, 16] = 8  # pixels per latent: 8 for SD VAEs, 1 for the `pixels` demo encoder
    caption_len: PositiveInt = 77  # tokens per caption (for FLOPs before the data is read)
    max_dollars: PositiveFloat | None = None  # stop the whole run once it has cost this much
    max_images: PositiveInt | None = None  # stop the whole run after this many images (sweep trial budgets)
    debug: dict[str, Any] = Field(default_factory=dict)  # DEBUG_KEYS (tests)

    @model_validator(mode="after")
    def _consistent(self) -> RecipeConfig:
        need(self.name.replace("-", "").replace("_", "").isalnum(), "name", self.name,
             "must be letters, digits, - or _ (it names the Ray run and the MLflow run)")
        need(bool(self.phases), "phases", self.phases, "need at least one phase")
        need("size" in self.model, "model.size", None, "missing; name a registered size, e.g. MicroDiT_Nano_2")
        model = self.architecture()
        if self.resources.strategy == "fsdp":
            need(not any(p.ema_half_life_images for p in self.phases) and self.evaluation is None,
                 "resources.strategy", "fsdp", "EMA and in-training evaluation need full weights on rank 0 and are "
                 "not supported with fsdp yet; use ddp (XL's full state is ~19 GB per GPU and fits an H100)")
        need(self.evaluation is None or not self.evaluation.at_fraction or bool(self.max_dollars or self.max_images),
             "evaluation.at_fraction", self.evaluation.at_fraction if self.evaluation else None,
             "fractions of the run budget need max_dollars or max_images; or give evaluation.at_dollars")
        unknown = sorted(set(self.debug) - set(DEBUG_KEYS))
        need(not unknown, "debug", unknown, f"allowed keys: {', '.join(DEBUG_KEYS)}")
        workers = max(self.resources.num_workers, 1)
        for i, phase in enumerate(self.phases):
            micro = phase.per_worker_micro_batch(workers)
            need(micro >= 1 and phase.batch_size % (micro * workers) == 0, f"phases[{i}].batch_size",
                 phase.batch_size, f"must be a multiple of micro_batch x num_workers = {micro} x {workers}")
            need(phase.resolution % (self.vae_factor * model.patch_size) == 0, f"phases[{i}].resolution",
                 phase.resolution, f"must be divisible by vae_factor x patch_size = {self.vae_factor * model.patch_size}")
            masking = phase.masking or model.masking
            need(masking != "none" or phase.mask_ratio == 0, f"phases[{i}].mask_ratio", phase.mask_ratio,
                 f"must be 0 when the masking strategy is 'none' (phases[{i}].masking / model.masking)")
            need(masking != "deferred" or model.use_mixer, f"phases[{i}].masking", masking,
                 "'deferred' needs a patch-mixer (model.mixer_depth > 0); use naive or none")
            try:
                self.phase_data(i)
            except ConfigError as err:
                raise FieldError(f"phases[{i}].data", phase.data.to_dict() if phase.data else None, str(err)) from None
        return self

    def milestones(self) -> list[tuple[str, float]]:
        """The evaluation milestones as (unit, target), unit ``dollars`` (the run's spend) or ``images``
        (seen): ``at_dollars``, then ``at_fraction`` of ``max_dollars`` (else of ``max_images``), sorted."""
        if self.evaluation is None:
            return []
        points = {("dollars", float(d)) for d in self.evaluation.at_dollars}
        for fraction in self.evaluation.at_fraction:
            points.add(("dollars", fraction * self.max_dollars) if self.max_dollars is not None
                       else ("images", float(math.ceil(fraction * (self.max_images or 0)))))
        return sorted(points)

    def architecture(self, **extra: Any) -> ModelConfig:
        """The ModelConfig of ``model`` (a registered size plus field overrides, plus ``extra``)."""
        from microdit.model.sizes import model_config

        spec = dict(self.model)
        size = spec.pop("size")  # present: the recipe's validator requires it
        spec.update(extra)
        return model_config(size, **spec)

    def phase_data(self, index: int) -> DataMixConfig:
        """The data mix phase ``index`` streams: the recipe's, with the phase's override applied."""
        override = self.phases[index].data
        if override is None:
            return self.data
        changes = override.model_dump(exclude_unset=True)  # an explicit null clears a set
        return DataMixConfig.from_dict({**self.data.to_dict(), **changes})

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> RecipeConfig:
        return validate_config(cls, data, where)


def load_recipe_dict(ref: str | dict[str, Any], overrides: list[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    if isinstance(ref, dict):
        data = ref
    else:
        path = resolve(ref, RECIPES)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return apply_overrides(data, overrides or {})


def load_recipe(ref: str | dict[str, Any], overrides: list[str] | dict[str, Any] | None = None) -> RecipeConfig:
    return RecipeConfig.from_dict(load_recipe_dict(ref, overrides))
