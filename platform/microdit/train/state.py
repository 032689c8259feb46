"""Everything a checkpoint holds, and how it is written and read (Ray ``Checkpoint`` directories).

A checkpoint holds the model, EMA, optimizer, the position in the recipe (phase, step, images),
dollars spent, RNG states and every worker's data-stream position, so a restarted worker
continues exactly where the checkpoint left off. The final EMA weights are also written as a
small standalone file (``final_weights.pt``, in the run's final checkpoint) that loads without
Ray, from a path or a URI: ``load_weights(location)``.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "train_state.pt"
WEIGHTS_FILE = "final_weights.pt"


@dataclass
class Progress:
    """Where the run is in its recipe."""

    phase: int = 0
    phase_step: int = 0
    phase_images: int = 0
    phase_dollars: float = 0.0
    global_step: int = 0
    images_seen: int = 0
    finished: bool = False
    data_positions: list[Any] = field(default_factory=list)  # one per rank
    phase_ema_started: bool = False
    milestones_done: list[int] = field(default_factory=list)  # indices into RecipeConfig.milestones()


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_state(directory: str | os.PathLike, *, model_state: dict, optimizer_state: dict,
               ema_state: dict | None, progress: Progress, cost_state: dict, model_config: dict) -> Path:
    path = Path(directory) / STATE_FILE
    torch.save({
        "model": model_state,
        "optimizer": optimizer_state,
        "ema": ema_state,
        "progress": asdict(progress),
        "cost": cost_state,
        "rng": rng_state(),
        "model_config": model_config,
    }, path)
    return path


def load_state(directory: str | os.PathLike) -> dict[str, Any]:
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], model_config: dict,
                 meta: dict[str, Any]) -> Path:
    """Small standalone weights (EMA if the recipe used one): config + fp32 state dict + metadata."""
    path = Path(path)
    torch.save({"model_config": model_config, "state_dict": state_dict, "meta": meta}, path)
    return path


def checkpoint_weights(state: dict[str, Any], which: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """The weights a training checkpoint holds for sampling, and which ones they are.

    ``auto`` follows the training rule: the EMA only when the phase in progress (or just finished)
    has updated it, else the live weights; an EMA that exists but was never updated in this phase
    holds initial or stale weights and is never returned by ``auto``. ``ema`` / ``live`` force one."""
    from microdit.train.phases import produced_weights_source

    ema = state.get("ema")
    if which == "auto":
        which = produced_weights_source(int(ema["updates"]) if ema else 0)
    if which == "ema":
        if not ema:
            raise ValueError("this checkpoint has no EMA weights (the recipe never ran an EMA); use 'live'")
        return ema["shadow"], "ema"
    if which != "live":
        raise ValueError(f"which={which!r}: allowed auto, ema, live")
    return state["model"], "live"


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu", which: str = "auto"):
    """Build a ``MicroDiT`` from ``final_weights.pt`` (or a training checkpoint directory; ``which``
    picks its EMA or live weights, see :func:`checkpoint_weights`). ``path`` may be a URI
    (``s3://…``): the file or directory is downloaded to a temporary place first."""
    from microdit import storage
    from microdit.config.model import ModelConfig
    from microdit.model import MicroDiT

    if storage.is_uri(os.fspath(path)):
        with storage.local_copy(os.fspath(path)) as local:
            return load_weights(local, device, which)
    path = Path(path)
    if path.is_dir():
        if (path / WEIGHTS_FILE).exists() and which == "auto":  # the run's own choice, made at its end
            path = path / WEIGHTS_FILE
        else:  # an explicit ema / live picks from the checkpoint's state, also in the run's last one
            state = load_state(path)
            model = MicroDiT(ModelConfig.from_dict(state["model_config"]))
            weights, _ = checkpoint_weights(state, which)
            model.load_state_dict(weights)
            return model.to(device).eval()
    if which != "auto" and path.name == WEIGHTS_FILE and (path.parent / STATE_FILE).exists():
        return load_weights(path.parent, device, which)  # its checkpoint holds both EMA and live
    blob = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data: no pickled code runs
    holds = "ema" if blob.get("meta", {}).get("ema") else "live"  # a file without meta (hand-made): live
    if which not in ("auto", holds):
        raise ValueError(f"{path} holds the {holds} weights only; which={which!r} needs the training "
                         "checkpoint directory (train_state.pt)")
    model = MicroDiT(ModelConfig.from_dict(blob["model_config"]))
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()
