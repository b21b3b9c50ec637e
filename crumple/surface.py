"""Run a grid over a plane, tile by tile, into an ``xarray.Dataset``."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from crumple.batches import as_batches
from crumple.errors import CrumpleError
from crumple.evaluate import DEFAULT_MAX_MEMORY, Evaluator, LossFn, prepared
from crumple.grid import Grid
from crumple.params import evaluation_mode
from crumple.plane import Plane
from crumple.store import RunStore, fingerprint, open_run

TILE_SECONDS = 0.25  # a tile (stored, resumed and distributed as one) takes about this long


def surface(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    plane: Plane,
    grid: Grid,
    *,
    metrics: Mapping[str, LossFn] | None = None,
    chunk_size: int | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    strategy: str = "auto",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    store: str | Path | None = None,
    data_id: str | None = None,
    dask: Any = None,
) -> xr.Dataset:
    """The loss (and metrics) at every point of a 2-D grid on a plane.

    Args:
        model: any ``nn.Module``; it is left exactly as it was (evaluation runs in eval
            mode without gradients).
        loss_fn: ``loss_fn(pred, y)`` returning the batch mean.
        data: an ``(x, y)`` pair of tensors, a DataLoader or an iterable of pairs. The
            result is the exact mean over all samples: batches are weighed by their size.
        plane: a 2-D :class:`Plane` through the model's weights.
        grid: a :class:`Grid` with ``alpha`` and ``beta``.
        metrics: more ``fn(pred, y)`` batch means to store beside ``loss``.
        chunk_size: grid points per tile (stored, resumed and sent to a Dask worker as one),
            also the most that vmap evaluates together. By default tiles take about
            ``TILE_SECONDS`` (as timed on a first call), and vmap takes as many points at
            once as keep their activations cache-sized and within ``max_memory``.
        max_memory: bytes that the points evaluated together and the cached layer products
            may use.
        strategy: ``"vmap"`` (batched over points), ``"loop"`` (one point at a time) or
            ``"auto"`` (time both on the first tile, keep the faster; the choice is in
            ``ds.attrs["strategy"]``).
        device: where to compute (default: where the plane's tensors are).
        dtype: floating-point type to compute in (default: the plane's).
        progress: show a progress bar over tiles (and, before a run of several tiles, the
            estimated time after the first).
        store: a run folder: tiles are written to it as they finish, and running the same
            call again resumes (finished tiles are read, not recomputed). A folder made from
            other inputs (weights, plane, grid, data, loss, dtype) is refused.
        data_id: a name for the data to fingerprint instead of hashing its contents.
        dask: a ``distributed.Client``, a scheduler address (``"tcp://host:8786"``) or
            ``"local:N"`` (a local cluster of N one-thread worker processes): the tiles after
            the first are evaluated on its workers, which receive the model, data and plane
            once each; results reach ``store`` as they arrive (needs the ``dask`` extra).

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
    if plane.ndim != 2 or len(grid.axes) != 2:
        raise CrumpleError(
            f"surface needs a 2-D plane and a grid with alpha and beta; got a {plane.ndim}-D "
            f"plane and {grid!r}. For one direction use crumple.line"
        )
    options = dict(
        dask=dask,
        store=store,
        data_id=data_id,
        metrics=metrics,
        chunk_size=chunk_size,
        max_memory=max_memory,
        strategy=strategy,
        device=device,
        dtype=dtype,
        progress=progress,
    )
    return _evaluate(model, loss_fn, data, plane, grid, **options)


def line(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    plane: Plane,
    alpha,
    **options: Any,
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
    if plane.ndim == 2:
        plane = Plane(plane.origin, plane.directions[:1], dict(plane.attrs))
    return _evaluate(model, loss_fn, data, plane, Grid(alpha), **options)


def _evaluate(
    model,
    loss_fn,
    data,
    plane,
    grid,
    *,
    metrics=None,
    chunk_size=None,
    max_memory=DEFAULT_MAX_MEMORY,
    strategy="auto",
    device=None,
    dtype=None,
    progress=False,
    store=None,
    data_id=None,
    dask=None,
):
    _check_fits(model, plane)
    fns = _named_functions(loss_fn, metrics)
    start = time.perf_counter()
    with evaluation_mode(model):
        given = as_batches(data)  # as the user gave it: the fingerprint hashes these
        batches, plane_, buffers = prepared(model, given, plane, device, dtype)
        reference = next(iter(plane_.origin.values()))
        run = None
        if store is not None:
            fp = fingerprint(model, plane, grid, given, fns, reference.dtype, data_id)
            run = RunStore.resume(store, fp, grid)
            if run is not None and all(run.done()):
                out = open_run(store)["surface"]
                out.attrs["tiles_computed"] = 0
                return out
        plan = run.plan if run is not None else {}
        evaluate = Evaluator(
            model,
            fns,
            batches,
            buffers,
            plane_.origin,
            plane=plane_,
            strategy=plan.get("strategy", strategy),
            max_memory=max_memory,
            batch_size=plan.get("batch_size"),
            # stores written before tiles and calls were told apart used one size for both
            points_per_call=plan.get("points_per_call", plan.get("chunk_size", chunk_size)),
        )
        axes = [
            torch.as_tensor(a, dtype=reference.dtype, device=reference.device) for a in grid.axes
        ]
        levels = list(range(len(grid.axes)))

        def coords(tile: tuple[slice, ...]) -> list:
            return [axis[s] for axis, s in zip(axes, tile)]

        chunk_size = plan.get("chunk_size") or chunk_size
        measured = None
        if chunk_size is None:  # tiles of about TILE_SECONDS, as timed on a first call
            block = next(grid.tiles(evaluate.points_per_call))
            timer = time.perf_counter()
            measured = evaluate(plane_.at, coords(block), levels)
            seconds = time.perf_counter() - timer
            points = math.prod(s.stop - s.start for s in block)
            # the "auto" choice times each strategy after a warm-up: the better figure
            per_point = evaluate.seconds_per_point or seconds / points
            chunk_size = max(
                evaluate.points_per_call, math.ceil(TILE_SECONDS / max(per_point, 1e-9))
            )
        if store is not None and run is None:
            tiling = {"chunk_size": chunk_size, "points_per_call": evaluate.points_per_call}
            run = RunStore.create(store, fp, grid, list(fns), tiling, _coord_attrs(plane, grid))
        tiles = list(grid.tiles(chunk_size))
        done = run.done() if run is not None else [False] * len(tiles)
        todo = [k for k, finished in enumerate(done) if not finished]
        results = {name: np.empty(grid.shape) for name in fns}

        def local(ks):
            for k in ks:
                # the timed call was the first block of tile 0
                known = measured if k == 0 else None
                yield k, evaluate(plane_.at, coords(tiles[k]), levels, first_block=known)

        # the first tile runs here: it fixes the strategy and gives the time estimate
        sources = [local(todo[:1])]
        if dask is not None and len(todo) > 1:
            from crumple.distributed import evaluate_tiles

            settings = {
                "batch_size": evaluate.batch_size,
                "points_per_call": evaluate.points_per_call,
                "max_memory": max_memory,
            }
            payload = (model, fns, batches, buffers, plane_, settings)
            sources.append(
                evaluate_tiles(
                    dask, payload, evaluate, [(k, coords(tiles[k])) for k in todo[1:]], levels
                )
            )
        else:
            sources.append(local(todo[1:]))
        bar = tqdm(
            total=len(tiles), initial=len(tiles) - len(todo), disable=not progress, unit="tile"
        )
        first = time.perf_counter()
        for n, (k, values) in enumerate(itertools.chain(*sources)):
            values = {
                name: np.asarray(torch.as_tensor(v).double().cpu()) for name, v in values.items()
            }
            if run is None:
                for name, v in values.items():
                    results[name][tiles[k]] = v
            else:
                if n == 0:
                    run.set_plan(strategy=evaluate.strategy, batch_size=evaluate.batch_size)
                run.write(k, values)
            if n == 0 and progress and len(todo) > 1:
                estimate = (time.perf_counter() - first) * len(todo)
                where = " on this process" if dask is not None else ""
                bar.write(
                    f"crumple: {len(todo)} tiles to compute, about {estimate:.3g} s in all{where}"
                )
            bar.update()
        bar.close()
    facts = {
        "n_samples": evaluate.n_samples,
        "dtype": str(reference.dtype).removeprefix("torch."),
        "device": str(reference.device),
        "strategy": evaluate.strategy,
        "chunk_size": chunk_size,
        "points_per_call": evaluate.points_per_call,
        "tiles_computed": len(todo),
        "seconds": time.perf_counter() - start,
    }
    ds = _dataset(results, plane, grid, loss_fn, facts)
    if run is None:
        return ds
    out = run.finish(ds.attrs | {"store": str(Path(store))}, {n: dict(ds[n].attrs) for n in fns})
    out.attrs["tiles_computed"] = len(todo)
    return out


def _coord_attrs(plane, grid) -> dict[str, dict]:
    names = plane.attrs.get("axis_names", grid.dims)
    return {dim: {"long_name": str(name)} for dim, name in zip(grid.dims, names)}


def _named_functions(loss_fn: LossFn, metrics: Mapping[str, LossFn] | None) -> dict[str, LossFn]:
    fns = {"loss": loss_fn, **(metrics or {})}
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"{name} must be a function fn(pred, y) -> batch mean, got {fn!r}")
    return fns


def _check_fits(model: nn.Module, plane: Plane) -> None:
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    plane_shapes = {n: tuple(t.shape) for n, t in plane.origin.items()}
    if shapes != plane_shapes:
        missing = sorted(shapes.keys() - plane_shapes.keys())
        extra = sorted(plane_shapes.keys() - shapes.keys())
        resized = sorted(
            n for n in shapes.keys() & plane_shapes.keys() if shapes[n] != plane_shapes[n]
        )
        raise CrumpleError(
            "the plane was not made for this model: "
            f"missing {missing}, unknown {extra}, different shapes {resized}; "
            "build the plane from the same model (e.g. Plane.axes(model, ...))"
        )


def function_name(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _dataset(results, plane, grid, loss_fn, facts) -> xr.Dataset:
    from crumple import __version__

    attrs_of = _coord_attrs(plane, grid)
    coords = {dim: (dim, axis, attrs_of[dim]) for dim, axis in zip(grid.dims, grid.axes)}
    loss_name = function_name(loss_fn)
    data_vars = {
        name: (grid.dims, values, {"long_name": loss_name if name == "loss" else name})
        for name, values in results.items()
    }
    attrs = {"plane_kind": plane.attrs.get("kind", "custom")}
    for key, value in plane.attrs.items():
        if key not in ("kind", "axis_names"):
            attrs[f"plane_{key}"] = list(value) if isinstance(value, (list, tuple)) else value
    attrs |= {"loss_name": loss_name, **facts, "crumple_version": __version__}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
