"""The MicroDiT network only: no Ray, no data, no diffusion math (see ``microdit.diffusion``).

Exports resolve lazily (PEP 562), so ``microdit.model.sizes`` (size names for ``--help``) loads
without importing torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MicroDiT", "MicroDiTOutput", "ModelConfig"]


def __getattr__(name: str) -> Any:
    if name == "MicroDiT":
        from microdit.model.microdit import MicroDiT

        return MicroDiT
    if name == "MicroDiTOutput":
        from microdit.model.output import MicroDiTOutput

        return MicroDiTOutput
    if name == "ModelConfig":
        from microdit.config.model import ModelConfig

        return ModelConfig
    raise AttributeError(f"module 'microdit.model' has no attribute {name!r}")
