"""Benchmarks, one module per area (``model``, ``data``, ``evaluate``, ``train``, ``sweep``).

Each module exposes ``main(argv: list[str] | None) -> int`` and is run through the thin
dispatcher ``python jobs/benchmark.py <name> [args]``. They print their figures beside what the
analytic models predict, so a regression is visible without a previous run to compare with.
"""
