"""`python jobs/mutation.py [--workdir DIR] [--only GLOB ...]`: mutation testing and its kill rate per module.

mutmut (configured in pyproject's ``[tool.mutmut]``) only knows ``./``, ``src/`` and ``source/``
as source roots, and our layout's source root is ``platform/``. This script stages a copy of the
project with ``platform/`` as ``src/`` (links followed, so the shipped sweep specs come along) in
a work folder, runs ``mutmut run`` there, and reads mutmut's per-file results to print, per
module: mutants, killed, survived, no tests, timeouts and the kill rate. Survivors are listed in
``<workdir>/survivors.txt``; ``cd <workdir> && mutmut show NAME`` prints a survivor's diff.

Not part of ``.ci/run``: a full run takes hours on 2 cores (config and train-state mutants run at
about 35 a minute, FID, model-config and pipeline mutants at about 4, since they run the evaluation
tests). ``--only`` takes module globs or mutant names. Re-running with the same ``--workdir``
re-stages the sources and lets mutmut start over.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATUS = {0: "survived", 1: "killed", 3: "killed", 5: "no tests", 33: "no tests", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def stage(workdir: Path) -> None:
    """A copy of the project with platform/ as src/ (mutmut's source root); old results removed."""
    if workdir.exists():
        shutil.rmtree(workdir)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "platform", workdir / "src", ignore=ignore)  # follows the search_spaces link
    shutil.copytree(REPO / "tests", workdir / "tests", ignore=ignore)
    shutil.copytree(REPO / "search_spaces", workdir / "search_spaces")
    shutil.copy2(REPO / "pyproject.toml", workdir / "pyproject.toml")


def results(workdir: Path) -> dict[str, Counter]:
    """Status counts per mutated module, from mutmut's ``*.py.meta`` files."""
    by_module: dict[str, Counter] = {}
    survivors = []
    for meta in sorted((workdir / "mutants" / "src").rglob("*.py.meta")):
        module = str(meta.relative_to(workdir / "mutants" / "src"))[: -len(".py.meta")].replace("/", ".")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(STATUS.get(code, "suspicious") for code in codes.values())
        if codes:
            by_module[module] = counts
        survivors += [name for name, code in codes.items() if code == 0]
    (workdir / "survivors.txt").write_text("".join(f"{name}\n" for name in survivors))
    return by_module


def report(by_module: dict[str, Counter]) -> str:
    """The kill-rate table: killed / (killed + survived + no tests); timeouts count as killed."""
    lines = [f"{'module':<32} {'mutants':>7} {'killed':>7} {'survived':>8} {'no tests':>8} {'timeout':>7} {'kill rate':>9}"]
    total: Counter = Counter()
    for module, counts in sorted(by_module.items()):
        total.update(counts)
        lines.append(_row(module, counts))
    lines.append(_row("total", total))
    return "\n".join(lines)


def _row(name: str, counts: Counter) -> str:
    killed = counts["killed"] + counts["timeout"]
    judged = killed + counts["survived"] + counts["no tests"]
    rate = f"{killed / judged:.1%}" if judged else "-"
    return (f"{name:<32} {sum(counts.values()):>7} {counts['killed']:>7} {counts['survived']:>8} "
            f"{counts['no tests']:>8} {counts['timeout']:>7} {rate:>9}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mutation", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/microdit-mutation"), help="staging folder")
    parser.add_argument("--only", nargs="*", default=[], metavar="GLOB",
                        help="mutant name globs, e.g. 'microdit.train.schedule*' (default: every configured module)")
    parser.add_argument("--max-children", type=int, default=None, help="parallel mutant runs (mutmut's default: CPUs)")
    parser.add_argument("--report-only", action="store_true", help="print the table of an earlier run in --workdir")
    args = parser.parse_args(argv)
    if shutil.which("mutmut") is None:
        print("mutation: mutmut is not installed: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    if not args.report_only:
        stage(args.workdir)
        command = ["mutmut", "run", *args.only]
        if args.max_children:
            command += ["--max-children", str(args.max_children)]
        run = subprocess.run(command, cwd=args.workdir, stdout=subprocess.DEVNULL)  # its spinner floods logs
        if run.returncode != 0:
            print(f"mutation: mutmut exited with {run.returncode}; rerun in {args.workdir} to see why", file=sys.stderr)
            return run.returncode
    print(report(results(args.workdir)))
    print(f"survivors: {args.workdir / 'survivors.txt'} (cd {args.workdir} && mutmut show NAME)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
