"""The shipped recipes and sweep specs travel in the wheel: an installed (not editable) package
runs ``microdit sweep quickstart --dry-run`` from a directory that has no ``search_spaces/``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from microdit.config.shipped import RECIPES, SWEEPS, resolve, shipped_names
from microdit.config.sweep import load_sweep

REPO = Path(__file__).resolve().parents[1]


def test_package_links_the_root_search_spaces():
    """One copy of each spec: the package's folder is the repository's, not a duplicate."""
    link = REPO / "platform" / "microdit" / "search_spaces"
    assert link.is_symlink() and link.resolve() == (REPO / "search_spaces").resolve()
    assert shipped_names(SWEEPS) == sorted(p.stem for p in (REPO / "search_spaces").glob("*.yaml"))
    assert {"demo", "paper"} <= set(shipped_names(RECIPES))


def test_local_file_wins_over_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "search_spaces" in str(resolve("quickstart", SWEEPS))
    (tmp_path / "quickstart").write_text("a local file named like a shipped spec")
    assert resolve("quickstart", SWEEPS) == Path("quickstart")


def test_wheel_ships_sweep_specs(tmp_path):
    src = tmp_path / "src"  # build from a copy: no build/ or egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "platform", src / "platform", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "search_spaces", src / "search_spaces")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("microdit-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=120)

    work = tmp_path / "fresh"  # no search_spaces/ here, and the checkout is not on the path first
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "MICRODIT_ROOT": str(tmp_path / "root")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=120)

    where = run("-c", "import microdit; print(microdit.__file__)")
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    done = run("-m", "microdit", "sweep", "quickstart", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"trials: {load_sweep('quickstart').num_trials()};" in done.stdout, done.stdout
    helped = run("-m", "microdit", "sweep", "--help")
    assert "quickstart, quickstart_asha, synthetic_mix" in " ".join(helped.stdout.split()), helped.stdout
