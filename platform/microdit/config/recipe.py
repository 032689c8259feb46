"""The training recipe: model, data mix, phases, resources, price, tracking (one YAML file).

A recipe is a list of phases (SPEC §4: resolution, mask ratio, length, LR schedule, clip, EMA,
noise distribution, batch) plus everything a run needs. ``load_recipe`` reads YAML, applies
``--set`` overrides and validates every field with a ``ConfigError`` naming it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from microdit.config.data import DataMixConfig
from microdit.config.mapping import from_mapping
from microdit.config.model import MASKING_STRATEGIES, ModelConfig
from microdit.config.overrides import apply_overrides
from microdit.errors import ConfigError

# $ per accelerator-hour. H100: the paper's $1,890 over 499 H100-hours. CPU: one worker's share
# of a small cloud VM. Override per run with resources.price_per_hour.
PRICE_PER_HOUR = {"H100": 3.79, "H200": 4.50, "A100": 1.79, "L4": 0.80, "CPU": 0.05}
# Dense bf16 peak FLOP/s per device for MFU; CPU has no meaningful peak (log FLOP/s instead).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}
# Test hooks: a one-time failure on the last rank, a NaN loss, and a JSONL file per rank of the
# row ids each micro-batch consumed (to check resume exactness: no duplicate, no gap).
DEBUG_KEYS = ("fail_at_step", "nan_at_step", "record_ids_dir")
RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"


def _check(cond: bool, where: str, value: Any, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}={value!r}: {msg}")


_build = from_mapping  # (cls, where, data)


@dataclass
class PhaseConfig:
    """One training phase. Length: exactly one of steps / images / dollars."""

    name: str = "phase"
    resolution: int = 256  # pixels; the latent column latent_<resolution> of the data sets
    mask_ratio: float = 0.0
    masking: str | None = None  # none | naive | deferred; None = the model's strategy
    steps: int | None = None
    images: int | None = None
    dollars: float | None = None
    batch_size: int = 2048  # global batch = micro_batch x workers x accumulation
    micro_batch: int | None = None  # per-worker batch per forward; None = batch_size / workers
    lr: float = 8e-5
    lr_schedule: str = "constant"  # constant | cosine (to lr_floor x lr)
    warmup_steps: int = 0
    lr_floor: float = 0.33
    grad_clip: float = 0.25  # global-norm clip; 0 disables
    ema_half_life_images: float | None = None  # None = no EMA in this phase
    ema_start_images: int = 0  # images seen within the phase before EMA starts tracking
    p_mean: float = -0.6  # ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    caption_dropout: float = 0.1
    _where: str = field(default="phases[?]", repr=False)

    def __post_init__(self) -> None:
        w = self._where
        _check(isinstance(self.resolution, int) and self.resolution >= 8, f"{w}.resolution", self.resolution,
               "must be an integer pixel size >= 8")
        _check(0.0 <= self.mask_ratio < 1.0, f"{w}.mask_ratio", self.mask_ratio, "must be in [0, 1)")
        _check(self.masking is None or self.masking in MASKING_STRATEGIES, f"{w}.masking", self.masking,
               f"allowed: {', '.join(MASKING_STRATEGIES)} or null")
        lengths = [k for k in ("steps", "images", "dollars") if getattr(self, k) is not None]
        _check(len(lengths) == 1, f"{w}.steps/images/dollars", lengths, "give exactly one phase length")
        for key in lengths:
            _check(getattr(self, key) > 0, f"{w}.{key}", getattr(self, key), "must be > 0")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1, f"{w}.batch_size", self.batch_size,
               "must be an integer >= 1")
        _check(self.micro_batch is None or (isinstance(self.micro_batch, int) and self.micro_batch >= 1),
               f"{w}.micro_batch", self.micro_batch, "must be an integer >= 1 or null")
        _check(self.lr > 0, f"{w}.lr", self.lr, "must be > 0")
        _check(self.lr_schedule in ("constant", "cosine"), f"{w}.lr_schedule", self.lr_schedule,
               "allowed: constant, cosine")
        _check(self.warmup_steps >= 0, f"{w}.warmup_steps", self.warmup_steps, "must be >= 0")
        _check(0.0 <= self.lr_floor <= 1.0, f"{w}.lr_floor", self.lr_floor, "must be in [0, 1]")
        _check(self.grad_clip >= 0, f"{w}.grad_clip", self.grad_clip, "must be >= 0 (0 disables)")
        _check(self.ema_half_life_images is None or self.ema_half_life_images > 0, f"{w}.ema_half_life_images",
               self.ema_half_life_images, "must be > 0 or null")
        _check(self.ema_start_images >= 0, f"{w}.ema_start_images", self.ema_start_images, "must be >= 0")
        _check(self.p_std > 0, f"{w}.p_std", self.p_std, "must be > 0")
        _check(0.0 <= self.caption_dropout < 1.0, f"{w}.caption_dropout", self.caption_dropout, "must be in [0, 1)")

    def latent_size(self, vae_factor: int) -> int:
        return self.resolution // vae_factor

    def accumulation(self, num_workers: int) -> int:
        micro = self.micro_batch or self.batch_size // max(num_workers, 1)
        return self.batch_size // (micro * max(num_workers, 1))

    def per_worker_micro_batch(self, num_workers: int) -> int:
        return self.micro_batch or self.batch_size // max(num_workers, 1)

    def ema_decay_per_step(self) -> float | None:
        """Per-step decay from the half-life in images: decay^(half_life / batch) = 1/2."""
        if self.ema_half_life_images is None:
            return None
        return 0.5 ** (self.batch_size / self.ema_half_life_images)


@dataclass
class ResourcesConfig:
    """Where and how a run trains, and what it costs per accelerator-hour."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # small on CPU boxes: Ray Data read tasks need the rest
    gpus_per_worker: float = 1.0
    accelerator: str = "CPU"  # key into the price / peak tables
    price_per_hour: float | None = None  # $ per accelerator-hour; None = PRICE_PER_HOUR[accelerator]
    strategy: str = "ddp"  # ddp | fsdp (shard grads and optimizer state, for XL)
    compile: bool = False
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32
    torch_threads: int = 1  # intra-op threads per CPU worker

    def __post_init__(self) -> None:
        _check(isinstance(self.num_workers, int) and self.num_workers >= 0, "resources.num_workers",
               self.num_workers, "must be an integer >= 0 (0 runs the loop in the driver process)")
        _check(self.cpus_per_worker > 0, "resources.cpus_per_worker", self.cpus_per_worker, "must be > 0")
        _check(self.accelerator in PRICE_PER_HOUR or self.price_per_hour is not None, "resources.accelerator",
               self.accelerator, f"known: {', '.join(PRICE_PER_HOUR)}; or set resources.price_per_hour")
        _check(self.price_per_hour is None or self.price_per_hour >= 0, "resources.price_per_hour",
               self.price_per_hour, "must be >= 0")
        _check(self.strategy in ("ddp", "fsdp"), "resources.strategy", self.strategy, "allowed: ddp, fsdp")
        _check(self.precision in ("auto", "bf16", "fp32"), "resources.precision", self.precision,
               "allowed: auto, bf16, fp32")
        _check(not (self.use_gpu and self.accelerator == "CPU"), "resources.accelerator", self.accelerator,
               "use_gpu=true needs a GPU accelerator name (H100, A100, ...)")

    @property
    def hourly_price(self) -> float:
        return self.price_per_hour if self.price_per_hour is not None else PRICE_PER_HOUR[self.accelerator]

    @property
    def billed_devices(self) -> int:
        return max(self.num_workers, 1)

    @property
    def peak_flops(self) -> float | None:
        return PEAK_FLOPS.get(self.accelerator) if self.use_gpu else None


