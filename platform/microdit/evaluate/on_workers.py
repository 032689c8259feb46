"""Evaluation after training, on devices Ray gives it: a Train run with the training run's workers.

A sweep trial's driver holds 0.01 CPU: evaluating there would generate and score thousands of
samples on one CPU thread, after the trial's GPUs were released, and bill them at the GPU price.
Instead the evaluation is a ``TorchTrainer`` with the same ``ScalingConfig`` as the training
(workers, GPUs, accelerator type): every worker loads the final weights (a path or URI) onto its
own device and evaluates its share (``evaluate_model(rank=…, world=…)``, merged exactly); rank 0
returns the metrics. ``eval_seconds`` is the wall time the workers were held, start-up included,
which is what the trial bills (× the devices). On CPU the same path runs on CPU workers (tests).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from microdit.evaluate.pipeline import EvaluationConfig


def evaluate_on_workers(weights: str, cfg: EvaluationConfig, resources, *, storage_path: str, name: str,
                        which: str = "auto") -> dict:
    """Metrics of ``weights`` evaluated by a Train run shaped like ``resources`` (see module docstring);
    ``which``: EMA or live weights of a checkpoint folder (``load_weights``)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from microdit.console import train_logging_config
    from microdit.train.trainer import scaling_kwargs

    started = time.perf_counter()
    trainer = TorchTrainer(
        evaluate_worker,
        train_loop_config={"weights": weights, "config": dataclasses.asdict(cfg), "which": which,
                           "torch_threads": resources.torch_threads},
        scaling_config=ray.train.ScalingConfig(**scaling_kwargs(resources)),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path,
                                       failure_config=ray.train.FailureConfig(max_failures=0),
                                       logging_config=train_logging_config()),
    )
    metrics = dict(trainer.fit().return_value or {})
    metrics["eval_seconds"] = time.perf_counter() - started  # devices held: what is billed
    return metrics


def evaluate_worker(config: dict[str, Any]) -> dict | None:
    """One worker: its device, its share of the samples; rank 0 returns the merged metrics."""
    import ray.train
    import torch

    from microdit.console import configure_worker
    from microdit.evaluate.pipeline import evaluate_model
    from microdit.train.state import load_weights

    configure_worker()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    try:
        device = ray.train.torch.get_device()
    except Exception:  # in-process (num_workers=0) runs have no Train device assignment
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(config["torch_threads"])
    model = load_weights(config["weights"], device=device, which=config.get("which", "auto"))
    metrics = evaluate_model(model, EvaluationConfig(**config["config"]), rank=rank, world=world, device=device)
    return metrics if rank == 0 else None
