"""FSDP trains like DDP: 2 CPU processes on gloo, 5 AdamW steps of the EDM loss, same loss curve.

Regression test for building the optimizer before ``fully_shard``: FSDP2 replaces every parameter
with a sharded DTensor, so an optimizer built first holds tensors that never get a gradient and
the weights never move (the FSDP curve then stays flat while DDP's goes down).

Plain ``torch.multiprocessing`` + a file rendezvous (no ports, no Ray: 7-25 s on 2 shared cores);
the same functions run inside Ray Train workers in the real loop.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch

STEPS = 5
WORLD = 2
MICRO = 4  # rows per rank
CAPTION_LEN = 8
# One short masked phase without EMA (fsdp refuses EMA); a small grad_clip so clipping is active.
PHASES = ("phases=[{name: masked, resolution: 32, mask_ratio: 0.5, steps: 5, batch_size: 8, lr: 3.0e-3,"
          " lr_schedule: constant, grad_clip: 0.1, p_mean: -0.6, p_std: 1.2}]")


def _train(strategy: str, rank: int, world: int) -> dict:
    """5 optimizer steps on fixed per-rank rows; the loss changes only because the weights do."""
    import torch.distributed as dist

    from microdit.config.recipe import load_recipe
    from microdit.diffusion import EDMDenoiser, edm_loss
    from microdit.model.microdit import MicroDiT
    from microdit.model.sizes import model_config
    from microdit.train.parallel import (
        all_reduce_mean,
        full_state_dicts,
        load_full_state_dicts,
        prepare_model_and_optimizer,
    )

    recipe = load_recipe("demo", [f"resources.strategy={strategy}", PHASES])
    assert recipe.resources.strategy == strategy
    phase, config, device = recipe.phases[0], model_config("MicroDiT_Nano_4"), torch.device("cpu")
    torch.manual_seed(recipe.seed)  # identical initial weights on both ranks
    model = MicroDiT(config)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_model, optimizer = prepare_model_and_optimizer(model, recipe, device, world)

    data = torch.Generator().manual_seed(100 + rank)  # each rank its own rows
    x0 = torch.randn(MICRO, config.latent_channels, 32, 32, generator=data)
    y = torch.randn(MICRO, CAPTION_LEN, config.caption_dim, generator=data)

    def step(net: torch.nn.Module, module: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[float, float]:
        generator = torch.Generator().manual_seed(1000 + rank)  # same sigma, noise and mask at every step
        out = edm_loss(EDMDenoiser(net), x0, y, p_mean=phase.p_mean, p_std=phase.p_std,
                       mask_ratio=phase.mask_ratio, generator=generator)
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), phase.grad_clip)  # as the loop does
        opt.step()
        opt.zero_grad(set_to_none=True)
        return all_reduce_mean(out.loss.item(), device, world), float(norm)

    losses, norms = zip(*(step(train_model, model, optimizer) for _ in range(STEPS)), strict=True)
    # Checked here too (the all-reduced curve is the same on both ranks, so both stop together):
    # with the optimizer built before fully_shard the curve is flat and full_state_dicts raises.
    assert len(set(losses)) == STEPS, f"{strategy}: the weights never changed, flat loss curve {losses}"
    model_state, optimizer_state = full_state_dicts(model, optimizer, world)  # full on rank 0, {} elsewhere
    # As if every rank read rank 0's checkpoint: copies (on CPU the state dicts can alias live tensors).
    states = copy.deepcopy([model_state, optimizer_state])
    dist.broadcast_object_list(states, src=0)
    model_state, optimizer_state = states
    result = {"losses": list(losses), "norms": list(norms), "initial": initial,
              "final": {k: v.detach().clone() for k, v in model_state.items()},
              "optimizer_keys": sorted(optimizer_state["state"]),
              "optimizer_steps": sorted({float(s["step"]) for s in optimizer_state["state"].values()})}

    # Resume: a fresh (differently initialised) model + optimizer loaded from the full state dicts
    # takes the same next two steps as the original (the second one depends on the AdamW moments).
    torch.manual_seed(recipe.seed + 1)
    fresh = MicroDiT(config)
    fresh_train, fresh_optimizer = prepare_model_and_optimizer(fresh, recipe, device, world)
    load_full_state_dicts(fresh, fresh_optimizer, model_state, optimizer_state, world)
    result["next_losses"] = [step(train_model, model, optimizer)[0] for _ in range(2)]
    result["resumed_next_losses"] = [step(fresh_train, fresh, fresh_optimizer)[0] for _ in range(2)]
    return result


ACCUMULATION = 2  # micro-batches per optimizer step in the collective-counting run


def _count_collectives(precision: str, rank: int, world: int) -> dict:
    """Two FSDP optimizer steps of 2 micro-batches each, through the loop's ``gradient_sync`` (and, for
    comparison, with a reduce-scatter after every micro-batch, what the loop did before): per step, the
    reduce-scatters and their dtype, and the dtype the parameters are all-gathered in."""
    import torch.distributed as dist

    from microdit.config.recipe import load_recipe
    from microdit.diffusion import EDMDenoiser, edm_loss
    from microdit.model.microdit import MicroDiT
    from microdit.model.sizes import model_config
    from microdit.train.parallel import gradient_sync, prepare_model_and_optimizer

    recipe = load_recipe("demo", ["resources.strategy=fsdp", f"resources.precision={precision}", PHASES])
    seen = {"reduce_scatter": [], "all_gather": []}
    reduce_scatter, all_gather = dist.reduce_scatter_single, dist.all_gather_single

    def counting_reduce_scatter(output, input, *args, **kwargs):
        seen["reduce_scatter"].append(input.dtype)
        return reduce_scatter(output, input, *args, **kwargs)

    def counting_all_gather(output, input, *args, **kwargs):
        seen["all_gather"].append(input.dtype)
        return all_gather(output, input, *args, **kwargs)

    dist.reduce_scatter_single, dist.all_gather_single = counting_reduce_scatter, counting_all_gather
    result: dict = {}
    try:
        for deferred in (True, False):
            torch.manual_seed(0)
            model = MicroDiT(model_config("MicroDiT_Nano_4"))
            train_model, optimizer = prepare_model_and_optimizer(model, recipe, torch.device("cpu"), world)
            per_step = []
            for step in range(2):
                for kind in seen.values():
                    kind.clear()
                for micro in range(ACCUMULATION):
                    data = torch.Generator().manual_seed(100 * rank + 10 * step + micro)
                    x0 = torch.randn(MICRO, 3, 32, 32, generator=data)
                    y = torch.randn(MICRO, CAPTION_LEN, 384, generator=data)
                    last = micro == ACCUMULATION - 1
                    with gradient_sync(train_model, model, enabled=last or not deferred), \
                            torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        loss = edm_loss(EDMDenoiser(train_model), x0, y, p_mean=-0.6, p_std=1.2, mask_ratio=0.5,
                                        generator=data).loss
                        (loss / ACCUMULATION).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                per_step.append({k: list(v) for k, v in seen.items()})
            result["deferred" if deferred else "every_micro_batch"] = per_step
            result["units"] = len(model.patch_mixer) + len(model.blocks) + 1  # each block + the root
    finally:
        dist.reduce_scatter_single, dist.all_gather_single = reduce_scatter, all_gather
    return result


def _step_sync(rank: int, world: int) -> dict:
    """The loop's per-step sync with rank-dependent inputs, counting the collectives it makes."""
    import torch.distributed as dist

    from microdit.train.parallel import step_sync

    calls = []
    all_gather, all_reduce = dist.all_gather, dist.all_reduce
    dist.all_gather = lambda *a, **k: calls.append("all_gather") or all_gather(*a, **k)
    dist.all_reduce = lambda *a, **k: calls.append("all_reduce") or all_reduce(*a, **k)
    try:
        answer = step_sync(torch.tensor(1.0 + rank), 0.25 * (rank + 1), over_budget=rank == 1,
                           device=torch.device("cpu"), world=world, run_dollars=2.0 - rank)
        quiet = step_sync(torch.tensor(3.0), 0.5, over_budget=False, device=torch.device("cpu"), world=world)
    finally:
        dist.all_gather, dist.all_reduce = all_gather, all_reduce
    return {"answer": answer, "quiet": quiet, "calls": calls}