@dataclass
class TrackingConfig:
    """MLflow and checkpoint settings."""

    mlflow_uri: str | None = None  # None = $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the cwd
    experiment: str = "microdit"
    storage_path: str | None = None  # Ray Train storage; None = ./microdit_runs
    log_every_steps: int = 10
    checkpoint_every_steps: int = 100
    keep_checkpoints: int = 2
    max_failures: int = 2
    sample_grid: bool = True  # sample grid at phase ends
    sample_steps: int = 30
    sample_guidance: float = 5.0

    def __post_init__(self) -> None:
        for name in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "sample_steps"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"tracking.{name}",
                   getattr(self, name), "must be an integer >= 1")
        _check(self.max_failures >= -1, "tracking.max_failures", self.max_failures, "must be >= -1 (-1 = forever)")


@dataclass
class EvalConfig:
    """In-training evaluation: a small FID (and a sample grid) at phase ends and every N images."""

    reference: str = "demo_real_heldout"  # a prepared set (its held-out real images and captions)
    num_samples: int = 128  # the metric is named after it: fid_128, fid_1k...
    steps: int = 18
    guidance: float = 3.0
    every_images: int | None = None  # also evaluate every N images seen (None: phase ends only)
    at_phase_end: bool = True
    clip_model: str | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.num_samples, int) and self.num_samples >= 2, "evaluation.num_samples",
               self.num_samples, "must be an integer >= 2")
        _check(isinstance(self.steps, int) and self.steps >= 1, "evaluation.steps", self.steps, "must be >= 1")
        _check(self.guidance >= 1.0, "evaluation.guidance", self.guidance, "must be >= 1 (1 = no guidance)")
        _check(self.every_images is None or self.every_images > 0, "evaluation.every_images", self.every_images,
               "must be > 0 or null")


