"""Entry point of the ``microdit`` console script.

Each subcommand lives in its own module ``microdit.cli.<name>`` exposing
``add_parser(subparsers)`` (which must set ``func`` on the parser's defaults) so that this file
stays a thin dispatcher. User errors (``ConfigError``) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from microdit.errors import ConfigError

SUBCOMMANDS = ("model", "prepare", "train", "evaluate", "sweep", "compare")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, unless the help already explains it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microdit", description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsFormatter)
    from microdit import __version__

    parser.add_argument("--version", action="version", version=f"microdit {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more output: -v shows Ray/MLflow info logs, -vv also Tune's status tables")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--address", dest="ray_address", default=None, metavar="auto|HOST:PORT",
                        help="join this running Ray cluster (its runs share its resources and queue) instead of "
                             "starting a private local instance for this command (default $RAY_ADDRESS, if set)")
    parser.add_argument("--root", dest="storage_root", default=None,
                        help="storage root for runs, sweeps and prepared sets: a path or a URI such as "
                             "s3://bucket/microdit (default $MICRODIT_ROOT or ~/microdit)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"microdit.cli.{name}")
        except ModuleNotFoundError as err:  # a subcommand not built yet in this checkout
            if err.name == f"microdit.cli.{name}":
                continue
            raise
        module.add_parser(subparsers)
    for sub in subparsers.choices.values():
        sub.formatter_class = DefaultsFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from microdit.console import configure

    configure(-1 if args.quiet else args.verbose)
    if args.ray_address:  # connect_ray joins it (and Ray's own internals resolve it) instead of starting one
        os.environ["RAY_ADDRESS"] = args.ray_address
    if args.storage_root:  # one setting for the whole process and, through the runtime env, every Ray worker
        from microdit.storage import ROOT_ENV, resolve

        os.environ[ROOT_ENV] = resolve(args.storage_root)
    try:
        result = args.func(args)
    except ConfigError as err:
        print(f"microdit {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