def _worker(rank: int, world: int, rendezvous: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        results = {strategy: _train(strategy, rank, world) for strategy in ("ddp", "fsdp")}
        results["collectives"] = {p: _count_collectives(p, rank, world) for p in ("fp32", "bf16")}
        results["step_sync"] = _step_sync(rank, world)
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def _spawn(tmp_path: Path, timeout_s: float = 300.0) -> list[dict]:
    import torch.multiprocessing as mp

    context = mp.spawn(_worker, args=(WORLD, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)),
                       nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail(f"FSDP/DDP workers did not finish within {timeout_s:.0f} s")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return _spawn(tmp_path_factory.mktemp("fsdp"))


def test_step_sync_is_one_collective_with_one_answer_on_every_rank(ranks):
    """The training step's single sync: one all-gather gives every rank the mean loss, the largest
    phase spend, whether any rank is over budget and the largest run spend (ranks 0/1 sent losses 1/2,
    spends 0.25/0.5, over-budget False/True, run spends 2/1)."""
    for rank in ranks:
        assert rank["step_sync"]["answer"] == (1.5, 0.5, True, 2.0)
        assert rank["step_sync"]["quiet"] == (3.0, 0.5, False, 0.0)
        assert rank["step_sync"]["calls"] == ["all_gather", "all_gather"]  # one per step, nothing else


def test_fsdp_reduce_scatters_once_per_step_and_gathers_bf16(ranks):
    """Gradient accumulation under FSDP2 reduce-scatters once per optimizer step (at the last
    micro-batch), not once per micro-batch; under bf16 the parameters are all-gathered in bf16 and
    the gradients reduced in fp32 (``MixedPrecisionPolicy``), in fp32 throughout otherwise."""
    for precision, counted in ranks[0]["collectives"].items():
        units = counted["units"]
        for step in counted["deferred"]:
            assert len(step["reduce_scatter"]) == units, (precision, step)
            assert set(step["reduce_scatter"]) == {torch.float32}
            assert set(step["all_gather"]) == {torch.bfloat16 if precision == "bf16" else torch.float32}
        for step in counted["every_micro_batch"]:  # the loop before: no FSDP2 equivalent of no_sync
            assert len(step["reduce_scatter"]) == ACCUMULATION * units
    assert ranks[1]["collectives"] == ranks[0]["collectives"]


def test_fsdp_matches_ddp_loss_curve_for_5_steps_on_gloo(ranks):
    for strategy in ("ddp", "fsdp"):  # the all-reduced curves are the same on both ranks
        assert ranks[0][strategy]["losses"] == ranks[1][strategy]["losses"]
    ddp, fsdp = ranks[0]["ddp"], ranks[0]["fsdp"]

    # Training happens: fixed rows and noise, so the curve moves only because the weights do.
    assert ddp["losses"][-1] < ddp["losses"][0] - 1e-3, ddp["losses"]
    assert len(set(fsdp["losses"])) == STEPS, f"FSDP loss curve is flat: {fsdp['losses']}"
    changed = [k for k in fsdp["initial"] if not torch.equal(fsdp["initial"][k], fsdp["final"][k])]
    assert len(changed) > len(fsdp["initial"]) // 2, f"FSDP changed only {len(changed)} tensors"

    # Same curve, same clipped global gradient norms, same weights.
    for step, (a, b) in enumerate(zip(ddp["losses"], fsdp["losses"], strict=True)):
        assert abs(a - b) <= 1e-4, f"step {step}: ddp loss {a} vs fsdp {b}\n{ddp['losses']}\n{fsdp['losses']}"
    assert fsdp["norms"] == pytest.approx(ddp["norms"], rel=1e-4), (ddp["norms"], fsdp["norms"])
    assert min(ddp["norms"]) > 0.1  # clipping was active (grad_clip 0.1)
    assert fsdp["final"].keys() == ddp["final"].keys()
    for key, value in ddp["final"].items():
        torch.testing.assert_close(fsdp["final"][key], value, rtol=0, atol=1e-4, msg=key)

    # The sharded optimizer's full state dict covers every parameter and loads back into a fresh one.
    assert fsdp["optimizer_keys"] == ddp["optimizer_keys"] == sorted(k for k in ddp["final"])
    assert fsdp["optimizer_steps"] == ddp["optimizer_steps"] == [float(STEPS)]
    for strategy in ("ddp", "fsdp"):
        result = ranks[0][strategy]
        assert result["resumed_next_losses"] == pytest.approx(result["next_losses"], abs=1e-6), strategy
