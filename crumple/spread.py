"""``spread``: how much a random-direction picture depends on its random directions.

A random plane (Li et al. 2018) is one draw. :func:`spread` evaluates the same line (or a
coarse surface) along several draws, one :func:`crumple.line` (or :func:`crumple.surface`)
call per direction, and stacks them over a ``direction`` dimension, with the mean, the
standard deviation, the minimum and the maximum over directions beside them
(:func:`summary`). ``crumple.plot.spread`` draws the band; ``crumple.run.store.save_spread``
keeps it in a run folder.

Why a loop over planes and not one call: the evaluator takes one plane (one or two
directions) and shares the work along it (the untouched parameters, the expanded input
layers); N directions at once would be a plane kind with N axes, evaluated on a grid that
is not a product grid. A line of 51 points is a fraction of a second on the models the
tests use, so the loop costs N calls' overheads; the strategy chosen by ``"auto"`` on the
first direction is reused for the others, so that choice is made once.

This module imports torch only inside :func:`spread`: the figures read :func:`summary`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from crumple.errors import CrumpleError, CrumpleTypeError

STATS = ("mean", "std", "min", "max")
STD_DDOF = 1  # the sample standard deviation: the directions are a sample of all directions
# random-plane facts that the directions of one spread must share (the seed is theirs)
SHARED = ("normalization", "ignore", "orthogonalized", "trainable_only", "frozen")
# facts of one direction's run that are not the spread's (summed or maximised instead)
PER_RUN = ("seconds", "tiles_computed", "choice_seconds", "check_points", "check_max_rel_diff")
EXAMPLE_FIX = "e.g. planes=cr.Plane.random(model, seed=range(10), ndim=1)"


def spread(
    model: Any, loss_fn: Any, data: Any, planes: Sequence[Any], coords: Any, **options: Any
) -> xr.Dataset:
    """The loss along each of several random directions, stacked over ``direction``.

    Args:
        model, loss_fn, data: as for :func:`crumple.line` (the data is read once).
        planes: two or more random planes through the model's weights with distinct seeds
            and the same options, as ``cr.Plane.random(model, seed=range(10), ndim=1)``
            returns them.
        coords: the ``alpha`` coordinates of a line along each plane's first direction
            (an array, or a one-axis :class:`~crumple.grid.Grid`), or a two-axis ``Grid``
            for a coarse surface on each plane (2-D planes).
        **options: :func:`crumple.line`'s keywords (``device``, ``dtype``, ``strategy``,
            ``metrics``, ``check``, ``progress``, ...), used for every direction;
            ``store`` is refused: save the result with :func:`crumple.run.store.save_spread`.

    Returns:
        A Dataset with ``loss`` over ``("direction", "alpha")`` (or ``("direction",
        "alpha", "beta")``; the same for each metric), the coordinate ``seed`` along
        ``direction``, and each variable's ``_mean``, ``_std`` (sample, ddof 1), ``_min``
        and ``_max`` over directions (:func:`summary`). ``attrs`` hold the seeds, the
        planes' options (``plane_*``), the run's facts and the total ``seconds``.

    Example:
        >>> import numpy as np, torch, crumple as cr
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
        >>> data = (torch.randn(16, 2), torch.randn(16, 1))
        >>> planes = cr.Plane.random(net, seed=range(4), ndim=1)
        >>> ds = cr.spread(net, torch.nn.functional.mse_loss, data, planes, np.linspace(-1, 1, 5))
        >>> ds.loss.dims, ds.seed.values.tolist(), ds.loss_std.dims
        (('direction', 'alpha'), [0, 1, 2, 3], ('alpha',))
    """
    from crumple.landscape import Landscape

    planes = check_planes(planes)
    grid = _grid(coords, planes)
    if options.get("store") is not None:
        raise CrumpleError(
            f"spread takes no store= (got {options['store']!r}): its directions are not one "
            "resumable run; save the result instead, e.g. crumple.run.store.save_spread(folder, ds)"
        )
    landscape = Landscape(model, loss_fn, data, **options)  # the data is read once for all
    start, runs = time.perf_counter(), []
    for plane in planes:
        if len(grid.axes) == 1:
            runs.append(landscape.line(plane, grid.axes[0]))
        else:
            runs.append(landscape.surface(plane, grid))
        landscape.keep_strategy(runs[0].attrs["strategy"])  # chosen once, on the first
    return _stacked(runs, planes, time.perf_counter() - start)


def summary(ds: xr.Dataset, var: str = "loss") -> xr.Dataset:
    """The mean, sample standard deviation (ddof 1), minimum and maximum of ``ds[var]``
    over ``direction``, as ``{var}_mean``, ``{var}_std``, ``{var}_min`` and ``{var}_max``.
    A direction with nan or inf at a point makes that point's statistics nan or inf: a
    curve that is not there is not averaged away.

    Example:
        >>> ds = xr.Dataset({"loss": (("direction", "alpha"), [[1.0, 2.0], [3.0, 6.0]])})
        >>> summary(ds).loss_std.values.tolist()
        [1.4142135623730951, 2.8284271247461903]
    """
    if var not in ds or "direction" not in ds[var].dims:
        have = sorted(map(str, ds.data_vars))
        raise CrumpleError(
            f"summary: ds has no variable var={var!r} over 'direction' (it holds {have}); "
            "give the dataset from crumple.spread, or var= one of its variables"
        )
    curves = ds[var]
    axis = curves.dims.index("direction")
    values = curves.values
    n = values.shape[axis]
    with np.errstate(invalid="ignore"):  # inf - inf in the std of a diverging point: nan
        stats = {
            "mean": np.mean(values, axis=axis),
            "std": np.std(values, axis=axis, ddof=STD_DDOF)
            if n > STD_DDOF
            else np.full(np.delete(values.shape, axis), np.nan),
            "min": np.min(values, axis=axis),
            "max": np.max(values, axis=axis),
        }
    dims = tuple(d for d in curves.dims if d != "direction")
    name = curves.attrs.get("long_name", var)
    words = {"mean": "mean", "std": "standard deviation", "min": "minimum", "max": "maximum"}
    return xr.Dataset(
        {
            f"{var}_{stat}": (
                dims,
                v,
                {"long_name": f"{words[stat]} of {name} over {n} directions"},
            )
            for stat, v in stats.items()
        },
        coords={d: curves[d] for d in dims if d in curves.coords},
    )


def check_planes(planes: Any) -> list:
    """``planes`` as a list of random planes that one spread can compare, or a
    :class:`~crumple.errors.CrumpleError` that says what to give instead.

    Example:
        >>> import torch, crumple as cr
        >>> net = torch.nn.Linear(2, 1)
        >>> check_planes([cr.Plane.axes(net, "weight[0, 0]"), cr.Plane.random(net)])
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: planes[0] is an 'axes' plane; a spread compares random ...
    """
    from crumple.plane import Plane
    from crumple.planes.builders import check_seeds

    if isinstance(planes, Plane):
        raise CrumpleError(f"planes= is one Plane; a spread needs two or more, {EXAMPLE_FIX}")
    if isinstance(planes, (str, bytes)) or not isinstance(planes, Sequence):
        raise CrumpleTypeError(
            f"planes must be a list of crumple.Plane, got {type(planes).__name__}; {EXAMPLE_FIX}"
        )
    planes = list(planes)
    for k, plane in enumerate(planes):
        if not isinstance(plane, Plane):
            raise CrumpleTypeError(
                f"planes[{k}] is a {type(plane).__name__}, not a crumple.Plane; {EXAMPLE_FIX}"
            )
        kind = plane.attrs.get("kind", "custom")
        if kind != "random":
            raise CrumpleError(
                f"planes[{k}] is an {kind!r} plane; a spread compares random directions "
                f"(Plane.random), whose draws differ by their seed: {EXAMPLE_FIX}"
            )
    if len(planes) < 2:
        raise CrumpleError(
            f"planes= holds {len(planes)} plane(s); a spread needs two or more, {EXAMPLE_FIX}"
        )
    check_seeds([p.attrs.get("seed") for p in planes])
    first = planes[0]
    for k, plane in enumerate(planes[1:], 1):
        for fact in (*SHARED, "ndim"):
            mine = plane.ndim if fact == "ndim" else plane.attrs.get(fact)
            theirs = first.ndim if fact == "ndim" else first.attrs.get(fact)
            if mine != theirs:
                raise CrumpleError(
                    f"planes[{k}] has {fact}={mine!r} but planes[0] has {theirs!r}; the "
                    "directions of one spread differ by their seed only: build them in one "
                    "call, Plane.random(model, seed=range(10), ...)"
                )
        if not _same_weights(first.origin, plane.origin):
            raise CrumpleError(
                f"planes[{k}] passes through other weights than planes[0]; a spread compares "
                "directions through one point: build every plane from the same model, in one "
                "call, Plane.random(model, seed=range(10), ...)"
            )
    return planes


def _same_weights(a: dict, b: dict) -> bool:
    import torch

    return a is b or (a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a))


def _grid(coords: Any, planes: list):
    """The grid of each direction: a line's ``alpha``, or a two-axis grid (2-D planes)."""
    from crumple.grid import Grid

    grid = coords if isinstance(coords, Grid) else Grid(coords)
    if len(grid.axes) == 2 and planes[0].ndim != 2:
        raise CrumpleError(
            f"coords={grid!r} has alpha and beta, but the planes are {planes[0].ndim}-D; "
            "build them with ndim=2 for a surface per direction, or give only the alpha "
            "coordinates for a line along each"
        )
    return grid


