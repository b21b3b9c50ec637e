"""The slow ground truth, with the fast path's signatures: copy the model, write each
point's weights into the copy, run every batch of the data as given, exact mean.

Every fast path is tested against these functions, and ``surface(..., check=N)`` re-does N
points with them.

Example:
    >>> import numpy as np, torch, crumple as cr
    >>> net = torch.nn.Linear(2, 1)
    >>> data = (torch.randn(6, 2), torch.randn(6, 1))
    >>> plane, grid = cr.Plane.random(net, seed=0), cr.Grid([-1.0, 0.0, 1.0], [0.0, 0.5])
    >>> fast = cr.surface(net, torch.nn.functional.mse_loss, data, plane, grid)
    >>> slow = cr.reference.surface(net, torch.nn.functional.mse_loss, data, plane, grid)
    >>> bool(np.allclose(fast.loss, slow.loss, rtol=1e-5))
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from crumple.batches import Data, inputs_only, load
from crumple.grid import Grid
from crumple.losses import Objective
from crumple.params import Params, evaluation_mode
from crumple.plane import Plane
from crumple.run.schema import grid_dataset


def points(
    model: nn.Module,
    fns: Mapping[str, Callable | str],
    data: Any,
    weights: Iterable[Params],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    recalibrate: Any = None,
) -> dict[str, list[float]]:
    """Each function's exact dataset mean at each set of ``weights`` (parameters, and any
    buffers they name: a snapshot's own BatchNorm statistics; the model's otherwise).

    Example:
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> data = (torch.ones(2, 1), torch.zeros(2, 1))
        >>> points(net, {"loss": torch.nn.functional.mse_loss}, data,
        ...        [{"weight": torch.full((1, 1), 3.0)}])
        {'loss': [9.0]}
    """
    data = load(data).to(device, dtype)
    if recalibrate is not None:
        recalibrate = Data(inputs_only(recalibrate)).to(device, dtype)
    objective = Objective(model, fns)
    work = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    buffers = {name: b.clone() for name, b in work.named_buffers()}
    out: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for point in weights:  # the buffers a point names (a snapshot's own), else the model's
            for name, p in work.named_parameters():
                p.copy_(point[name])
            for name, b in work.named_buffers():
                b.copy_(point.get(name, buffers[name]))
            if recalibrate is not None:
                recalibrated(work, recalibrate)
            sums, totals = dict.fromkeys(fns, 0.0), dict.fromkeys(fns, 0)
            for batch in data:
                values = objective.values(objective.call(work, batch), batch)
                for name, w in objective.weights(batch).items():
                    if w:
                        sums[name] += float(values[name]) * w
                        totals[name] += w
            for name in fns:
                out[name].append(sums[name] / totals[name])
    return out


def recalibrated(work: nn.Module, data) -> None:
    """Recompute ``work``'s BatchNorm running statistics from ``data``: reset, a cumulative
    average (``momentum=None``), only the BatchNorm layers in training mode."""
    layers = [m for m in work.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    for batch in data:
        args, kwargs = batch.inputs()
        work(*args, **kwargs)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
        layer.eval()


def surface(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    plane: Plane,
    grid: Grid,
    *,
    metrics: Mapping[str, Callable] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    recalibrate: Any = None,
) -> xr.Dataset:
    """What :func:`crumple.surface` computes, point by point.

    Example:
        >>> import crumple as cr
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> x = torch.ones(3, 1)
        >>> plane = cr.Plane.axes(net, "weight")
        >>> ref = surface(net, torch.nn.functional.mse_loss, (x, x), plane, cr.Grid([0.0, 2.0]))
        >>> ref.loss.values.tolist()
        [1.0, 1.0]
    """
    fns = {"loss": loss_fn, **(metrics or {})}
    moved = plane.to(device, dtype)
    weights = (moved.at(*map(float, coords)) for coords in _product(grid))
    with evaluation_mode(model):
        values = points(
            model, fns, data, weights, dtype=dtype, device=device, recalibrate=recalibrate
        )
    results = {name: np.reshape(v, grid.shape) for name, v in values.items()}
    return grid_dataset(results, plane, grid, fns, {"method": "reference loop"})


def line(
    model: nn.Module, loss_fn: Callable, data: Any, plane: Plane, alpha, **options: Any
) -> xr.Dataset:
    """What :func:`crumple.line` computes, point by point; takes :func:`surface`'s options.

    Example:
        >>> import crumple as cr
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> x = torch.ones(3, 1)
        >>> ref = line(net, torch.nn.functional.mse_loss, (x, x), cr.Plane.axes(net, "weight"),
        ...            [1.0])
        >>> float(ref.loss[0])
        0.0
    """
    if plane.ndim == 2:
        plane = Plane(plane.origin, plane.directions[:1], dict(plane.attrs))
    return surface(model, loss_fn, data, plane, Grid(alpha), **options)


def _product(grid: Grid):
    if len(grid.axes) == 1:
        return ((a,) for a in grid.axes[0])
    return ((a, b) for a in grid.axes[0] for b in grid.axes[1])
