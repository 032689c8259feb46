"""The console entry: ``python -m microdit``, ``--version``, and a ``--help`` that imports no torch."""

from __future__ import annotations

import subprocess
import sys

from microdit import __version__


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_python_dash_m_and_version():
    done = _run("-m", "microdit", "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"microdit {__version__}"
    done = _run("-m", "microdit", "train", "nosuchrecipe", "--dry-run")
    assert done.returncode == 2 and "nosuchrecipe" in done.stderr


def test_help_builds_without_importing_torch():
    code = ("import sys; from microdit.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    done = _run("-c", code)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_every_option_has_help_and_defaults_are_shown():
    import argparse

    from microdit.cli.main import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == {"model", "prepare", "train", "evaluate", "sweep", "compare"}
    for name, sub in commands.choices.items():
        missing = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
        assert not missing, f"microdit {name}: options without help {missing}"
    text = " ".join(commands.choices["evaluate"].format_help().split())
    assert "MLflow experiment of new evaluate runs (default: microdit-eval)" in text
    assert "generated images (the metric is fid_<N>) (default: 1000)" in text
