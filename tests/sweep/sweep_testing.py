"""A tiny sweep spec over the tiny demo sets: two short trials on one CPU worker each."""

from __future__ import annotations

from pathlib import Path


def tiny_spec(demo: dict[str, Path], tmp: Path, name: str, *, algorithm: str = "grid", max_trials: int = 2,
              budget_dollars: float | None = None) -> dict:
    space = ({"phases[0].mask_ratio": {"grid": [0.0, 0.5]}} if algorithm == "grid"
             else {"phases[0].mask_ratio": {"uniform": [0.0, 0.6]}})
    return {
        "name": name,
        "base": "demo",
        "overrides": {
            "model.size": "MicroDiT_Nano_4",
            "data.real": str(demo["demo_real"]),
            "data.synthetic": str(demo["demo_synthetic"]),
            "data.shuffle_buffer": 16,
            "phases": [{"name": "only", "resolution": 32, "mask_ratio": 0.5, "steps": 3, "batch_size": 8,
                        "lr": 1.0e-3, "p_mean": -0.6, "p_std": 1.2}],
            "resources.num_workers": 1,
            "resources.cpus_per_worker": 0.5,
            "tracking.log_every_steps": 1,
            "tracking.checkpoint_every_steps": 10,
            "tracking.sample_grid": False,
        },
        "space": space,
        "objectives": [{"metric": "fid_8", "mode": "min"}, {"metric": "cost_usd", "mode": "min"}],
        "trial_budget": {"images": 24},
        "budget": {"max_trials": max_trials, "max_concurrent": 1,
                   **({"dollars": budget_dollars} if budget_dollars else {})},
        "search": {"algorithm": algorithm, "seed": 0},
        "evaluation": {"reference": str(demo["demo_real_heldout"]), "num_samples": 8, "steps": 3, "guidance": 2.0},
        "mlflow_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "storage_path": str(tmp / "runs"),
    }
