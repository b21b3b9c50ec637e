"""``surface`` and ``line``: check the inputs, run the grid tile by tile
(``crumple.run.driver``), return an ``xarray.Dataset``; ``check=N`` re-does N points with
``crumple.reference``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from torch import nn

from crumple import reference
from crumple.batches import load
from crumple.errors import CrumpleError
from crumple.evaluation import Settings
from crumple.grid import Grid
from crumple.inputs import (
    check_fits,
    check_model,
    check_plane_and_grid,
    check_result_size,
    named_functions,
)
from crumple.params import evaluation_mode
from crumple.plane import Plane
from crumple.run import driver
from crumple.run.schema import coord_attrs, grid_dataset

LossFn = Callable[..., Any]
CHECK_TOLERANCE = {"float64": 1e-9, "float32": 1e-4}  # largest relative difference allowed


def surface(
    model: nn.Module, loss_fn: LossFn, data: Any, plane: Plane, grid: Grid, **options: Any
) -> xr.Dataset:
    """The loss (and metrics) at every point of a 2-D grid on a plane.

    Args:
        model: any ``nn.Module``; it is left exactly as it was (evaluation runs in eval
            mode without gradients).
        loss_fn: ``loss_fn(pred, y)`` returning the batch mean, or ``"model"``: the loss
            the model computes (:mod:`crumple.losses`; token-exact for a language model).
        data: an ``(x, y)`` pair, a DataLoader or an iterable of batches (pairs, tuples,
            dicts; :mod:`crumple.batches`); the result is the exact mean over the data.
        plane: a 2-D :class:`Plane` through the model's weights.
        grid: a :class:`Grid` with ``alpha`` and ``beta``.
        **options: keywords, all optional (another is refused with the list of them):

    * What to compute and where to keep it:

        metrics: more ``fn(pred, y)`` batch means to store beside ``loss``.
        check: re-do this many random grid points with the slow reference loop
            (:mod:`crumple.reference`); the largest relative difference is in
            ``ds.attrs["check_max_rel_diff"]``, and past ``CHECK_TOLERANCE`` it is an error.
        progress: show a progress bar over tiles (tqdm: in a terminal or a notebook) and the
            estimated time after the first, for a run longer than
            ``crumple.run.driver.PROGRESS_AFTER`` seconds; ``False`` shows nothing.
        store: a run folder: tiles are written to it as they finish, and running the same
            call again resumes (finished tiles are read, not recomputed). A folder made from
            other inputs (weights, plane, grid, data, loss, dtype) is refused.
        data_id: a name for the data to fingerprint instead of hashing its contents.
        recalibrate: data whose inputs recompute the BatchNorm running statistics at each
            point before evaluating (reset, then a cumulative average with only BatchNorm
            layers training); ``ds.attrs["recalibrated"]`` says so.
        curvature: ``True`` adds ``lambda_max``, ``lambda_min`` and ``lambda_ratio``: the
            Hessian's extreme eigenvalues at each point (:mod:`crumple.hessian.maps`).
        dask: a ``distributed.Client``, a scheduler address (``"tcp://host:8786"``) or
            ``"local:N"`` (a local cluster of N one-thread worker processes): the tiles after
            the first are evaluated on its workers, which receive the model, data and plane
            once each; results reach ``store`` as they arrive (needs the ``dask`` extra).

    * How evaluation runs (:class:`crumple.evaluation.Settings`):

        strategy: ``"auto"`` (default: looks at the model, and times the candidates only
            when that leaves a real question; the choice and its reason are in
            ``ds.attrs``), ``"loop"`` (one point at a time, nothing intercepted),
            ``"expanded"`` (one point at a time, wide input layers expanded) or ``"vmap"``
            (points batched together).
        chunk_size: grid points per tile (stored, resumed and sent to a Dask worker as one),
            also the most evaluated together. By default tiles take about
            ``crumple.run.driver.TILE_SECONDS`` (as timed on a first call), and vmap takes as many
            points at once as keep their activations cache-sized and within ``max_memory``.
        max_memory: bytes for the data held in memory (up to half, else it is streamed),
            the points evaluated together and the cached layer products.
        batch_size: samples per forward pass (default: cache-sized). A model whose output
            for a sample depends on the rest of its batch keeps the data's own batches
            (``ds.attrs["batching"]`` says which was used).
        device: where to compute, e.g. ``"cuda:1"`` (default: where the plane's tensors are).
        dtype: ``torch.float32`` or ``torch.float64`` (or their names; default: the plane's).
        precision, stream: bfloat16/TF32 arithmetic and streamed data (see ``Settings``).

    Returns:
        A Dataset with ``loss[i, j]`` the loss at ``(alpha[i], beta[j])``.

    Example:
        >>> import numpy as np, torch, crumple as cr
        >>> net = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.Tanh(),
        ...                           torch.nn.Linear(1, 1, bias=False))
        >>> x = torch.linspace(-1, 1, 50)[:, None]
        >>> plane = cr.Plane.axes(net, "0.weight", "2.weight")
        >>> ds = cr.surface(net, torch.nn.functional.mse_loss, (x, x), plane,
        ...                 cr.Grid(np.linspace(-2, 2, 5), np.linspace(-2, 2, 5)))
        >>> ds.loss.shape
        (5, 5)
    """
    check_plane_and_grid(plane, grid)
    if plane.ndim != 2 or len(grid.axes) != 2:
        raise CrumpleError(
            f"surface needs a 2-D plane and a grid with alpha and beta; got a {plane.ndim}-D "
            f"plane and {grid!r}. For one direction use crumple.line"
        )
    return _landscape(model, loss_fn, data, plane, grid, **options)


def line(
    model: nn.Module, loss_fn: LossFn, data: Any, plane: Plane, alpha, **options: Any
) -> xr.Dataset:
    """The loss along the first direction of ``plane`` at the coordinates ``alpha``.

    Takes the keyword arguments of :func:`surface`; a 2-D plane is cut along ``beta = 0``.

    Example:
        >>> import numpy as np, torch, crumple as cr
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> x = torch.ones(4, 1)
        >>> ds = cr.line(net, torch.nn.functional.mse_loss, (x, x), cr.Plane.axes(net, "weight"),
        ...              np.array([0.0, 1.0, 2.0]))
        >>> ds.loss.values.tolist()
        [1.0, 0.0, 1.0]
    """
    check_plane_and_grid(plane)
    if plane.ndim == 2:
        plane = Plane(plane.origin, plane.directions[:1], dict(plane.attrs))
    return _landscape(model, loss_fn, data, plane, Grid(alpha), **options)


def _landscape(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    plane: Plane,
    grid: Grid,
    *,
    metrics: Mapping[str, LossFn] | None = None,
    check: int = 0,
    progress: bool = True,
    store: str | Path | None = None,
    data_id: str | None = None,
    dask: Any = None,
    recalibrate: Any = None,
    curvature: Any = False,
    **options: Any,
) -> xr.Dataset:
    from crumple.hessian.maps import curvature_options

    run = {"store": store, "data_id": data_id, "dask": dask, "progress": progress}
    run |= {"recalibrate": recalibrate, "curvature": curvature_options(curvature)}
    if recalibrate is not None and run["curvature"] is not None:
        raise CrumpleError(
            "curvature=True with recalibrate= is not supported: the Hessian is taken with "
            "the model's own BatchNorm statistics; drop one of the two"
        )
    settings = Settings.from_options(**options, also=("metrics", "check", *run))
    check_fits(check_model(model), plane)
    fns = named_functions(loss_fn, metrics)
    check_result_size(grid.size, len(fns))
    if not isinstance(check, int) or isinstance(check, bool) or check < 0:
        raise CrumpleError(f"check must be a number of points >= 0, got {check!r}")
    start = time.perf_counter()
    with evaluation_mode(model):
        given = load(data, settings.data_budget, settings.stream)  # the fingerprint hashes it
        outcome = driver.evaluate_grid(
            model, fns, given, plane, grid, settings, coord_attrs=coord_attrs(plane, grid), **run
        )
    if outcome.finished is not None:
        ds = outcome.finished
    else:
        ds = grid_dataset(outcome.values, plane, grid, fns, _facts(outcome, start))
    if check:
        _check_against_reference(ds, model, fns, given, plane, check, outcome.settings, run)
    return driver.finish(outcome, ds, plane) if outcome.finished is None else ds


def _facts(outcome: driver.Outcome, start: float) -> dict[str, Any]:
    s = outcome.settings
    facts = {
        **outcome.facts,
        "dtype": s.dtype,
        "device": s.device,
        "strategy": s.strategy,
        "batching": s.batching,
        "chunk_size": s.tile_size,
        "points_per_call": s.points_per_call,
        "tiles_computed": outcome.tiles_computed,
        "seconds": time.perf_counter() - start,
        "settings": s.to_json(),
    }
    if s.batch_size is not None:
        facts["batch_size"] = s.batch_size
    if s.precision is not None:
        facts["precision"] = s.precision
    if outcome.halvings:
        facts["points_per_call_halved"] = outcome.halvings
    if outcome.choice is not None:
        facts["strategy_reason"] = outcome.choice.reason
        facts["choice_seconds"] = outcome.choice.overhead
    return facts


def _check_against_reference(ds, model, fns, given, plane, n, settings, run) -> None:
    """Re-do ``n`` random grid points with the reference loop; record the largest relative
    difference in ``ds.attrs``, and refuse the result past the tolerance."""
    rng = np.random.default_rng(0)
    flat = rng.choice(ds.loss.size, size=min(n, ds.loss.size), replace=False)
    index = np.unravel_index(flat, ds.loss.shape)
    coords = [ds[d].values[i] for d, i in zip(ds.loss.dims, index)]
    moved = plane.to(settings.torch_device, settings.torch_dtype)
    weights = [moved.at(*map(float, point)) for point in zip(*coords)]
    with evaluation_mode(model):
        slow = reference.points(
            model,
            fns,
            given,
            weights,
            dtype=settings.torch_dtype,
            device=settings.torch_device,
            recalibrate=run["recalibrate"],
        )
    worst, where = 0.0, None
    for name, values in slow.items():
        fast = ds[name].values[index]
        rel = np.abs(fast - values) / np.maximum(np.abs(values), np.finfo(float).tiny)
        if rel.size and np.nanmax(rel) >= worst:
            k = int(np.nanargmax(rel))
            worst, where = float(rel[k]), (name, [float(c[k]) for c in coords])
    ds.attrs["check_points"] = len(flat)
    ds.attrs["check_max_rel_diff"] = worst
    tolerance = CHECK_TOLERANCE.get(str(settings.dtype), 1e-4)
    if worst > tolerance:
        raise CrumpleError(
            f"the {settings.strategy} strategy differs from the reference loop by {worst:.3g} "
            f"(relative, more than {tolerance:g}) in {where[0]} at {where[1]}; evaluate with "
            "strategy='loop' and report this model to crumple"
        )
