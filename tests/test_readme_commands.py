"""Every command the README shows still works as written: each fenced ``microdit …``,
``python -m microdit …`` and ``python jobs/….py …`` line (also after ``ray job submit … --``) is parsed
by the real argument parser, names that must exist (specs, recipes, --set keys) are loaded, and the
cheap ``--dry-run`` lines run. ``.ci/run`` installs and tests exactly as the README says."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from microdit.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
SUBCOMMANDS = ("model", "prepare", "train", "evaluate", "sweep", "compare")


def shell_commands(text: str) -> list[list[str]]:
    """The commands of the README's ```bash blocks, as argv lists (continuations joined, comments,
    ``VAR=value`` prefixes and ``&&`` chains split off)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens:
                cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                command, tokens = tokens[:cut], tokens[cut + 1:]
                while command and re.fullmatch(r"[A-Z_]+=\S*", command[0]):
                    command = command[1:]
                if command:
                    commands.append(command)
    return commands


def microdit_argv(command: list[str]) -> list[str] | None:
    """``microdit`` arguments of a command (``jobs/<sub>.py`` as its subcommand), or None."""
    if command[0] == "ray" and "--" in command:
        command = command[command.index("--") + 1:]
    if command[0] == "microdit":
        return command[1:]
    if command[:3] == ["python", "-m", "microdit"]:
        return command[3:]
    if command[0] == "python" and len(command) > 1 and command[1].startswith("jobs/"):
        script = REPO / command[1]
        assert script.is_file(), f"README names {command[1]}, which does not exist"
        return [script.stem, *command[2:]]
    return None


COMMANDS = [argv for argv in map(microdit_argv, shell_commands(README)) if argv is not None]


def test_the_readme_shows_the_main_commands():
    shown = {argv[0] for argv in COMMANDS if argv}
    assert set(SUBCOMMANDS) | {"benchmark"} <= shown, shown
    assert ["sweep", "quickstart"] in COMMANDS


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_readme_command_parses(argv, monkeypatch):
    monkeypatch.chdir(REPO)  # the README's commands run from the checkout (search_spaces/..., jobs/...)
    if argv[0] == "benchmark":  # jobs/benchmark.py NAME [args]: the benchmark's own parser
        jobs = importlib.import_module("microdit.benchmarks." + argv[1])
        if "--help" not in argv and hasattr(jobs, "build_parser"):
            jobs.build_parser().parse_args(argv[2:])
        return
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as err:
        pytest.fail(f"`microdit {' '.join(argv)}` does not parse (exit {err.code})")
    assert isinstance(args, argparse.Namespace)
    if args.command == "sweep":
        from microdit.config.sweep import load_sweep

        load_sweep(args.spec)  # the spec exists: a shipped name or a path in this checkout
    if args.command == "train":
        from microdit.config.recipe import load_recipe

        load_recipe(args.recipe, args.overrides)  # the recipe exists and every --set key is valid


DRY_RUNS = [argv for argv in COMMANDS if "--dry-run" in argv]


@pytest.mark.parametrize("argv", DRY_RUNS, ids=[" ".join(a)[:60] for a in DRY_RUNS])
def test_readme_dry_runs_run(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MICRODIT_ROOT", str(tmp_path))  # nothing read from or written to ~/microdit
    monkeypatch.chdir(tmp_path)  # shipped names, not the checkout's files
    assert main(argv) == 0
    printed = capsys.readouterr().out
    if argv[:2] == ["model", "--size"] and argv[2] == "MicroDiT_XL_2":  # the README quotes its counts
        assert "1,165,442,320" in printed and "712,457,488" in printed


def test_mlflow_ui_command_is_the_one_the_console_prints(monkeypatch):
    from microdit.console import mlflow_ui_command
    from microdit.tracking import tracking_uri

    monkeypatch.setenv("HOME", "/home/you")
    monkeypatch.delenv("MICRODIT_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    command = mlflow_ui_command(tracking_uri(None))
    assert command in README  # the excerpt of the quickstart's output
    assert command.replace("/home/you", "$HOME") in README  # the command to copy


def test_ci_installs_and_tests_as_the_readme_says():
    ci = [line.split("#")[0].strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    readme = shell_commands(README)
    installs = [shlex.split(line)[2:] for line in ci if line.startswith("python -m pip install")]
    assert len(installs) == 3 and installs[0][2].startswith("torch==")
    assert all(argv in readme for argv in installs), installs  # every install line, as the README writes it
    assert ["pytest", "-q"] in readme and "python -m pytest -q" in ci
    assert "ruff check platform jobs tests" in ci and "`ruff check platform jobs tests`" in README
