"""The ``crumple`` command: one module per subcommand (``add`` makes its parser, ``execute``
runs it), their shared options in :mod:`crumple.cli.options`. Library errors name
arguments; the subcommands name their flags. Nothing heavy is imported before the
arguments are parsed, and nothing in crumple imports this package."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings
from collections.abc import Sequence

from crumple.cli import connect, demo, export, hessian, info, line, plot, surface
from crumple.cli import options as types
from crumple.errors import CrumpleError

SUBCOMMANDS = (demo, surface, line, connect, hessian, plot, export, info)  # in the order of --help


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``crumple`` command and its subcommands.

    Example:
        >>> build_parser().parse_args(["info", "run"]).folder
        PosixPath('run')
    """
    from crumple.version import __version__

    parser = argparse.ArgumentParser(
        prog="crumple",
        description="Loss landscapes of PyTorch models in weight space, with the optimizer's path.",
    )
    parser.add_argument("--version", action="version", version=f"crumple {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for subcommand in SUBCOMMANDS:
        subcommand.add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(types.joined_negative_values(sys.argv[1:] if argv is None else argv))
    formatwarning = warnings.formatwarning
    warnings.formatwarning = functools.partial(_warning, args.command)
    try:
        args.execute(args)
    except CrumpleError as e:
        parser.exit(2, f"crumple {args.command}: error: {e}\n")
    except BrokenPipeError:  # `crumple info RUN | head -3`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except KeyboardInterrupt:
        out = args.out if args.command in ("surface", "line") else None  # those that resume
        kept = (
            f"; the finished tiles are kept in {out}: run the same command to resume" if out else ""
        )
        print(f"crumple {args.command}: stopped{kept}", file=sys.stderr)
        sys.exit(130)
    finally:
        warnings.formatwarning = formatwarning


def _warning(command: str, message, *_, **__) -> str:
    """A warning as one line of the command's own (not Python's file, line and source)."""
    return f"crumple {command}: warning: {str(message).removeprefix('crumple: ')}\n"
