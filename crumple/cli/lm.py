"""``crumple demo --lm``: the small language model of :mod:`crumple.examples.tinylm` instead
of the article's network. Nothing heavy is imported before the arguments are parsed."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from crumple.cli import options as types
from crumple.errors import CrumpleError, require_extra

# the article's options, which do not apply to the language model: dest -> (flag, default)
ARTICLE = {
    "w_min": ("--min", None),  # not given: the article's -2 .. 2 (widened to hold the paths
    "w_max": ("--max", None),  # of other training than the article's)
    "step": ("--step", 0.05),
    "epochs": ("--epochs", 25),
    "lr": ("--lr", None),  # not given: 0.01 (--eos: 0.05)
    "optimizer": ("--optimizer", "sgd"),
    "compare": ("--compare", None),
    "batch_size": ("--batch-size", 64),
}
LM = {"steps": "--steps", "grid_size": "--grid-size", "quick": "--quick"}
ARTICLE_LR = 1e-2
EOS = ("lr", "steps", "grid_size")  # the options above that --eos takes


def add_options(demo: argparse.ArgumentParser) -> None:
    """The ``--lm`` option of ``crumple demo`` and the options that go with it.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_options(parser)
        >>> parser.parse_args(["--lm", "--quick"]).steps is None
        True
    """
    group = demo.add_argument_group(
        "a small language model",
        "--lm trains a character-level GPT-2 (crumple.examples.tinylm; needs crumple[hf]) on "
        "Python's docstrings and draws its held-out loss on the PCA plane of its path, with "
        "the line from the initial to the trained weights; of the options above, only --seed "
        "and --out apply",
    )
    add = group.add_argument
    add("--lm", action="store_true", help="the language model instead of the article's network")
    add("--steps", type=types.int_at_least("--steps", 2), help="training steps (default 300)")
    add(
        "--grid-size",
        type=types.int_at_least("--grid-size", 2),
        metavar="N",
        help="N x N points over the path on the plane (default 21)",
    )
    add("--quick", action="store_true", help="a 1-layer model, 20 steps, 7 x 7 points: seconds")


def chosen(args: argparse.Namespace) -> str:
    """Which demo was asked for: ``"lm"`` (``--lm``), ``"eos"`` (``--eos``) or
    ``"article"``; options of another demo are refused (the article's compared with their
    defaults), and ``--out`` defaults to ``out/lm``, ``out/eos`` or ``out/demo``.

    Example:
        >>> from crumple.cli import build_parser
        >>> chosen(build_parser().parse_args(["demo"]))
        'article'
        >>> chosen(build_parser().parse_args(["demo", "--lm", "--epochs", "3"]))
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: --epochs is for the article's network, not --lm: drop it
    """
    if args.lm and args.eos:
        raise CrumpleError("--lm and --eos are two demos: give one of them")
    demo = "lm" if args.lm else "eos" if args.eos else "article"
    article = [(d, f) for d, (f, default) in ARTICLE.items() if getattr(args, d) != default]
    model = [(d, f) for d, f in LM.items() if getattr(args, d) not in (None, False)]
    if demo == "lm":
        given, fix = [f for _, f in article], "the article's network, not --lm: drop"
    elif demo == "eos":
        given = [f for d, f in article + model if d not in EOS]
        fix = "another demo, not --eos (it takes --lr, --steps, --grid-size, --seed): drop"
    else:
        given, fix = [f for _, f in model], "the language model: add --lm, or drop"
    if given:
        one = len(given) == 1
        raise CrumpleError(
            f"{', '.join(given)} {'is' if one else 'are'} for {fix} {'it' if one else 'them'}"
        )
    if args.grid_size is not None and args.grid_size > types.MAX_POINTS_PER_AXIS:
        raise CrumpleError(
            f"--grid-size must be at most {types.MAX_POINTS_PER_AXIS}; got {args.grid_size}"
        )
    args.out = args.out or Path({"lm": "out/lm", "eos": "out/eos"}.get(demo, "out/demo"))
    if args.lr is None and demo == "article":
        args.lr = ARTICLE_LR
    return demo


def execute(args: argparse.Namespace) -> None:
    """Train, evaluate and write the language model's run, and say what it did."""
    require_extra("transformers", "hf")
    args.out.mkdir(parents=True, exist_ok=True)
    from crumple.examples import tinylm
    from crumple.run.store import DATA, open_run

    size = tinylm.SIZES[args.quick]
    steps = size["steps"] if args.steps is None else args.steps
    n = size["grid_size"] if args.grid_size is None else args.grid_size
    print(f"crumple demo --lm: {steps} training steps, {n} x {n} grid{' (quick)' * args.quick}")
    start = time.perf_counter()
    page = tinylm.run(args.out, steps=steps, grid_size=n, quick=args.quick, seed=args.seed)
    run = open_run(args.out)
    ds, path = run["surface"], run[tinylm.PATH]
    print(
        f"{ds.attrs['n_parameters']:,} parameters; surface: {ds.loss.size:,} points in "
        f"{ds.attrs['seconds']:.1f} s; held-out loss {float(path.loss[0]):.3f} at the start, "
        f"{float(path.loss[-1]):.3f} trained; total {time.perf_counter() - start:.0f} s"
    )
    print(f"wrote {page} and {args.out / DATA}")
