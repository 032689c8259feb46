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
