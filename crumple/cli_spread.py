"""``crumple surface --spread N``: the loss along N random directions at the grid's alpha
coordinates (:func:`crumple.spread`), kept as ``spread.zarr`` in the run folder and drawn
as a band on the run's page.

Apart from :mod:`crumple.cli` so that the command's module stays short; nothing heavy is
imported before the option is used.
"""

from __future__ import annotations

import argparse
from typing import Any

from crumple.cli_types import int_at_least

# the evaluation options of `crumple surface` that the spread's lines take too
PASSED = ("dask", "chunk_size", "device", "strategy", "max_memory")


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


def run(args: argparse.Namespace, model, loss_fn, batches, grid, options: dict[str, Any]):
    """Evaluate and store the spread that ``--spread`` asks for (``None`` without it): one
    line per direction along ``grid``'s alpha axis, with the surface's evaluation
    ``options`` and ``--dtype``; the random options ``--normalize``, ``--ignore``,
    ``--seed`` and ``--trainable-only`` as given (their defaults when ``--plane`` is another
    kind, which takes none of them)."""
    if not getattr(args, "spread", None):
        return None
    import crumple as cr
    from crumple import planes, store
    from crumple.planes.kinds import IGNORE, NORMALIZE, SEED, TRAINABLE_ONLY

    sources = planes.Sources(model, options=vars(args))
    normalize, ignore = (sources.option(o) for o in (NORMALIZE, IGNORE))
    first = int(sources.option(SEED))
    directions = cr.Plane.random(
        model,
        normalize=None if normalize == "none" else normalize,
        ignore=None if ignore == "none" else ignore,
        seed=range(first, first + args.spread),
        ndim=1,
        trainable_only=bool(sources.option(TRAINABLE_ONLY)),
    )
    passed = {k: v for k, v in options.items() if k in PASSED}
    print(f"spread: {args.spread} random directions, {len(grid.axes[0])} points each")
    ds = cr.spread(model, loss_fn, batches, directions, grid.axes[0], dtype=args.dtype, **passed)
    path = store.save_spread(args.out, ds)
    print(f"spread: {ds.attrs['seconds']:.1f} s; wrote {path}")
    return ds
