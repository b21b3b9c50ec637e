"""The ``crumple`` command."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crumple.errors import CrumpleError

MAX_POINTS_PER_AXIS = 2000


def _positive_float(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a positive number, got {text!r}")
        return value

    return parse


def _int_at_least(name: str, low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{name} must be at least {low}, got {value}")
        return value

    return parse


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from crumple import __version__
    from crumple.examples.seed import OPTIMIZERS

    parser = argparse.ArgumentParser(
        prog="crumple",
        description="Loss landscapes of PyTorch models in weight space, with the optimizer's path.",
    )
    parser.add_argument("--version", action="version", version=f"crumple {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="the two-weight network of the article: surface, SGD path, HTML page",
        description="Train the article's two-weight network, compute its test-MSE surface "
        "over a grid of the two weights, and write an HTML page and the data.",
    )
    demo.add_argument(
        "--min",
        dest="w_min",
        type=_finite_float,
        default=-2.0,
        help="lowest weight value on both axes (default -2)",
    )
    demo.add_argument(
        "--max",
        dest="w_max",
        type=_finite_float,
        default=2.0,
        help="grid end, excluded as in numpy.arange (default 2)",
    )
    demo.add_argument(
        "--step",
        type=_positive_float("--step"),
        default=0.05,
        help="grid spacing (default 0.05: 80 x 80 points)",
    )
    demo.add_argument(
        "--epochs",
        type=_int_at_least("--epochs", 0),
        default=25,
        help="training epochs (default 25)",
    )
    demo.add_argument(
        "--lr", type=_positive_float("--lr"), default=1e-2, help="learning rate (default 0.01)"
    )
    demo.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="sgd",
        help="sgd, momentum (0.9) or adam (default sgd)",
    )
    demo.add_argument(
        "--seed",
        type=_int_at_least("--seed", 0),
        default=0,
        help="seed for the data and the batch order (default 0)",
    )
    demo.add_argument(
        "--batch-size",
        type=_int_at_least("--batch-size", 1),
        default=64,
        help="training batch size (default 64)",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)"
    )
    demo.set_defaults(run=_demo)
    return parser


def _check_grid(args: argparse.Namespace) -> int:
    if args.w_max <= args.w_min:
        raise CrumpleError(
            f"the grid range is empty: --min {args.w_min:g} is not below --max {args.w_max:g}; "
            "give --min < --max"
        )
    n = len(np.arange(args.w_min, args.w_max, args.step))
    if n > MAX_POINTS_PER_AXIS:
        raise CrumpleError(
            f"--step {args.step:g} gives {n} points per axis ({n * n:,} in all); at most "
            f"{MAX_POINTS_PER_AXIS} per axis are allowed: raise --step or narrow --min/--max"
        )
    return n


def _demo(args: argparse.Namespace) -> None:
    n = _check_grid(args)
    args.out.mkdir(parents=True, exist_ok=True)

    from crumple.examples import seed

    print(f"crumple demo: {n} x {n} grid, {args.epochs} epochs of {args.optimizer}, lr {args.lr:g}")
    start = time.perf_counter()
    result = seed.run(
        w_min=args.w_min,
        w_max=args.w_max,
        step=args.step,
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    page_path, data_path = seed.write(result, args.out)
    ds = result.surface
    print(
        f"surface: {ds.loss.size:,} points in {ds.attrs['seconds'] * 1e3:.0f} ms; "
        f"final test MSE {float(result.path.loss[-1]):.4f}; "
        f"total {time.perf_counter() - start:.1f} s"
    )
    outside = seed.points_outside(result)
    if outside:
        print(f"{outside} path points lie outside the grid; widen --min/--max to see them on it")
    print(f"wrote {page_path} and {data_path}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except CrumpleError as e:
        parser.exit(2, f"crumple {args.command}: error: {e}\n")
    except KeyboardInterrupt:
        sys.exit(130)
