"""``crumple demo``: the article's two-weight network (:mod:`crumple.examples.seed`), or with
``--lm`` the small language model (:mod:`crumple.cli.lm`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from crumple.cli import lm
from crumple.cli import options as types

ABOUT = (
    "the two-weight network of the article: surface, SGD path, HTML page",
    "Train the article's two-weight network, compute its test-MSE surface "
    "over a grid of the two weights, and write an HTML page and the data.",
)


def add(commands) -> None:
    demo = types.command(commands, "demo", ABOUT, execute)
    add = demo.add_argument
    number, positive, count = types.finite_float, types.positive_float, types.int_at_least
    for flag, dest, text in (
        ("--min", "w_min", "lowest weight value on both axes (default -2)"),
        ("--max", "w_max", "grid end, excluded as in numpy.arange (default 2)"),
    ):
        add(flag, dest=dest, type=number, help=text)
    add(
        "--step",
        type=positive("--step"),
        help="grid spacing (default 0.05: 80 x 80 points)",
    )
    add("--epochs", type=count("--epochs", 0), help="training epochs (default 25)")
    add("--lr", type=positive("--lr"), help="learning rate (default 0.01)")
    add(
        "--optimizer",
        choices=types.OPTIMIZERS,
        help="sgd, momentum (0.9) or adam (default sgd)",
    )
    add(
        "--compare",
        type=types.optimizers,
        metavar="OPT,OPT,...",
        help="train each of these optimizers from the same start and draw all paths, "
        "e.g. sgd,momentum,adam",
    )
    add(
        "--seed",
        type=count("--seed", 0),
        default=0,
        help="seed for the data and the batch order (default 0)",
    )
    add(
        "--batch-size",
        type=count("--batch-size", 1),
        help="training batch size (default 64)",
    )
    add("--out", type=Path, help="output folder (default out/demo, or out/lm with --lm)")
    demo.set_defaults(**{dest: default for dest, (_, default) in lm.ARTICLE.items()})
    lm.add_options(demo)


def execute(args: argparse.Namespace) -> None:
    from crumple.run.lock import writer

    if lm.chosen(args):
        with writer(args.out):  # the one writer of --out: another is refused before training
            return lm.execute(args)
    n = types.demo_grid_size(args.w_min, args.w_max, args.step)
    with writer(args.out):
        _train_and_write(args, n)


def _train_and_write(args: argparse.Namespace, n: int) -> None:
    """The article's run of ``execute`` (an ``n`` x ``n`` grid), with --out held."""
    from crumple.examples import seed

    optimizers = args.compare or (args.optimizer,)
    print(
        f"crumple demo: {n} x {n} grid, {args.epochs} epochs of {', '.join(optimizers)}, "
        f"lr {args.lr:g}"
    )
    start = time.perf_counter()
    result = seed.run(
        w_min=args.w_min,
        w_max=args.w_max,
        step=args.step,
        epochs=args.epochs,
        lr=args.lr,
        optimizers=optimizers,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    page_path, data_path = seed.write(result, args.out)
    ds = result.surface
    print(
        f"surface: {ds.loss.size:,} points in {ds.attrs['seconds'] * 1e3:.0f} ms; final test MSE "
        + ", ".join(f"{name} {float(p.loss[-1]):.4f}" for name, p in result.paths.items())
        + f"; total {time.perf_counter() - start:.1f} s"
    )
    outside = seed.points_outside(result)
    if outside:
        print(f"{outside} path points lie outside the grid; widen --min/--max to see them on it")
    print(f"wrote {page_path} and {data_path}")