def _stacked(runs: list[xr.Dataset], planes: list, seconds: float) -> xr.Dataset:
    """The runs over ``direction``, with their summaries and the facts they share."""
    first = runs[0]
    dims = ("direction", *first.loss.dims)
    names = list(first.data_vars)
    data_vars = {
        n: (dims, np.stack([r[n].values for r in runs]), dict(first[n].attrs)) for n in names
    }
    label = _label(first.attrs.get("plane_normalization"))
    coords: dict[str, Any] = {}
    for k, d in enumerate(first.loss.dims):
        along = "each random direction" if len(dims) == 2 else f"each plane's direction {k + 1}"
        coords[d] = (d, first[d].values, {"long_name": f"{d} along {along} ({label})"})
    seeds = [int(p.attrs["seed"]) for p in planes]
    coords["direction"] = ("direction", np.arange(len(runs)), {"long_name": "random direction"})
    coords["seed"] = ("direction", seeds, {"long_name": "seed of the direction"})
    ds = xr.Dataset(data_vars, coords=coords, attrs=_facts(runs, planes, seconds))
    for n in names:
        ds = ds.merge(summary(ds, n))
    return ds


def _label(normalization: Any) -> str:
    return "raw" if normalization in (None, "None") else f"{normalization}-normalized"


def _facts(runs: list[xr.Dataset], planes: list, seconds: float) -> dict[str, Any]:
    """The facts every run shares, the spread's own, and the per-run ones summed up."""
    first = runs[0].attrs
    shared = {
        k: v
        for k, v in first.items()
        if k not in PER_RUN
        and k not in ("plane_seed", "plane_cosine")
        and all(_equal(r.attrs.get(k), v) for r in runs[1:])
    }
    facts = {
        **shared,
        "directions": len(runs),
        "seeds": [int(p.attrs["seed"]) for p in planes],
        "plane_ndim": planes[0].ndim,
        "std_ddof": STD_DDOF,
        "seconds": seconds,
        "tiles_computed": int(sum(r.attrs.get("tiles_computed", 0) for r in runs)),
    }
    if "strategy_reason" in first:
        facts["strategy_reason"] = f"{first['strategy_reason']} (on the first direction)"
    if all("check_max_rel_diff" in r.attrs for r in runs):
        facts["check_points"] = int(sum(r.attrs["check_points"] for r in runs))
        facts["check_max_rel_diff"] = max(float(r.attrs["check_max_rel_diff"]) for r in runs)
    return facts


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(np.all(a == b)) if np.shape(a) == np.shape(b) else False
    except (TypeError, ValueError):
        return False
