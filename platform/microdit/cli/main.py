"""Entry point of the ``microdit`` console script.

Each subcommand lives in its own module ``microdit.cli.<name>`` exposing
``add_parser(subparsers)`` (which must set ``func`` on the parser's defaults) so that this file
stays a thin dispatcher. User errors (``ConfigError``) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from microdit.errors import ConfigError

SUBCOMMANDS = ("model", "prepare", "train", "evaluate", "sweep", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microdit", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"microdit.cli.{name}")
        except ModuleNotFoundError as err:  # a subcommand not built yet in this checkout
            if err.name == f"microdit.cli.{name}":
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except ConfigError as err:
        print(f"microdit {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
