"""What a run costs and how fast it goes: images/s, tokens/s, device-hours, dollars, MFU.

Dollars = wall-clock training seconds x billed devices x price per device-hour. The clock covers
everything the devices are held for inside the loop (data waits, logging, evaluation), because
that is what a cloud bill charges. MFU = analytic training FLOPs x images/s / (peak x devices);
on CPU there is no meaningful peak, so achieved FLOP/s is logged instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class CostMeter:
    """Accumulates time and images across steps, phases and restarts (its state is checkpointed)."""

    price_per_hour: float
    devices: int
    peak_flops_per_device: float | None
    seconds: float = 0.0  # device-held seconds so far (all phases, all attempts' checkpointed work)
    images: int = 0
    _window_start: float | None = None
    _window_images: int = 0
    _window_tokens: int = 0
    _window_flops: float = 0.0
    _tick: float | None = None

    def start(self) -> None:
        now = time.perf_counter()
        self._tick = now
        self._window_start = now

    def step(self, images: int, backbone_tokens: int, train_flops: float) -> None:
        """Account one optimizer step of ``images`` global images."""
        now = time.perf_counter()
        if self._tick is None:
            self.start()
            now = self._tick
        self.seconds += now - self._tick
        self._tick = now
        self.images += images
        self._window_images += images
        self._window_tokens += backbone_tokens
        self._window_flops += train_flops

    def tick(self) -> None:
        """Bill the seconds since the last step now (an evaluation), not with the next step."""
        if self._tick is not None:
            now = time.perf_counter()
            self.seconds += now - self._tick
            self._tick = now

    @property
    def device_hours(self) -> float:
        return self.seconds * self.devices / 3600.0

    @property
    def dollars(self) -> float:
        return self.device_hours * self.price_per_hour

    def dollars_per_second(self) -> float:
        return self.devices * self.price_per_hour / 3600.0

    def window(self) -> dict[str, float]:
        """Throughput since the last call (then a new window starts)."""
        now = time.perf_counter()
        elapsed = max(now - (self._window_start or now), 1e-9)
        images_per_s = self._window_images / elapsed
        flops_per_s = self._window_flops / elapsed
        metrics = {
            "images_per_s": images_per_s,
            "tokens_per_s": self._window_tokens / elapsed,
            "flops_per_s": flops_per_s,
            "gpu_hours": self.device_hours,
            "cost_usd": self.dollars,
            "images_seen": float(self.images),
        }
        if self.peak_flops_per_device:
            metrics["mfu"] = flops_per_s / (self.peak_flops_per_device * self.devices)
        self._window_start = now
        self._window_images = self._window_tokens = 0
        self._window_flops = 0.0
        return metrics

    def state_dict(self) -> dict:
        return {"seconds": self.seconds, "images": self.images}

    def load_state_dict(self, state: dict) -> None:
        self.seconds = float(state["seconds"])
        self.images = int(state["images"])
