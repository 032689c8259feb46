"""The MicroDiT network only: no Ray, no data, no diffusion math (see ``microdit.diffusion``)."""

from microdit.config.model import ModelConfig
from microdit.model.microdit import MicroDiT
from microdit.model.output import MicroDiTOutput

__all__ = ["MicroDiT", "MicroDiTOutput", "ModelConfig"]
