"""Dotted-path access to nested recipe dicts: ``phases[0].mask_ratio``, ``model.mixer_depth``.

Used by ``microdit train --set key=value`` and by sweep specs, so both address recipe keys
the same way. Values given as strings are parsed as YAML scalars (``0.5``, ``true``, ``null``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import yaml

from microdit.errors import ConfigError

_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_path(path: str) -> list[str | int]:
    """'phases[0].mask_ratio' -> ['phases', 0, 'mask_ratio']."""
    parts: list[str | int] = []
    pos = 0
    for match in _TOKEN.finditer(path):
        if match.start() != pos and path[pos:match.start()] != ".":
            raise ConfigError(f"bad key path {path!r}: use dots and [index], e.g. phases[0].mask_ratio")
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        pos = match.end()
    if not parts or pos != len(path):
        raise ConfigError(f"bad key path {path!r}: use dots and [index], e.g. phases[0].mask_ratio")
    return parts


def set_path(tree: dict[str, Any], path: str, value: Any, *, create: bool = True) -> None:
    """Set ``value`` at ``path`` in place. Missing mapping keys are created when ``create``."""
    parts = parse_path(path)
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(str(p) for p in parts[: i + 1])
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                size = len(node) if isinstance(node, list) else "not a list"
                raise ConfigError(f"key {path!r}: index [{part}] out of range at {where} ({size})")
            if last:
                node[part] = value
            else:
                node = node[part]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"key {path!r}: {where} is not a mapping")
            if last:
                if not create and part not in node:
                    raise ConfigError(f"key {path!r}: unknown key {part!r}; known: {sorted(node)}")
                node[part] = value
            else:
                if part not in node or node[part] is None:
                    if not create:
                        raise ConfigError(f"key {path!r}: unknown key {part!r}; known: {sorted(node)}")
                    node[part] = {}
                node = node[part]


def get_path(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in parse_path(path):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            raise ConfigError(f"key {path!r} does not exist in the recipe") from None
    return node


def apply_overrides(tree: dict[str, Any], assignments: dict[str, Any] | list[str]) -> dict[str, Any]:
    """A copy of ``tree`` with overrides applied; ``['a.b=1', ...]`` strings are parsed as YAML."""
    result = copy.deepcopy(tree)
    if isinstance(assignments, list):
        parsed = {}
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected key=value, e.g. phases[0].mask_ratio=0.5")
            key, raw = item.split("=", 1)
            parsed[key.strip()] = yaml.safe_load(raw)
        assignments = parsed
    for key, value in assignments.items():
        set_path(result, key, value)
    return result


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists -> {'phases.0.mask_ratio': 0.75, ...} (for MLflow params)."""
    if isinstance(tree, dict):
        items: dict[str, Any] = {}
        for key, value in tree.items():
            items.update(flatten(value, f"{prefix}{key}."))
        return items
    if isinstance(tree, list) and any(isinstance(v, (dict, list)) for v in tree):
        items = {}
        for i, value in enumerate(tree):
            items.update(flatten(value, f"{prefix}{i}."))
        return items
    return {prefix[:-1]: tree}



ABSENT = "<absent>"  # config_changes: a key only one side has


def config_changes(old: Any, new: Any, path: tuple[Any, ...] = (),
                   whole: Callable[[tuple[Any, ...]], bool] = lambda path: False) -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every difference between two resolved configs (``phases[0].lr``).

    Mappings and equal-length lists are compared item by item, except at paths where ``whole``
    says so; a key only one side has shows ``ABSENT`` on the other."""
    from microdit.config.base import dotted

    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict) and not whole(path):
        changes = []
        for key in [*old, *(k for k in new if k not in old)]:
            if key in old and key in new:
                changes += config_changes(old[key], new[key], (*path, key), whole)
            else:
                changes.append((dotted((*path, key)), old.get(key, ABSENT), new.get(key, ABSENT)))
        return changes
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and not whole(path):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in config_changes(a, b, (*path, i), whole)]
    return [(dotted(path) or "config", old, new)]


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    """'phases[0].lr: 0.001 -> 0.0005, seed: 0 -> 1' for an error message."""
    return ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
