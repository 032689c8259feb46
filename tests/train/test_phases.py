"""Every phase setting does what it says (issue 9): EMA selection, optimizer carry-over, per-phase
masking and data, weight decay, sampling defaults, and refusing to resume with a changed recipe.

Fast tests check the decisions with numbers (no Ray); one 3-phase run on the real local cluster
(2 CPU workers) proves the loop applies them.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from train_testing import final_state, tiny_recipe

from microdit.config.recipe import load_recipe
from microdit.errors import ConfigError


def _nano(**overrides):
    from microdit.model import MicroDiT
    from microdit.model.sizes import model_config

    torch.manual_seed(0)
    model = MicroDiT(model_config("MicroDiT_Nano_4", caption_dim=8, latent_channels=3, **overrides))
    with torch.no_grad():  # zero-initialised output layers would make every prediction 0
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model


# ---------------------------------------------------------------- item 1: EMA never updated
def test_checkpoint_weights_use_the_ema_only_when_it_was_updated(tmp_path):
    from microdit.train.ema import EMA
    from microdit.train.state import Progress, load_weights, save_state

    initial = _nano()
    ema = EMA(initial)  # exists from step 0 (paper.yaml), holds the initial weights
    trained = _nano()
    with torch.no_grad():  # "training": every weight moves
        for param in trained.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    x, c, y = torch.randn(2, 3, 32, 32), torch.zeros(2), torch.randn(2, 8, 8)

    def save(directory: Path) -> Path:
        directory.mkdir()
        save_state(directory, model_state=trained.state_dict(), optimizer_state={}, ema_state=ema.state_dict(),
                   progress=Progress(), cost_state={}, model_config=trained.config.to_dict())
        return directory

    never_updated = save(tmp_path / "never")
    loaded = load_weights(never_updated)
    for key, value in trained.state_dict().items():  # the live weights, exactly
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        expected_out = trained.eval()(x, c, y).sample
        assert torch.isfinite(expected_out).all() and expected_out.abs().mean() > 1e-3
        assert torch.equal(loaded(x, c, y).sample, expected_out)
    assert not torch.equal(loaded.state_dict()["final_layer.linear.weight"],
                           initial.state_dict()["final_layer.linear.weight"])

    ema.update(trained, 0.5)  # one update: shadow = (initial + trained) / 2
    updated = load_weights(save(tmp_path / "updated"))
    expected = (initial.state_dict()["final_layer.linear.weight"] + trained.state_dict()["final_layer.linear.weight"]) / 2
    assert torch.allclose(updated.state_dict()["final_layer.linear.weight"], expected, atol=1e-7)
    live = load_weights(tmp_path / "updated", which="live")
    assert torch.equal(live.state_dict()["final_layer.linear.weight"], trained.state_dict()["final_layer.linear.weight"])

    # A run's last checkpoint also holds final_weights.pt (here the EMA): auto takes it, an explicit
    # live / ema still picks from the checkpoint's state, by folder or by the weights file.
    from microdit.train.state import WEIGHTS_FILE, save_weights

    final = save_weights(tmp_path / "updated" / WEIGHTS_FILE, ema.shadow, trained.config.to_dict(), {"ema": True})
    key = "final_layer.linear.weight"
    for source in (tmp_path / "updated", final):
        assert torch.equal(load_weights(source).state_dict()[key], ema.shadow[key])
        assert torch.equal(load_weights(source, which="live").state_dict()[key], trained.state_dict()[key])
        assert torch.equal(load_weights(source, which="ema").state_dict()[key], ema.shadow[key])
    alone = tmp_path / "alone"
    alone.mkdir()
    lone = save_weights(alone / WEIGHTS_FILE, ema.shadow, trained.config.to_dict(), {"ema": True})
    with pytest.raises(ValueError) as info:
        load_weights(lone, which="live")
    assert str(info.value) == (f"{lone} holds the ema weights only; which='live' needs the training checkpoint "
                               "directory (train_state.pt)")


# ---------------------------------------------------------------- items 2, 8, 9: phase transitions
def _three_phases(**extra):
    return load_recipe("demo", {
        "phases": [
            {"name": "ema", "resolution": 32, "mask_ratio": 0.5, "steps": 2, "batch_size": 8,
             "ema_half_life_images": 32, "lr": 1e-3, "lr_schedule": "cosine", "lr_floor": 0.2},
            {"name": "naive", "resolution": 32, "mask_ratio": 0.5, "masking": "naive", "steps": 2, "batch_size": 8,
             "lr": 5e-4, "warmup_steps": 2},
            {"name": "fresh", "resolution": 32, "mask_ratio": 0.0, "steps": 2, "batch_size": 8,
             "optimizer_state": "reset", "data": {"synthetic_fraction": 0.0}, "lr": 2e-4},
        ],
        **extra,
    })


def test_phase_start_decisions():
    from microdit.train.phases import data_position_for_phase, phase_start_actions, produced_weights_source

    recipe = _three_phases()
    first, keep, reset = (phase_start_actions(recipe, i, 0) for i in range(3))
    assert (first.reset_ema_updates, first.reset_optimizer_state) == (True, False)
    assert (keep.reset_ema_updates, keep.reset_optimizer_state) == (True, False)
    assert (reset.reset_ema_updates, reset.reset_optimizer_state) == (True, True)
    mid = phase_start_actions(recipe, 2, 1)  # resumed mid-phase: the checkpoint already holds the reset
    assert (mid.reset_ema_updates, mid.reset_optimizer_state) == (False, False)

    positions = [{"rank": 0}, {"rank": 1}]
    assert data_position_for_phase(recipe, 1, 0, positions, 1) == {"rank": 1}  # same mix: continue
    assert data_position_for_phase(recipe, 2, 0, positions, 1) is None  # other mix: start fresh
    assert data_position_for_phase(recipe, 2, 1, positions, 1) == {"rank": 1}  # mid-phase: its own position
    assert data_position_for_phase(recipe, 0, 0, [], 0) is None
    assert recipe.phase_data(2).synthetic_fraction == 0.0 and recipe.phase_data(1).synthetic_fraction == 0.3
    assert (produced_weights_source(0), produced_weights_source(3)) == ("live", "ema")

    # Phase 0 has no previous phase: a reset there means nothing to reset, and its stream position
    # is its own even when the last phase (index -1) streams another mix. Phase 1 can reset.
    swapped = _three_phases(phases=[p.to_dict() for p in reversed(recipe.phases)])  # reset first, then keep
    assert swapped.phases[0].optimizer_state == "reset" and phase_start_actions(swapped, 0, 0).reset_optimizer_state is False
    assert swapped.phase_data(0) != swapped.phase_data(2)
    assert data_position_for_phase(swapped, 0, 0, positions, 0) == {"rank": 0}
    assert data_position_for_phase(swapped, 1, 0, positions, 0) is None  # real-only -> mixed: fresh
    second = _three_phases(phases=[recipe.phases[0].to_dict(), recipe.phases[2].to_dict()])
    assert phase_start_actions(second, 1, 0).reset_optimizer_state is True


def test_the_ema_copy_is_held_only_while_a_phase_runs_one():
    """The fp32 EMA copy exists in EMA phases only: created when the first one starts (from the weights
    of that moment), kept into a following EMA phase, freed when a phase without one starts."""
    from types import SimpleNamespace

    from microdit.train.loop import WorkerRun
    from microdit.train.phases import ema_held

    paper = load_recipe("paper")
    assert [ema_held(paper, i) for i in range(-1, 5)] == [False, False, False, True, True, False]
    phases = [p.to_dict() for p in _three_phases().phases]  # ema, none, none
    recipe = _three_phases(phases=[phases[1], phases[0], phases[0], phases[2]])  # none, ema, ema, none
    run = SimpleNamespace(recipe=recipe, model=_nano(), ema=None, device=torch.device("cpu"))
    held = []
    for index in range(4):  # what the loop does at each phase start
        WorkerRun.hold_ema(run, index)
        held.append(run.ema)
        if index == 0:
            with torch.no_grad():  # training moves the weights before the EMA phase starts
                run.model.final_layer.linear.weight.add_(1.0)
    assert held[0] is None and held[3] is None
    assert held[1] is not None and held[2] is held[1]  # one copy through consecutive EMA phases
    assert torch.equal(held[1].shadow["final_layer.linear.weight"], run.model.final_layer.linear.weight)


def test_paper_recipe_matches_the_official_transitions():
    paper = load_recipe("paper")
    assert [p.optimizer_state for p in paper.phases] == ["keep", "keep", "reset", "keep"]
    assert paper.optimizer.weight_decay_on == "all" and paper.optimizer.weight_decay == 0.1
    assert paper.phase_data(0).synthetic == paper.phase_data(1).synthetic == "paper_synthetic"
    assert paper.phase_data(2) == paper.phase_data(3) != paper.phase_data(0)  # 512 px: other sets


# ---------------------------------------------------------------- item 3: per-phase masking
@pytest.mark.parametrize(("strategy", "mixer_tokens"), [("deferred", 64), ("naive", 32)])
def test_phase_masking_reaches_the_forward(strategy, mixer_tokens):
    """Nano_4 (deferred, 2 mixer blocks) at 32 px has 64 tokens; mask 0.5 keeps 32. A phase's
    ``masking: naive`` drops them before the mixer, deferred after it."""
    from microdit.diffusion import EDMDenoiser, edm_loss

    model = _nano()
    seen: list[int] = []
    model.patch_mixer[0].register_forward_hook(lambda m, args, out: seen.append(out[0].shape[1]))  # (x, router stats)
    generator = torch.Generator().manual_seed(0)
    out = edm_loss(EDMDenoiser(model), torch.randn(2, 3, 32, 32), torch.randn(2, 8, 8), p_mean=-0.6, p_std=1.2,
                   mask_ratio=0.5, masking=strategy, generator=generator)
    assert seen == [mixer_tokens]
    assert out.output.mask.sum(dim=1).tolist() == [32.0, 32.0]
    assert model.config.masking == "deferred"


# ---------------------------------------------------------------- item 10: weight decay
@pytest.mark.parametrize(("setting", "one_d_decay"), [("all", 0.1), ("matrices", 0.0)])
def test_weight_decay_setting(setting, one_d_decay):
    from microdit.train.optim import build_optimizer

    model = _nano()
    recipe = load_recipe("demo", {"optimizer.weight_decay_on": setting})
    optimizer = build_optimizer(model, recipe)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    one_d = [p for p in model.parameters() if p.ndim == 1]
    assert one_d and {decay[id(p)] for p in one_d} == {one_d_decay}
    assert {decay[id(p)] for p in model.parameters() if p.ndim >= 2} == {0.1}
    assert len(decay) == sum(1 for _ in model.parameters())
    assert load_recipe("demo").optimizer.weight_decay_on == "all"  # the official default


# ---------------------------------------------------------------- item 12: one sampling default
def test_sampling_defaults_are_the_official_30_steps_guidance_5():
    import argparse

    from microdit.cli import evaluate as evaluate_cli
    from microdit.config.recipe import EvalConfig, TrackingConfig, deviation_from_official
    from microdit.evaluate.pipeline import EvaluationConfig

    assert (EvalConfig().steps, EvalConfig().guidance) == (30, 5.0)
    assert (TrackingConfig().sample_steps, TrackingConfig().sample_guidance) == (30, 5.0)
    assert (EvaluationConfig().steps, EvaluationConfig().guidance) == (30, 5.0)
    parser = argparse.ArgumentParser()
    evaluate_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--checkpoint", "x", "--reference", "y"])
    assert (args.steps, args.guidance) == (30, 5.0)
    assert deviation_from_official(30, 5.0) is None
    assert deviation_from_official(12, 3.0) == "12 Heun steps, guidance 3 (official monitoring: 30 / 5)"

    from microdit.config.sweep import load_sweep
    from microdit.sweep.plan import evaluation_protocol_note

    assert evaluation_protocol_note(load_sweep("mask_ratio")) is None  # 30 / 5: nothing to name
    assert evaluation_protocol_note(load_sweep("quickstart")) == (
        "trials are evaluated with 12 Heun steps, guidance 3 (official monitoring: 30 / 5): compare their FIDs "
        "only with FIDs of the same protocol")


# ---------------------------------------------------------------- the loop applies all of it
def _checkpoint_states(run_dir: Path) -> dict[int, dict]:
    from microdit.train.state import load_state

    states = {}
    for directory in filter(Path.is_dir, run_dir.glob("checkpoint_*")):
        state = load_state(directory)
        states[state["progress"]["global_step"]] = state
    return states


def _ids(set_dir: Path) -> set[str]:
    return {i for path in Path(set_dir).glob("*.parquet") for i in pq.read_table(path, columns=["id"])["id"].to_pylist()}


@pytest.mark.ray
def test_three_phase_run_applies_each_phase_setting(train_demo, tmp_path):
    """EMA phase -> naive-masking phase without EMA (optimizer kept) -> real-only phase with a fresh
    optimizer, with a worker failure in the first step of phase 2 (resumed from the checkpoint at
    the phase boundary). Each phase's LR schedule is logged step by step; final weights are phase
    3's live weights; AdamW's step counter restarts at phase 3; phase 3 reads only real rows; the
    retry re-reads exactly the rows the failed attempt read; no EMA copy is held after the EMA phase;
    a relaunch with a changed recipe is refused, naming the key."""
    from train_testing import mlflow_client, read_id_lines

    from microdit.train.trainer import run_training

    ids_dir = tmp_path / "ids"
    overrides = {
        "phases": [p.to_dict() for p in _three_phases().phases],
        "tracking.checkpoint_every_steps": 2,
        "tracking.keep_checkpoints": 3,
        "tracking.log_every_steps": 1,
        "tracking.max_failures": 1,
        "debug": {"record_ids_dir": str(ids_dir), "fail_at_step": 3},
        # an FID at every phase end, each of the 2 ranks generating and scoring 3 of the 6 samples
        "evaluation": {"reference": str(train_demo["demo_real_heldout"]), "num_samples": 6, "steps": 2,
                       "guidance": 2.0},
    }
    recipe = tiny_recipe(train_demo, tmp_path, "phases", overrides)
    summary = run_training(recipe)
    assert summary.global_step == 6 and summary.images_seen == 48
    assert (tmp_path / "runs" / "phases" / "failed_once_at_3").exists()
    client = mlflow_client(recipe.tracking.mlflow_uri)
    fids = client.get_metric_history(summary.mlflow_run_id, "fid_6")
    assert [m.step for m in fids] == [2, 4, 6] and all(m.value > 0 for m in fids)  # once each, also across the retry
    lrs = {m.step: m.value for m in client.get_metric_history(summary.mlflow_run_id, "lr")}
    # cosine 1e-3 -> floor 2e-4 over 2 steps; 2-step warm-up to 5e-4 (the phase's own); constant 2e-4
    assert [lrs[step] for step in sorted(lrs)] == pytest.approx([1e-3, 6e-4, 2.5e-4, 5e-4, 2e-4, 2e-4], rel=1e-9)

    states = _checkpoint_states(Path(summary.storage))
    assert sorted(states) == [2, 4, 6]
    adam_steps = {step: {int(s["step"]) for s in state["optimizer"]["state"].values()} for step, state in states.items()}
    assert adam_steps == {2: {2}, 4: {4}, 6: {2}}  # kept across 1 -> 2, reset at phase 3
    # the EMA copy exists only while an EMA phase runs: phase 1's is in its end checkpoint, then freed
    assert states[2]["ema"]["updates"] == 2 and states[4]["ema"] is None and states[6]["ema"] is None

    final = final_state(summary.weights)
    assert final["meta"]["ema"] is False  # phase 3 ran no EMA: its live weights, not phase 1's average
    for key, value in states[6]["model"].items():
        assert torch.equal(final["state_dict"][key], value.float()), key

    real, synthetic = _ids(train_demo["demo_real"]), _ids(train_demo["demo_synthetic"])
    for rank in (0, 1):
        lines = read_id_lines(ids_dir, rank)
        restart = next(i for i in range(1, len(lines)) if lines[i]["step"] <= lines[i - 1]["step"])
        first, retry = lines[:restart], lines[restart:]
        assert [line["step"] for line in retry] == [2, 3, 4, 5]  # resumed at the phase-2 boundary
        replayed = {line["step"]: line["ids"] for line in retry}
        assert all(line["ids"] == replayed[line["step"]] for line in first if line["step"] >= 2)
        by_step = {line["step"]: line for line in lines}  # the retry's lines win
        late = [i for step, line in by_step.items() if line["phase"] == 2 for i in line["ids"]]
        early = [i for step, line in by_step.items() if line["phase"] < 2 for i in line["ids"]]
        assert len(late) == 8 and set(late) <= real  # synthetic_fraction 0 in phase 3
        assert len(early) == len(set(early)) == 16  # phases 1-2 continue one data position: no row twice
        assert len([i for i in early if i in synthetic]) == 4  # floor(16 x 0.3) of each rank's 16 rows

    changed = tiny_recipe(train_demo, tmp_path, "phases", {**overrides, "phases[0].lr": 5e-4})
    with pytest.raises(ConfigError) as info:
        run_training(changed)
    assert "run 'phases' exists with a different recipe (changed: phases[0].lr: 0.001 -> 0.0005); " in str(info.value)