@dataclass
class OptimizerConfig:
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.1
    moe_lr_scale: float = 1.0  # the official code meant 0.5 for experts but its filter matched nothing

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optimizer.betas", self.betas,
               "must be two numbers in [0, 1)")
        _check(self.eps > 0, "optimizer.eps", self.eps, "must be > 0")
        _check(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, "must be >= 0")
        _check(self.moe_lr_scale > 0, "optimizer.moe_lr_scale", self.moe_lr_scale, "must be > 0")


@dataclass
class RecipeConfig:
    """A whole training run."""

    name: str
    model: dict[str, Any]  # {size: NAME, <any ModelConfig field>: value}
    data: DataMixConfig
    phases: list[PhaseConfig]
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evaluation: EvalConfig | None = None  # None: no in-training FID (sample grids still at phase ends)
    seed: int = 0
    vae_factor: int = 8  # pixels per latent: 8 for SD VAEs, 1 for the `pixels` demo encoder
    caption_len: int = 77  # tokens per caption (for FLOPs before the data is read)
    max_dollars: float | None = None  # stop the whole run once it has cost this much
    max_images: int | None = None  # stop the whole run after this many images (sweep trial budgets)
    debug: dict[str, Any] = field(default_factory=dict)  # DEBUG_KEYS (tests)

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and self.name.replace("-", "").replace("_", "").isalnum(), "name",
               self.name, "must be letters, digits, - or _ (it names the Ray run and the MLflow run)")
        _check(bool(self.phases), "phases", self.phases, "need at least one phase")
        _check(self.max_dollars is None or self.max_dollars > 0, "max_dollars", self.max_dollars, "must be > 0 or null")
        _check(self.max_images is None or self.max_images > 0, "max_images", self.max_images, "must be > 0 or null")
        _check(self.vae_factor in (1, 2, 4, 8, 16), "vae_factor", self.vae_factor, "allowed: 1, 2, 4, 8, 16")
        if self.resources.strategy == "fsdp":
            _check(not any(p.ema_half_life_images for p in self.phases) and self.evaluation is None,
                   "resources.strategy", "fsdp", "EMA and in-training evaluation need full weights on rank 0 and are "
                   "not supported with fsdp yet; use ddp (XL's full state is ~19 GB per GPU and fits an H100)")
        unknown = sorted(set(self.debug) - set(DEBUG_KEYS))
        _check(not unknown, "debug", unknown, f"allowed keys: {', '.join(DEBUG_KEYS)}")
        workers = max(self.resources.num_workers, 1)
        for i, phase in enumerate(self.phases):
            micro = phase.per_worker_micro_batch(workers)
            _check(micro >= 1 and phase.batch_size % (micro * workers) == 0, f"phases[{i}].batch_size",
                   phase.batch_size, f"must be a multiple of micro_batch x num_workers = {micro} x {workers}")
            _check(phase.resolution % (self.vae_factor * self.model_config().patch_size) == 0,
                   f"phases[{i}].resolution", phase.resolution,
                   f"must be divisible by vae_factor x patch_size = {self.vae_factor * self.model_config().patch_size}")
            masking = phase.masking or self.model_config().masking
            _check(masking != "none" or phase.mask_ratio == 0, f"phases[{i}].mask_ratio", phase.mask_ratio,
                   "must be 0 when the masking strategy is 'none'")
            if phase.masking is not None:
                self.model_config(masking=phase.masking)  # validates strategy vs mixer

    def model_config(self, **extra: Any) -> ModelConfig:
        from microdit.model.sizes import model_config

        spec = dict(self.model)
        if "size" not in spec:
            raise ConfigError("model.size: missing; name a registered size, e.g. MicroDiT_Nano_2")
        size = spec.pop("size")
        spec.update(extra)
        return model_config(size, **spec)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for phase in data["phases"]:
            phase.pop("_where", None)
        data["optimizer"]["betas"] = list(self.optimizer.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecipeConfig:
        if not isinstance(data, dict):
            raise ConfigError("recipe: expected a mapping at the top level")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"recipe: unknown field(s) {unknown}; allowed: {sorted(known)}")
        for required in ("name", "model", "data", "phases"):
            if required not in data:
                raise ConfigError(f"recipe: missing field {required!r}")
        if not isinstance(data["phases"], list):
            raise ConfigError("phases: expected a list of phases")
        if not isinstance(data["model"], dict):
            raise ConfigError("model: expected a mapping with at least `size`")
        return cls(
            name=data["name"],
            model=dict(data["model"]),
            data=DataMixConfig.from_dict(data["data"]),
            phases=[_build(PhaseConfig, f"phases[{i}]", p) for i, p in enumerate(data["phases"])],
            resources=_build(ResourcesConfig, "resources", data.get("resources") or {}),
            optimizer=_build(OptimizerConfig, "optimizer", data.get("optimizer") or {}),
            tracking=_build(TrackingConfig, "tracking", data.get("tracking") or {}),
            evaluation=_build(EvalConfig, "evaluation", data["evaluation"]) if data.get("evaluation") else None,
            seed=data.get("seed", 0),
            vae_factor=data.get("vae_factor", 8),
            caption_len=data.get("caption_len", 77),
            max_dollars=data.get("max_dollars"),
            max_images=data.get("max_images"),
            debug=dict(data.get("debug") or {}),
        )


