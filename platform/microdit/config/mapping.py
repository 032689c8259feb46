"""Build a config dataclass from a YAML mapping: unknown keys are errors that name the section."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from microdit.errors import ConfigError


def from_mapping(cls: type, where: str, data: Any) -> Any:
    """``cls(**data)`` with errors naming ``where``; a ``_where`` field, if the class has one,
    receives the location so its own validation messages can name it (e.g. ``phases[2]``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(known - {'_where'})}")
    try:
        return cls(**data, _where=where) if "_where" in known else cls(**data)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None
