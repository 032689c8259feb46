"""The YAML files shipped inside the package: training recipes and sweep specs.

Both are package data read through ``importlib.resources``, so a shipped name works from a wheel,
an editable install and a source checkout alike. ``microdit/search_spaces`` is a symlink to the
repository's ``search_spaces/`` (one copy of each spec): setuptools copies the files it points to
into wheels and sdists. A local file path always wins over a shipped name.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from microdit.errors import ConfigError

if TYPE_CHECKING:
    from importlib.abc import Traversable

RECIPES = "recipes"
SWEEPS = "search_spaces"
WHAT = {RECIPES: "recipe", SWEEPS: "sweep spec"}


def shipped_names(folder: str) -> list[str]:
    """The names (file stems) of the YAML files shipped in ``folder`` (``RECIPES`` or ``SWEEPS``)."""
    root = files("microdit") / folder
    if not root.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve(ref: str, folder: str) -> Path | Traversable:
    """A local YAML path, else the shipped ``<ref>.yaml`` (both have ``read_text``)."""
    path = Path(ref)
    if path.is_file():
        return path
    shipped = files("microdit") / folder / f"{ref}.yaml"
    if shipped.is_file():
        return shipped
    what = WHAT[folder]
    raise ConfigError(f"{what} {ref!r}: no such file, and not a shipped {what} "
                      f"({', '.join(shipped_names(folder))})")
