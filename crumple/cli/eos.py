"""``crumple demo --eos``: the edge of stability (:mod:`crumple.examples.eos`), full-batch
gradient descent with its curvature tracked as it trains. Nothing heavy is imported before
the arguments are parsed."""

from __future__ import annotations

import argparse
import time


def add_options(demo: argparse.ArgumentParser) -> None:
    """The ``--eos`` option of ``crumple demo``.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_options(parser)
        >>> parser.parse_args(["--eos"]).eos
        True
    """
    group = demo.add_argument_group(
        "the edge of stability",
        "--eos trains an MLP 64-200-200-10 on 1,000 digits by full-batch gradient descent "
        "(crumple.examples.eos; needs scikit-learn), tracks its top Hessian eigenvalue every 50 "
        "steps (a shorter run: 100 times) and draws it against the threshold 2 / lr beside "
        "the landscape on the PCA plane of the path; it takes --lr (default 0.05), --steps "
        "(default 6000), --grid-size (default 31), --seed and --out (default out/eos)",
    )
    group.add_argument(
        "--eos", action="store_true", help="the edge-of-stability demo instead of the article's"
    )


def execute(args: argparse.Namespace) -> None:
    """Train with the curvature tracked, write the run, and say what it showed."""
    from crumple.examples import eos
    from crumple.run.store import DATA, open_run

    lr = eos.LR if args.lr is None else args.lr
    steps = eos.STEPS if args.steps is None else args.steps
    n = eos.GRID_SIZE if args.grid_size is None else args.grid_size
    print(f"crumple demo --eos: {steps} steps of full-batch gradient descent, lr {lr:g} "
          f"(2 / lr = {2 / lr:g}), {n} x {n} grid")  # fmt: skip
    start = time.perf_counter()
    run = eos.run(args.out, lr=lr, steps=steps, grid_size=n, seed=args.seed, progress=True)
    print(summary(open_run(args.out)["sharpness"], lr))
    print(f"total {time.perf_counter() - start:.0f} s; wrote {run.page} and {args.out / DATA}")


def summary(history, lr: float) -> str:
    """What the curvature did: where it started, when it first reached 2 / lr, and where it
    stayed over the last third of training.

    Example:
        >>> import xarray as xr
        >>> h = xr.Dataset({"lambda_max": ("step", [10.0, 30.0, 41.0, 39.0, 40.0, 40.5])},
        ...                coords={"step": [0, 10, 20, 30, 40, 50]})
        >>> for part in summary(h, 0.05).split("; "):
        ...     print(part)
        lambda_max 10 at step 0 (2 / lr = 40)
        reached 2 / lr at step 20
        median of the last third 40.2
    """
    import numpy as np

    values, steps = history.lambda_max.values, history.step.values
    threshold = 2 / lr
    reached = np.flatnonzero(values >= threshold)
    when = f"reached 2 / lr at step {steps[reached[0]]}" if reached.size else "never reached 2 / lr"
    if values[0] >= threshold:
        when = "above 2 / lr from the start"
    last = values[steps >= steps[-1] * 2 / 3]
    return (
        f"lambda_max {values[0]:.3g} at step {steps[0]} (2 / lr = {threshold:g}); {when}; "
        f"median of the last third {np.median(last):.3g}"
    )
