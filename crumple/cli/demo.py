"""``crumple demo``: the article's two-weight network (:mod:`crumple.examples.seed`), with
``--lm`` the small language model (:mod:`crumple.cli.lm`), or with ``--eos`` the edge of
stability (:mod:`crumple.cli.eos`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from crumple.cli import eos, lm
from crumple.cli import options as types

ABOUT = (
    "the two-weight network of the article: surface, SGD path, HTML page",
    "Train the article's two-weight network, compute its test-MSE surface "
    "over a grid of the two weights, and write an HTML page and the data. Without --min and "
    "--max the grid is the article's, -2 .. 2, widened to hold every path point unless the "
    "training is the article's own.",
)


def add(commands) -> None:
    demo = types.command(commands, "demo", ABOUT, execute)
    add = demo.add_argument
    number, positive, count = types.finite_float, types.positive_float, types.int_at_least
    for flag, dest, text in (
        ("--min", "w_min", "lowest weight value on both axes (default -2, or to hold the paths)"),
        ("--max", "w_max", "grid end, excluded as in numpy.arange (default 2, or to hold them)"),
    ):
        add(flag, dest=dest, type=number, help=text)
    add(
        "--step",
        type=positive("--step"),
        help="grid spacing (default 0.05: 80 x 80 points)",
    )
    add("--epochs", type=count("--epochs", 0), help="training epochs (default 25)")
    add("--lr", type=positive("--lr"), help="learning rate (default 0.01; --eos: 0.05)")
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
    eos.add_options(demo)


def execute(args: argparse.Namespace) -> None:
    from crumple.run.lock import writer

    demo = lm.chosen(args)
    if demo != "article":
        with writer(args.out):  # the one writer of --out: another is refused before training
            return (lm.execute if demo == "lm" else eos.execute)(args)
    from crumple.examples.seed import ARTICLE_RANGE

    given = not (args.w_min is None and args.w_max is None)
    args.w_min = ARTICLE_RANGE[0] if args.w_min is None else args.w_min
    args.w_max = ARTICLE_RANGE[1] if args.w_max is None else args.w_max
    n = types.demo_grid_size(args.w_min, args.w_max, args.step)
    with writer(args.out):
        _train_and_write(args, n, given)


def _article_training(args: argparse.Namespace) -> bool:
    """Whether the demo trains as the article does (its grid is then kept as it is)."""
    training = ("epochs", "lr", "optimizer", "compare", "batch_size")
    article = {d: default for d, (_, default) in lm.ARTICLE.items()} | {"lr": lm.ARTICLE_LR}
    return args.seed == 0 and all(getattr(args, d) == article[d] for d in training)


def _train_and_write(args: argparse.Namespace, n: int, given: bool) -> None:
    """The article's run of ``execute`` (an ``n`` x ``n`` grid; unless ``given`` or trained
    as the article, widened to hold the paths), with --out held."""
    from crumple.examples import seed

    hold_paths = not (given or _article_training(args))
    optimizers = args.compare or (args.optimizer,)
    widened = ", widened to hold the paths" if hold_paths else ""
    print(
        f"crumple demo: {n} x {n} grid{widened}, {args.epochs} epochs of "
        f"{', '.join(optimizers)}, lr {args.lr:g}"
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
        hold_paths=hold_paths,
    )
    if hold_paths:
        shape = " x ".join(map(str, result.surface.loss.shape))
        print(f"grid: {shape}, {result.surface.attrs['grid_chosen']}")
    page_path, data_path = seed.write(result, args.out)
    ds = result.surface
    print(
        f"surface: {ds.loss.size:,} points in {ds.attrs['seconds'] * 1e3:.0f} ms; final test MSE "
        + ", ".join(f"{name} {float(p.loss[-1]):.4f}" for name, p in result.paths.items())
        + f"; total {time.perf_counter() - start:.1f} s"
    )
    outside = seed.points_outside(result)
    if outside:
        total = sum(p.sizes["step"] for p in result.paths.values())
        grid = "the grid given" if given else "the article's grid, kept as the article has it"
        print(
            f"{outside} of {total} path points lie outside {grid}; widen --min/--max to see "
            "them on it"
        )
    print(f"wrote {page_path} and {data_path}")
