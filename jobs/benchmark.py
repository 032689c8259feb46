"""`python jobs/benchmark.py {model,data,evaluate,train,sweep,gpu} [args]` (also as a Ray job entry point).

A thin dispatcher: imports ``microdit.benchmarks.<name>`` and calls its ``main(argv)``.
"""

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # a working-dir upload

BENCHMARKS = ("model", "data", "evaluate", "train", "sweep", "gpu")
USAGE = f"usage: python jobs/benchmark.py {{{','.join(BENCHMARKS)}}} [args]  (--help after the name for its options)"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(
            f"benchmark.py: error: unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    try:
        module = importlib.import_module(f"microdit.benchmarks.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"microdit.benchmarks.{name}":
            print(
                f"benchmark.py: error: benchmark {name!r} is not available in this checkout "
                f"(no module microdit.benchmarks.{name} yet)",
                file=sys.stderr,
            )
            return 2
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
