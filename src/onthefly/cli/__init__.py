"""Command line: onthefly demo | preview | render | benchmark | train | prepare (also python -m onthefly).

Angles are in degrees here only; the library works in radians. Bad input ends
with a message naming the flag and exit status 2 (1 for a training run that
cannot continue, such as a refused resume).
"""

from __future__ import annotations

import argparse
import sys

from .benchmark import add_benchmark_parser, run_benchmark_command
from .common import HelpFormatter, UsageError
from .pictures import add_picture_parsers, run_demo, run_preview, run_render
from .training import add_prepare_parser, add_train_parser, run_prepare, run_train, train_classifier_from_args, train_from_args

__all__ = ["main", "train_from_args", "train_classifier_from_args"]

COMMANDS = {"demo": run_demo, "preview": run_preview, "render": run_render, "benchmark": run_benchmark_command,
            "train": run_train, "prepare": run_prepare}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onthefly", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_picture_parsers(commands)
    add_benchmark_parser(commands)
    add_train_parser(commands)
    add_prepare_parser(commands)
    return parser


def given_flags(argv: list[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (parsed again with every default removed)."""
    parser = _parser()
    pending = [parser]
    while pending:
        current = pending.pop()
        for action in current._actions:  # argparse has no public way to walk its sub-parsers
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
            elif action.dest != "help":
                action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command", "task"}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (bad input raises :class:`UsageError`, status 2)."""
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, argv)
    except UsageError as error:
        print(f"onthefly {args.command}: error: {error}", file=sys.stderr)
        raise
