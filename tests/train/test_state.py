"""What a checkpoint holds and how it comes back (``train/state.py``), without Ray.

A restarted worker continues exactly where its checkpoint left off only if every part is written
under the key it is read from and the random streams resume where they stopped; the weights a run
hands out are the EMA or the live ones by a stated rule, from a path or an object-store URI.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from microdit.train.state import (
    STATE_FILE,
    WEIGHTS_FILE,
    Progress,
    checkpoint_weights,
    load_state,
    load_weights,
    restore_rng,
    rng_state,
    save_state,
    save_weights,
)


def _nano():
    from microdit.model import MicroDiT
    from microdit.model.sizes import model_config

    torch.manual_seed(0)
    return MicroDiT(model_config("MicroDiT_Nano_4", caption_dim=8, latent_channels=3))


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_random_streams_resume_where_the_checkpoint_stopped():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    saved = rng_state()
    assert set(saved) == {"torch", "numpy", "python"}
    expected = _draws()
    _draws()  # the streams move on
    restore_rng(saved)
    assert _draws() == expected  # torch, numpy and python each resume exactly


def test_every_part_is_read_back_under_its_own_key(tmp_path):
    model = _nano()
    progress = Progress(phase=1, phase_step=3, phase_images=24, phase_dollars=0.5, global_step=7, images_seen=56,
                        data_positions=[{"rank": 0, "row": 12}, {"rank": 1, "row": 11}], phase_ema_started=True)
    optimizer = {"state": {0: {"step": torch.tensor(7.0)}}, "param_groups": [{"lr": 1e-3}]}
    ema = {"shadow": {k: v + 1 for k, v in model.state_dict().items()}, "updates": 4}
    torch.manual_seed(5)
    path = save_state(tmp_path, model_state=model.state_dict(), optimizer_state=optimizer, ema_state=ema,
                      progress=progress, cost_state={"seconds": 12.5, "images": 56},
                      model_config=model.config.to_dict())
    assert path == tmp_path / STATE_FILE and path.is_file()
    after_save = torch.rand(2)

    state = load_state(tmp_path)
    assert set(state) == {"model", "optimizer", "ema", "progress", "cost", "rng", "model_config"}
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    assert state["optimizer"]["param_groups"] == [{"lr": 1e-3}] and state["optimizer"]["state"][0]["step"] == 7
    assert state["ema"]["updates"] == 4 and torch.equal(state["ema"]["shadow"]["final_layer.linear.weight"],
                                                          model.state_dict()["final_layer.linear.weight"] + 1)
    assert Progress(**state["progress"]) == progress
    assert state["cost"] == {"seconds": 12.5, "images": 56}
    assert state["model_config"] == model.config.to_dict()
    restore_rng(state["rng"])
    assert torch.equal(torch.rand(2), after_save)  # the generator as it was when the state was written


def test_checkpoint_weights_rule_and_errors(tmp_path):
    live = {"w": torch.zeros(2)}
    ema_updated = {"shadow": {"w": torch.ones(2)}, "updates": 3}
    ema_idle = {"shadow": {"w": torch.full((2,), 9.0)}, "updates": 0}
    weights, which = checkpoint_weights({"model": live, "ema": ema_updated})  # default: auto
    assert which == "ema" and weights is ema_updated["shadow"]
    weights, which = checkpoint_weights({"model": live, "ema": ema_idle})  # never updated this phase: live
    assert which == "live" and weights is live
    assert checkpoint_weights({"model": live, "ema": None}) == (live, "live")
    assert checkpoint_weights({"model": live, "ema": ema_updated}, "live") == (live, "live")
    assert checkpoint_weights({"model": live, "ema": ema_idle}, "ema") == (ema_idle["shadow"], "ema")
    with pytest.raises(ValueError) as info:
        checkpoint_weights({"model": live, "ema": None}, "ema")
    assert str(info.value) == "this checkpoint has no EMA weights (the recipe never ran an EMA); use 'live'"
    with pytest.raises(ValueError) as info:
        checkpoint_weights({"model": live, "ema": ema_updated}, "best")
    assert str(info.value) == "which='best': allowed auto, ema, live"


def test_a_weights_file_without_meta_loads_as_live_weights(tmp_path):
    """A hand-made file (config + state dict, no ``meta``) holds live weights: it loads, ``ema`` is refused."""
    model = _nano()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01)
    path = tmp_path / "hand_made.pt"
    torch.save({"model_config": model.config.to_dict(), "state_dict": model.state_dict()}, path)
    loaded = load_weights(path, which="live")
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(ValueError) as info:
        load_weights(path, which="ema")
    assert str(info.value) == (f"{path} holds the live weights only; which='ema' needs the training checkpoint "
                               "directory (train_state.pt)")


@pytest.mark.server
def test_final_weights_load_from_a_bucket(tmp_path, s3_bucket):
    """The file a run hands out loads from its object-store URI exactly as saved."""
    from microdit import storage

    model = _nano()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01)
    local = save_weights(tmp_path / WEIGHTS_FILE, model.state_dict(), model.config.to_dict(), {"ema": False})
    uri = f"{s3_bucket}/runs/r/checkpoint_000001/{WEIGHTS_FILE}"
    storage.upload_file(str(local), uri)
    loaded = load_weights(uri)
    assert not loaded.training and loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(ValueError) as info:
        load_weights(uri, which="ema")  # a lone live file: no EMA to give
    assert str(info.value).endswith("holds the live weights only; which='ema' needs the training checkpoint "
                                    "directory (train_state.pt)")
