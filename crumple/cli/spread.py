"""``crumple surface --spread N``: the loss along N random directions at the grid's alpha
coordinates (:func:`crumple.spread`), kept as ``spread.zarr`` in the run folder and drawn
as a band on the run's page.

Apart from :mod:`crumple.cli` so that the command's module stays short; nothing heavy is
imported before the option is used.
"""

from __future__ import annotations

import argparse
from typing import Any

from crumple.cli.options import int_at_least


def add(parser: argparse.ArgumentParser) -> None:
    """The ``--spread N`` option of ``crumple surface``.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add(parser)
        >>> parser.parse_args(["--spread", "10"]).spread
        10
    """
    parser.add_argument(
        "--spread",
        type=int_at_least("--spread", 2),
        default=None,
        metavar="N",
        help="also the loss along N random directions (seeds --seed .. --seed + N - 1, the "
        "random plane's options) at the grid's alpha coordinates, drawn as a band on the "
        "page: how much the picture depends on the draw (RUN/spread.zarr)",
    )


def execute(args: argparse.Namespace, model, loss_fn, batches, grid, options: dict[str, Any]):
    """Evaluate and store the spread that ``--spread`` asks for (``None`` without it): one
    line per direction along ``grid``'s alpha axis, with the surface's evaluation
    ``options`` (``--dtype``, ``--recalibrate``, ...); the random options ``--normalize``,
    ``--ignore``, ``--seed`` and ``--trainable-only`` as given (their defaults when
    ``--plane`` is another kind, which takes none of them)."""
    if not getattr(args, "spread", None):
        return None
    import crumple as cr
    from crumple import planes
    from crumple.landscape import path_options
    from crumple.planes.kinds import random_options
    from crumple.run import store

    chosen = random_options(planes.Sources(model, options=vars(args)))
    first = int(chosen.pop("seed"))
    chosen.pop("orthogonalize")  # one direction each
    seeds = range(first, first + args.spread)
    directions = cr.Plane.random(model, seed=seeds, ndim=1, **chosen)
    passed = path_options(options) | {"dask": options.get("dask")}  # as the surface
    print(f"spread: {args.spread} random directions, {len(grid.axes[0])} points each")
    ds = cr.spread(model, loss_fn, batches, directions, grid.axes[0], **passed)
    path = store.save_spread(args.out, ds)
    print(f"spread: {ds.attrs['seconds']:.1f} s; wrote {path}")
    return ds
