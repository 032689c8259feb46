"""Dotted-path access to nested recipe dicts: ``phases[0].mask_ratio``, ``model.mixer_depth``.

Used by ``microdit train --set key=value`` and by sweep specs, so both address recipe keys
the same way. Values given as strings are parsed as YAML scalars (``0.5``, ``true``, ``null``).
"""

from __future__ import annotations

import copy
import re
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


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths (``phases[0].lr``) where two resolved configs differ: added, removed or changed."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                keys.append(path)
            else:
                keys.extend(changed_keys(old[key], new[key], path))
        return keys
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [k for i, (a, b) in enumerate(zip(old, new)) for k in changed_keys(a, b, f"{prefix}[{i}]")]
    return [] if old == new else [prefix or "<root>"]
