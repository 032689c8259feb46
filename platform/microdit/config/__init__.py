"""Typed, validated configs (dataclasses) for models, data, recipes and sweeps."""
