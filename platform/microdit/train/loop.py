"""``train_loop_per_worker``: what every Ray Train worker runs (SPEC §2, §4).

Phase by phase: stream the exact real/synthetic mix, EDM loss with the phase's noise
distribution and mask ratio, gradient accumulation to the global batch, AdamW with warmup +
cosine/constant LR, global-norm clipping, EMA by half-life in images, cost accounting, logging
(rank 0, asynchronous), checkpoints every N steps and at phase ends. Randomness (noise levels,
noise, masks, caption dropout) is drawn from a generator seeded by (seed, rank, step), so a
resumed run draws exactly what an uninterrupted one would.

Host syncs are kept to one per step: one all-gather of (loss, phase spend, over-budget) read back
once (``parallel.step_sync``), which gives the NaN check, the dollar-phase LR and the budget stop
of the next step alike on every rank; other metrics stay on the device until a log step. Input
batches are built ahead on a background thread in fp16 (``train.feed``), so a step does not wait
for its data; the wait that remains is logged as ``data_wait_s`` per step.

GPU memory follows the recipe phase by phase: the fp32 EMA copy exists only while the current
phase runs an EMA (``phases.ema_held``: the official run holds none in phases 1-2, and the memory
model that sizes ``paper.yaml`` counts exactly that).

``ray.train.report`` is a barrier that Ray 2.60 drains about every 2 s, so metric-only reports are
sent at most every ``REPORT_EVERY_S`` (all ranks agree); MLflow gets every log step through the
rank-0 background logger.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch

from microdit.cluster import worker_package_location
from microdit.config.model import ModelConfig
from microdit.config.recipe import PhaseConfig, RecipeConfig
from microdit.diffusion import EDMDenoiser, caption_dropout, edm_loss
from microdit.model import MicroDiT
from microdit.model.flops import train_flops_per_image
from microdit.tracking import AsyncLogger
from microdit.train.cost import CostMeter
from microdit.train.debug_hooks import inject_failures, record_ids
from microdit.train.ema import EMA
from microdit.train.evaluation import evaluate_and_log
from microdit.train.feed import open_stream
from microdit.train.milestones import due_milestones, milestone_position, milestone_readings
from microdit.train.optim import step_generator
from microdit.train.parallel import (
    all_gather_objects,
    all_reduce_max,
    any_rank,
    full_model_state,
    full_state_dicts,
    gradient_sync,
    load_full_state_dicts,
    prepare_model_and_optimizer,
    step_sync,
    uses_bf16,
)
from microdit.train.phases import (
    data_position_for_phase,
    ema_held,
    phase_start_actions,
    produced_weights_source,
)
from microdit.train.schedule import learning_rate
from microdit.train.state import WEIGHTS_FILE, Progress, load_state, restore_rng, save_state, save_weights

REPORT_EVERY_S = 2.0


class StopTraining(Exception):
    """Raised inside the loop to end it cleanly on every rank (non-finite loss)."""


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    from microdit.console import configure_worker

    configure_worker()
    return WorkerRun(config).run()


class WorkerRun:
    """One worker's whole run: built from the Train config, restored from the latest checkpoint."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.recipe = recipe = RecipeConfig.from_dict(config["recipe"])
        self.model_config = ModelConfig.from_dict(config["model_config"])
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        try:
            self.device = ray.train.torch.get_device()
        except Exception:  # in-process (num_workers=0) runs have no Train device assignment
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(recipe.resources.torch_threads)
        res = recipe.resources
        self.use_bf16 = uses_bf16(res, self.device)

        torch.manual_seed(recipe.seed)  # identical initial weights on every rank
        self.model = MicroDiT(self.model_config).to(self.device)
        self.model.set_low_precision_norms(res.low_precision_norms)
        self.model.activation_checkpointing = res.activation_checkpointing
        self.model.attention_kernel = res.attention_kernel  # pinned in the forward and in any recompute
        self.ema: EMA | None = None  # created when a phase that runs one starts (hold_ema)
        self.cost = CostMeter(res.hourly_price, res.billed_devices, res.peak_flops)
        self.progress = Progress()
        self.milestones = recipe.milestones()  # (unit, target): evaluate when the run passes each
        self.run_dollars = 0.0  # the largest run spend over ranks, from the last step's sync
        self.train_model, self.optimizer = prepare_model_and_optimizer(self.model, recipe, self.device, self.world)
        self._restore()
        self.denoiser = EDMDenoiser(self.train_model)
        self.logger = AsyncLogger(config["mlflow_uri"], config["mlflow_run_id"]) \
            if self.rank == 0 and config.get("mlflow_run_id") else None
        if self.logger and self.restored_step is not None:  # each resumed attempt says where it picked up
            self.logger.metrics({"resumed_from_step": float(self.restored_step)}, self.restored_step)
        self.first_step_wall: float | None = None  # time.time() when this attempt finished its first step
        self.last_report = time.perf_counter()
        # A run restored from its final checkpoint already holds its final weights there.
        self.final_saved = self.progress.finished

    def _restore(self) -> None:
        self.restored_step: int | None = None
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as directory:
            state = load_state(directory)
        load_full_state_dicts(self.model, self.optimizer, state["model"], state["optimizer"], self.world)
        self.progress = Progress(**state["progress"])
        if state["ema"] is not None and ema_held(self.recipe, self.progress.phase):
            self.hold_ema(self.progress.phase)
            self.ema.load_state_dict(state["ema"])
        self.cost.load_state_dict(state["cost"])
        restore_rng(state["rng"])
        self.restored_step = self.progress.global_step

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        stop_reason = None
        try:
            self.cost.start()
            while not self.progress.finished and self.progress.phase < len(self.recipe.phases):
                stop_reason = self.run_phase(self.recipe.phases[self.progress.phase])
                if stop_reason:
                    break
        except StopTraining as err:
            stop_reason = str(err)
        finally:
            errors = self.logger.close() if self.logger else []
        p = self.progress
        if p.finished and not self.final_saved:  # stopped by a run budget between two checkpoints
            self.checkpoint(None)
        return {"first_step_wall": self.first_step_wall, "global_step": p.global_step,
                "images_seen": p.images_seen, "cost_usd": self.cost.dollars, "gpu_hours": self.cost.device_hours,
                "phase": p.phase, "finished": p.finished, "stop_reason": stop_reason, "logging_errors": errors,
                "worker_package": worker_package_location()}

    def run_phase(self, phase: PhaseConfig) -> str | None:
        recipe, progress = self.recipe, self.progress
        index = progress.phase
        total_steps = phase.total_steps()
        self.hold_ema(index)
        actions = phase_start_actions(recipe, index, progress.phase_step)
        if actions.reset_ema_updates and self.ema is not None:
            self.ema.updates = 0  # the weights this phase produces are its own EMA, or the live weights
        if actions.reset_optimizer_state:
            self.optimizer.state.clear()  # weights only: fresh AdamW moments and step counter
        latent = phase.resolution // recipe.vae_factor
        grid = latent // self.model_config.patch_size
        self.model.use_grid(grid, grid)  # the phase's position table, as a buffer, before any compiled call
        kept_tokens = self.model_config.kept_tokens(latent, phase.mask_ratio)
        flops_per_image = train_flops_per_image(self.model_config, latent, phase.mask_ratio, self.config["caption_len"])
        position = data_position_for_phase(recipe, index, progress.phase_step, progress.data_positions, self.rank)
        record_ids = recipe.debug.get("record_ids_dir")
        feed = open_stream(recipe.phase_data(index), phase, self.rank, self.world,
                           phase.per_worker_micro_batch(self.world), position, with_ids=bool(record_ids),
                           device=self.device)
        window: dict[str, Any] = {"count": 0}
        # Once per phase, every rank gets the largest phase spend (the LR of a dollar phase depends on
        # it, so all ranks must agree) and whether any rank is over a budget; each step's sync then
        # brings the same two numbers for the next step.
        spent, over = all_reduce_max([progress.phase_dollars, float(self.over_budget())], self.device, self.world)
        budget_reached = over > 0
        while total_steps is None or progress.phase_step < total_steps:
            if (phase.dollars is not None and spent >= phase.dollars) or budget_reached:
                break
            inject_failures(self.recipe.debug, progress.global_step, self.rank, self.world, self.config)
            fraction = spent / phase.dollars if phase.dollars is not None else None
            images = phase.batch_size
            step_metrics, spent, budget_reached = self.train_step(
                phase, feed, total_steps, fraction, images, kept_tokens * images, flops_per_image * images)
            progress.global_step += 1
            progress.phase_step += 1
            progress.phase_images += images
            progress.images_seen += images
            self.update_ema(phase)
            step_metrics["data_wait_s"] = feed.take_wait_seconds()
            for key, value in step_metrics.items():
                window[key] = window.get(key, 0.0) + value
            window["count"] += 1

            phase_done = total_steps is not None and progress.phase_step >= total_steps
            checkpoint_due = progress.global_step % recipe.tracking.checkpoint_every_steps == 0 or phase_done
            if progress.global_step % recipe.tracking.log_every_steps == 0 or phase_done:
                self.log(window, report=not checkpoint_due)
                window = {"count": 0}
            self.maybe_evaluate(phase_done, images)
            if checkpoint_due:
                if phase_done:
                    self.end_phase()
                self.checkpoint(feed)
            if phase_done:
                break
        feed.close()
        if phase.steps is None and phase.images is None:  # a dollar-length phase ends here
            self.end_phase()
            self.checkpoint(feed)
        if budget_reached or all_reduce_max([float(self.over_budget())], self.device, self.world)[0] > 0:
            progress.finished = True  # every rank decides the same (reduced), so all take the final checkpoint
            return "run budget reached (max_dollars / max_images)"
        return None

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self, phase: PhaseConfig, feed, total_steps: int | None, spent_fraction: float | None,
                   images: int, tokens: int, flops: float) -> tuple[dict[str, Any], float, bool]:
        """Accumulate micro-batches, account the step, sync once, clip, step.

        Returns (metrics: device tensors and the synced mean loss, the largest phase spend over
        ranks, whether any rank is over a run budget): the next step's stop and LR decisions."""
        progress, debug = self.progress, self.recipe.debug
        lr = learning_rate(phase, progress.phase_step, total_steps, spent_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        accumulation = phase.accumulation(self.world)
        loss_sum = torch.zeros((), device=self.device)
        router: dict[str, torch.Tensor] = {}
        for m in range(accumulation):
            batch = next(feed)
            if debug.get("record_ids_dir"):
                record_ids(debug["record_ids_dir"], self.rank, progress, m, batch["id"])
            x0, y = feed.to_device(batch)  # (B, C, h, w), (B, L, Dy) fp32 on the device
            generator = step_generator(self.recipe.seed, self.rank, progress.global_step, m, self.device)
            y = caption_dropout(y, phase.caption_dropout, generator)
            with gradient_sync(self.train_model, self.model, enabled=m == accumulation - 1), \
                    torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                out = edm_loss(self.denoiser, x0, y, p_mean=phase.p_mean, p_std=phase.p_std,
                               mask_ratio=phase.mask_ratio, masking=phase.masking, generator=generator)
                loss = out.loss * float("nan") if debug.get("nan_at_step") == progress.global_step else out.loss
                (loss / accumulation).backward()
            loss_sum += loss.detach().float() / accumulation
            for key, value in out.output.router_stats.items():
                router[key] = router.get(key, 0.0) + value / accumulation

        before = self.cost.dollars
        self.cost.step(images, tokens, flops)
        progress.phase_dollars += self.cost.dollars - before
        mean_loss, spent, over, self.run_dollars = step_sync(  # the one host sync per step
            loss_sum, progress.phase_dollars, self.over_budget(pending_images=images), self.device, self.world,
            run_dollars=self.cost.dollars)
        if not math.isfinite(mean_loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise StopTraining(f"non-finite loss {mean_loss} at step {progress.global_step} "
                               f"(phase {progress.phase} '{phase.name}', phase step {progress.phase_step})")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), phase.grad_clip or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.first_step_wall is None:
            self.first_step_wall = time.time()
        return {"loss": mean_loss, "grad_norm": grad_norm.detach(), **router}, spent, over

    def hold_ema(self, index: int) -> None:
        """Hold the fp32 EMA copy exactly while phase ``index`` runs one (``phases.ema_held``): created
        from the current weights when such a phase starts, freed when a phase without one starts."""
        if ema_held(self.recipe, index):
            if self.ema is None:
                self.ema = EMA(self.model)
        elif self.ema is not None:
            self.ema = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # hand the copy's blocks back before the phase's own peak

    def update_ema(self, phase: PhaseConfig) -> None:
        decay = phase.ema_decay_per_step()
        if self.ema is None or decay is None or self.progress.phase_images <= phase.ema_start_images:
            return
        if not self.progress.phase_ema_started:  # EMA starts from the current weights
            self.ema.reset(self.model)
            self.progress.phase_ema_started = True
        self.ema.update(self.model, decay)

    # ------------------------------------------------------------------ logging, evaluation, checkpoints
    def log(self, window: dict[str, Any], report: bool) -> None:
        count = window.pop("count")
        metrics = {k: float(v) / count for k, v in window.items()}  # device values sync here, once per log
        metrics.update(self.cost.window())
        group = self.optimizer.param_groups[0]
        metrics.update({"lr": group["lr"] / group["lr_scale"], "phase": float(self.progress.phase),
                        "step": float(self.progress.global_step)})
        if self.logger:
            self.logger.metrics(metrics, self.progress.global_step)
        if report and any_rank(time.perf_counter() - self.last_report >= REPORT_EVERY_S, self.device, self.world):
            ray.train.report(metrics)
            self.last_report = time.perf_counter()

    def maybe_evaluate(self, phase_done: bool, images: int) -> None:
        evaluation, seen = self.recipe.evaluation, self.progress.images_seen
        every = evaluation.every_images if evaluation else None
        crossed = every is not None and seen // every != (seen - images) // every
        at_end = phase_done and (evaluation is None or evaluation.at_phase_end)
        due = due_milestones(self.milestones, self.progress.milestones_done, self.run_dollars, seen)
        if not (crossed or at_end or due):
            return
        weights = self.produced_weights()  # a collective under FSDP: every rank takes part
        # FID: every rank evaluates its share (merged exactly); grid only: rank 0 alone
        tag = "milestone" if due else f"phase{self.progress.phase}" if phase_done else "interval"
        metrics = evaluate_and_log(self.recipe, self.model_config, weights, self.device, self.logger,
                                   self.progress.global_step, tag, rank=self.rank, world=self.world)
        if due:
            self.report_milestones(due, metrics)

    def report_milestones(self, due: list[int], metrics: dict[str, float]) -> None:
        """Log the milestone reading (flushed: a trial stopped right after keeps it) and report it to
        Tune on every rank (``train.milestones``); the evaluation is billed before the spend is read."""
        self.cost.tick()
        readings = milestone_readings(self.milestones, due, metrics, self.cost.dollars, self.progress.images_seen,
                                      self.cost.dollars_per_second())
        self.progress.milestones_done = sorted({*self.progress.milestones_done, *due})
        if self.logger:
            self.logger.metrics(milestone_position(readings[-1]), self.progress.global_step)
            self.logger.flush()
        for reading in readings:
            ray.train.report(reading)
        self.last_report = time.perf_counter()

    def checkpoint(self, stream) -> None:
        """Gather every rank's stream position, then rank 0 writes and reports the checkpoint. The
        checkpoint that ends the run also holds the final weights (``final_weights.pt``): Ray Train
        persists it to the run's storage, local or remote, and the driver reads it from there."""
        progress = self.progress
        if stream is not None:
            progress.data_positions = all_gather_objects(stream.state_dict(), self.world)
        model_state, optimizer_state = full_state_dicts(self.model, self.optimizer, self.world)
        final = self.produced_weights() if progress.finished else None  # a collective under FSDP
        metrics = {"step": progress.global_step, "images_seen": progress.images_seen, "cost_usd": self.cost.dollars}
        self.last_report = time.perf_counter()
        self.final_saved = progress.finished
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="microdit-ckpt-") as directory:
            save_state(directory, model_state=model_state, optimizer_state=optimizer_state,
                       ema_state=self.ema.state_dict() if self.ema else None, progress=progress,
                       cost_state=self.cost.state_dict(), model_config=self.model_config.to_dict())
            if final is not None:
                self.save_final_weights(Path(directory) / WEIGHTS_FILE, final)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    def save_final_weights(self, path: Path, weights: dict[str, torch.Tensor]) -> Path:
        source = produced_weights_source(self.ema.updates if self.ema is not None else 0)
        p = self.progress
        meta = {"ema": source == "ema", "global_step": p.global_step, "images_seen": p.images_seen,
                "cost_usd": self.cost.dollars, "gpu_hours": self.cost.device_hours, "phase": p.phase,
                "finished": p.finished}
        return save_weights(path, {k: v.detach().float().cpu() for k, v in weights.items()},
                            self.model_config.to_dict(), meta)

    def produced_weights(self) -> dict[str, torch.Tensor]:
        """The weights the current (or just finished) phase produces: its EMA if it has updated one,
        else the live weights (``ema.updates`` is reset at every phase start)."""
        if produced_weights_source(self.ema.updates if self.ema is not None else 0) == "ema":
            return self.ema.shadow
        return full_model_state(self.model, self.world)

    # ------------------------------------------------------------------ small helpers
    def over_budget(self, pending_images: int = 0) -> bool:
        """Whether the run reached ``max_dollars`` / ``max_images`` (``pending_images``: this step's,
        not yet in the progress counters)."""
        recipe = self.recipe
        return (recipe.max_dollars is not None and self.cost.dollars >= recipe.max_dollars) or (
            recipe.max_images is not None and self.progress.images_seen + pending_images >= recipe.max_images)

    def end_phase(self) -> None:
        progress = self.progress
        progress.phase += 1
        progress.phase_step = progress.phase_images = 0
        progress.phase_dollars = 0.0
        progress.phase_ema_started = False
        progress.finished = progress.phase >= len(self.recipe.phases)
