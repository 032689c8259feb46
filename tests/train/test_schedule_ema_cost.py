"""The loop's arithmetic with numbers: LR schedule, EMA half-life, cost meter, resume-exact randomness,
and that the training step can overfit one fixed batch (plain torch, no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from microdit.config.recipe import PhaseConfig
from microdit.train.cost import CostMeter
from microdit.train.ema import EMA
from microdit.train.optim import step_generator
from microdit.train.schedule import learning_rate

LR = 1e-3


def _phase(**kwargs) -> PhaseConfig:
    return PhaseConfig(**{"steps": 100, "lr": LR, **kwargs})


def test_warmup_is_linear_then_cosine_reaches_the_floor_at_the_end():
    phase = _phase(lr_schedule="cosine", warmup_steps=10, lr_floor=0.33)
    lr = [learning_rate(phase, step, 100) for step in range(101)]
    assert lr[0] == pytest.approx(LR / 10) and lr[4] == pytest.approx(LR / 2) and lr[9] == pytest.approx(LR)
    assert lr[10] == pytest.approx(LR)  # cosine starts at the peak
    assert lr[55] == pytest.approx(0.33 * LR + 0.67 * LR * 0.5)  # half-way down the 90 cosine steps
    assert lr[100] == pytest.approx(0.33 * LR)  # ends exactly at the floor
    assert lr[99] == pytest.approx(0.33 * LR + 0.67 * LR * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))  # monotone after warmup
    assert min(lr[10:]) >= 0.33 * LR - 1e-15
    assert learning_rate(phase, 500, 100) == pytest.approx(0.33 * LR)  # never below the floor


def test_constant_schedule_and_phases_without_a_step_count():
    constant = _phase(lr_schedule="constant", warmup_steps=4)
    assert [learning_rate(constant, s, 100) for s in range(6)] == pytest.approx(
        [LR / 4, LR / 2, 3 * LR / 4, LR, LR, LR]
    )
    assert learning_rate(constant, 99, 100) == LR
    assert PhaseConfig(dollars=5.0, lr=LR).total_steps() is None
    assert PhaseConfig(images=1000, batch_size=64).total_steps() == 16  # ceil(1000 / 64)


def test_cosine_in_a_dollar_phase_decays_over_the_spent_fraction():
    """A dollar-length phase has no step count: cosine follows the fraction of its dollars spent
    (it used to stay at the peak LR for the whole phase)."""
    phase = PhaseConfig(dollars=5.0, lr=LR, lr_schedule="cosine", lr_floor=0.25, warmup_steps=2)
    assert learning_rate(phase, 0, None, 0.0) == pytest.approx(LR / 2)  # warmup still in steps
    assert learning_rate(phase, 10, None, 0.0) == pytest.approx(LR)
    assert learning_rate(phase, 10, None, 0.5) == pytest.approx(0.25 * LR + 0.75 * LR * 0.5)
    assert learning_rate(phase, 10, None, 1.0) == pytest.approx(0.25 * LR)
    assert learning_rate(phase, 10, None, 1.7) == pytest.approx(0.25 * LR)  # overshoot: stays at the floor
    with pytest.raises(ValueError) as info:
        learning_rate(phase, 10, None, None)
    assert str(info.value) == ("phase 'phase': a cosine schedule needs the phase length (steps, images, or the "
                               "spent fraction of a dollar-length phase)")


@pytest.mark.parametrize("batch", [50, 25, 500])
def test_ema_half_life_is_measured_in_images(batch):
    """After ``half_life`` images of a constant jump from 0 to 1, the EMA covers half of it."""
    half_life = 500
    phase = PhaseConfig(steps=10, batch_size=batch, ema_half_life_images=half_life)
    decay = phase.ema_decay_per_step()
    assert decay == pytest.approx(0.5 ** (batch / half_life))
    model = torch.nn.BatchNorm1d(3)  # float params + an integer buffer (num_batches_tracked)
    with torch.no_grad():
        model.weight.zero_()
    ema = EMA(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.num_batches_tracked.fill_(7)
    for _ in range(half_life // batch):
        ema.update(model, decay)
    assert ema.shadow["weight"] == pytest.approx(torch.full((3,), 0.5))
    assert ema.shadow["num_batches_tracked"].item() == 7  # buffers are copied, not averaged
    for _ in range(half_life // batch):
        ema.update(model, decay)
    assert ema.shadow["weight"] == pytest.approx(torch.full((3,), 0.75))  # another half-life: half the rest
    assert ema.updates == 2 * (half_life // batch)
    assert PhaseConfig(steps=1).ema_decay_per_step() is None


def test_ema_state_round_trips_and_reset_restarts_from_the_model():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model)
    ema.update(model, 0.9)
    copy = EMA(torch.nn.Linear(2, 2))
    copy.load_state_dict(ema.state_dict())
    assert copy.updates == 1 and all(torch.equal(copy.shadow[k], ema.shadow[k]) for k in ema.shadow)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.reset(model)
    assert ema.updates == 0 and torch.equal(ema.shadow["weight"], torch.full((2, 2), 3.0))


def test_cost_meter_arithmetic(monkeypatch):
    clock = iter([100.0, 110.0, 110.0, 110.0, 130.0, 130.0])
    monkeypatch.setattr("microdit.train.cost.time.perf_counter", lambda: next(clock))
    meter = CostMeter(price_per_hour=3.79, devices=8, peak_flops_per_device=989e12)
    meter.start()  # t = 100
    meter.step(2048, 2048 * 64, 2048 * 282e9)  # t = 110: 10 s
    window = meter.window()  # t = 110
    assert meter.seconds == 10.0 and meter.images == 2048
    assert meter.device_hours == pytest.approx(10 * 8 / 3600)
    assert meter.dollars == pytest.approx(10 * 8 / 3600 * 3.79)
    assert meter.dollars_per_second() == pytest.approx(8 * 3.79 / 3600)
    assert window["images_per_s"] == pytest.approx(204.8)
    assert window["tokens_per_s"] == pytest.approx(204.8 * 64)
    assert window["flops_per_s"] == pytest.approx(204.8 * 282e9)
    assert window["mfu"] == pytest.approx(204.8 * 282e9 / (989e12 * 8))
    assert window["cost_usd"] == meter.dollars and window["images_seen"] == 2048

    resumed = CostMeter(price_per_hour=3.79, devices=8, peak_flops_per_device=None)
    resumed.load_state_dict(meter.state_dict())
    resumed.start()  # t = 110: a restarted worker's clock restarts, the bill carries on
    resumed.step(2048, 0, 0.0)  # t = 130: 20 s more
    assert resumed.seconds == 30.0 and resumed.images == 4096
    assert resumed.dollars == pytest.approx(30 * 8 / 3600 * 3.79)
    assert "mfu" not in resumed.window()  # CPU: no peak, FLOP/s only


def test_cost_meter_windows_accumulate_steps_then_restart(monkeypatch):
    """A window sums every step since the last report (sub-second windows are not rounded up) and
    the next window starts empty; a first step without start() bills nothing before itself."""
    clock = iter([49.0, 50.0, 50.25, 50.5, 50.5, 52.5])
    monkeypatch.setattr("microdit.train.cost.time.perf_counter", lambda: next(clock))
    meter = CostMeter(price_per_hour=2.0, devices=4, peak_flops_per_device=1e12)
    meter.step(8, 80, 8e9)  # reads t = 49, no start() yet: start() reads t = 50 and the step bills 0 s
    assert meter.seconds == 0.0 and meter.images == 8
    meter.step(8, 80, 8e9)  # t = 50.25
    assert meter.seconds == pytest.approx(0.25) and meter.images == 16
    first = meter.window()  # t = 50.5: 16 images, 160 tokens, 1.6e10 FLOPs since start() at t = 50
    assert first == {"images_per_s": 32.0, "tokens_per_s": 320.0, "flops_per_s": 3.2e10,
                     "gpu_hours": pytest.approx(0.25 * 4 / 3600), "cost_usd": pytest.approx(0.25 * 4 / 3600 * 2.0),
                     "images_seen": 16.0, "mfu": pytest.approx(3.2e10 / 4e12)}
    meter.step(4, 40, 4e9)  # t = 50.5
    second = meter.window()  # t = 52.5: only the step since the last window, over 2 s
    assert (second["images_per_s"], second["tokens_per_s"], second["flops_per_s"]) == (2.0, 20.0, 2e9)
    assert second["images_seen"] == 20.0


def test_step_generator_depends_only_on_seed_rank_step_micro():
    def draw(*args):
        return torch.randn(4, generator=step_generator(*args, torch.device("cpu")))

    assert torch.equal(draw(0, 1, 7, 0), draw(0, 1, 7, 0))
    torch.manual_seed(123)  # the global RNG does not matter
    assert torch.equal(draw(0, 1, 7, 0), draw(0, 1, 7, 0))
    variants = [draw(0, 1, 7, 0), draw(1, 1, 7, 0), draw(0, 0, 7, 0), draw(0, 1, 8, 0), draw(0, 1, 7, 1)]
    for i, a in enumerate(variants):
        for b in variants[i + 1 :]:
            assert not torch.equal(a, b)


def test_step_streams_never_collide_across_ranks_steps_and_micro_batches():
    """The old linear mix gave (rank 1, step s) the stream of (rank 0, step s+99, micro 8): every
    (seed, rank, step, micro) in a realistic grid must get its own seed."""
    def seed_of(*args):
        return step_generator(*args, torch.device("cpu")).initial_seed()

    assert seed_of(0, 1, 5, 0) != seed_of(0, 0, 5 + 99, 8)
    seeds = {seed_of(seed, rank, step, micro)
             for seed in (0, 1) for rank in range(8) for step in range(400) for micro in range(16)}
    assert len(seeds) == 2 * 8 * 400 * 16
    assert all(0 <= s < 2**63 for s in seeds)


def test_loss_decreases_when_overfitting_a_fixed_batch():
    """Nano_4 + EDM with a fixed batch, sigma and noise: 60 AdamW steps cut the loss by more than half."""
    from microdit.diffusion import EDMDenoiser, edm_loss
    from microdit.model import MicroDiT
    from microdit.model.sizes import model_config

    torch.manual_seed(0)
    config = model_config("MicroDiT_Nano_4", latent_channels=3, caption_dim=384)
    model = MicroDiT(config).train()
    denoiser = EDMDenoiser(model)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 3, 32, 32, generator=gen).clamp(-1, 1)  # (N, C, H, W)
    y = torch.randn(8, 32, 384, generator=gen)  # (N, L, Dy)
    sigma = torch.exp(-0.6 + 1.2 * torch.randn(8, generator=gen))  # (N,)
    noise = torch.randn(8, 3, 32, 32, generator=gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(60):
        loss = edm_loss(denoiser, x0, y, p_mean=-0.6, p_std=1.2, sigma=sigma, noise=noise).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