def resolve_recipe_path(ref: str) -> Path:
    """A YAML path, or the name of a shipped recipe (``demo``, ``paper``)."""
    path = Path(ref)
    if path.exists():
        return path
    shipped = RECIPE_DIR / f"{ref}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
    raise ConfigError(f"recipe {ref!r}: no such file, and not a shipped recipe ({', '.join(names)})")


def load_recipe_dict(ref: str | dict[str, Any], overrides: list[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    if isinstance(ref, dict):
        data = ref
    else:
        path = resolve_recipe_path(ref)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return apply_overrides(data, overrides or {})


def load_recipe(ref: str | dict[str, Any], overrides: list[str] | dict[str, Any] | None = None) -> RecipeConfig:
    return RecipeConfig.from_dict(load_recipe_dict(ref, overrides))


def phase_steps_estimate(phase: PhaseConfig, images_per_second: float | None = None,
                         dollars_per_second: float | None = None) -> int | None:
    """Steps a phase will take when its length is in images (exact) or dollars (needs a speed)."""
    if phase.steps is not None:
        return phase.steps
    if phase.images is not None:
        return math.ceil(phase.images / phase.batch_size)
    if images_per_second and dollars_per_second:
        return math.ceil(phase.dollars / dollars_per_second * images_per_second / phase.batch_size)
    return None
