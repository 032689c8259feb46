"""The one typed, validated config layer: pydantic v2 models with errors that name the dotted path.

Every config (model, data, recipe, sweep) derives from ``StrictModel``: unknown keys are rejected,
numbers given as strings by YAML 1.1 (``1e-3``) are parsed, ``1.5`` is not an integer, ``maybe``
is not a boolean, NaN/inf are refused. ``validate_config`` turns pydantic's ``ValidationError``
into one ``ConfigError`` whose lines read ``phases[0].lr='abc': Input should be a valid number``,
so the CLI prints the full dotted path, the bad value and what is allowed.

Cross-field rules raise ``FieldError(field, value, msg)`` from a model validator; the field is
joined to the location of the model that raised it (``phases[2]`` + ``mask_ratio``).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from microdit.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class FieldError(ValueError):
    """A cross-field rule broken: names the field (relative to the model), its value and the fix."""

    def __init__(self, field: str, value: Any, msg: str):
        super().__init__(f"{field}={value!r}: {msg}")
        self.field, self.value, self.msg = field, value, msg


def need(cond: bool, field: str, value: Any, msg: str) -> None:
    """Raise ``FieldError`` unless ``cond`` (inside model validators)."""
    if not cond:
        raise FieldError(field, value, msg)


class StrictModel(BaseModel):
    """Base of every config: unknown keys are errors; values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True,
                              protected_namespaces=(), validate_default=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-able data (tuples become lists), the inverse of ``from_dict``."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls: type[T], data: Any, where: str = "") -> T:
        return validate_config(cls, data, where)


def dotted(loc: tuple[Any, ...], prefix: str = "") -> str:
    """('phases', 0, 'lr') -> 'phases[0].lr' (with an optional prefix such as 'model')."""
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _lookup(data: Any, loc: tuple[Any, ...]) -> tuple[bool, Any]:
    node = data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, node


def format_errors(err: ValidationError, data: Any, where: str = "") -> str:
    """One line per error: ``path=value: what is allowed``."""
    lines = []
    for item in err.errors(include_url=False):
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            path = dotted(loc, where)
            path = f"{path}.{cause.field}" if path else cause.field
            lines.append(f"{path}={cause.value!r}: {cause.msg}")
            continue
        if isinstance(cause, ConfigError):
            lines.append(str(cause))
            continue
        path = dotted(loc, where) or where or "config"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key; {_allowed_keys(err.title, loc)}")
            continue
        if item["type"] == "missing":
            lines.append(f"{path}: missing (required)")
            continue
        found, value = _lookup(data, loc) if loc else (False, None)  # a rule on the whole config: no value dump
        lines.append(f"{path}={value!r}: {msg}" if found else f"{path}: {msg}")
    return "; ".join(dict.fromkeys(lines))


def _allowed_keys(title: str, loc: tuple[Any, ...]) -> str:
    model = _REGISTRY.get(title)
    node: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or node is None:
            continue
        field = node.model_fields.get(part) if hasattr(node, "model_fields") else None
        node = _model_of(field.annotation) if field else None
    if node is None or not hasattr(node, "model_fields"):
        return "check the spelling"
    return f"allowed: {', '.join(sorted(node.model_fields))}"


def _model_of(annotation: Any) -> Any:
    """The StrictModel inside ``X | None`` / ``list[X]`` annotations, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


_REGISTRY: dict[str, type[BaseModel]] = {}


def validate_config(cls: type[T], data: Any, where: str = "") -> T:
    """``cls.model_validate(data)`` with a ``ConfigError`` naming every bad dotted path."""
    _REGISTRY.setdefault(cls.__name__, cls)
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, data, where)) from None
