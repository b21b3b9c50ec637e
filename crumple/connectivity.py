"""``path_loss``: the loss (and metrics) along a line or curve between two models, and its
barrier: how far the loss rises above the straight interpolation of the two ends' losses
(Frankle et al. 2020; Garipov et al. 2018; Ainsworth et al. 2023).

A curve lies in the plane through its ends and its bend (:mod:`crumple.curve`), so its
points are zipped coordinates on that plane, evaluated by the engine the surface uses (one
prepared evaluator: the data read once, batched points, exact means over the data, the
BatchNorm statistics recalibrated at each point with ``recalibrate=``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from crumple.checks import check_fits
from crumple.curve import Curve, check_t
from crumple.errors import CrumpleError, CrumpleTypeError
from crumple.evaluation import Points
from crumple.landscape import Landscape, LossFn
from crumple.params import evaluation_mode
from crumple.plane import Plane

T = np.linspace(0.0, 1.0, 41)


def path_loss(
    model: nn.Module, loss_fn: LossFn, data: Any, curve: Curve | Plane, t: Any = T, **options
) -> xr.Dataset:
    """The loss (and ``metrics``) at each ``t`` of a curve from ``a`` (``t = 0``) to ``b``
    (``t = 1``), with its barrier.

    Args:
        model: the architecture (and, without ``recalibrate``, the BatchNorm statistics) the
            curve's weights are evaluated in; it is left as it was.
        loss_fn, data: as for :func:`crumple.surface`.
        curve: a :class:`crumple.Curve` (``Curve.line(a, b)``, ``Curve.bezier(a, b,
            bend)``, ...) or a line ``Plane.between(a, b)``.
        t: where along it, numbers from 0 to 1 (default 41 evenly spaced).
        **options: :func:`crumple.line`'s keywords that say how to evaluate (``metrics``,
            ``recalibrate``, ``dtype``, ``device``, ``strategy``, ...); ``store`` is refused.

    Returns:
        A Dataset over ``t`` with ``loss``, each metric, and the plane coordinates of each
        point (``alpha``, and ``beta`` for a curve with a bend). ``attrs``: ``curve`` (its
        kind), ``loss_a`` and ``loss_b`` (the loss at the ends, evaluated with the rest),
        ``barrier`` (the largest ``loss(t) - ((1 - t) loss_a + t loss_b)`` over ``t``) and
        ``barrier_t`` (where).

    Example:
        >>> import torch, crumple as cr
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> x = torch.ones(4, 1)
        >>> a, b = {"weight": torch.full((1, 1), -1.0)}, {"weight": torch.full((1, 1), 3.0)}
        >>> ds = cr.path_loss(net, torch.nn.functional.mse_loss, (x, x), cr.Curve.line(a, b),
        ...                   t=[0.0, 0.25, 0.5, 1.0], dtype="float64")
        >>> ds.loss.values.tolist(), ds.attrs["barrier"]  # (w - 1)^2: below the ends' line
        ([4.0, 1.0, 0.0, 4.0], 0.0)
    """
    if options.get("store") is not None:
        raise CrumpleError(
            "store= is not an option of path_loss: its points are a curve, not a grid; save "
            "the result with ds.to_netcdf(...) or ds.to_zarr(...)"
        )
    return along(Landscape(model, loss_fn, data, **options), curve, t)


def along(landscape: Landscape, curve: Curve | Plane, t: Any = T) -> xr.Dataset:
    """:func:`path_loss` on a :class:`~crumple.landscape.Landscape` (options bound once)."""
    curve = _curve(curve)
    t = check_t(t)
    check_fits(landscape.model, curve.plane)
    coords = curve.coordinates(np.concatenate([[0.0, 1.0], t]))  # the ends first
    with evaluation_mode(landscape.model):
        evaluate = landscape.evaluator(curve.plane, metrics=True)
        task = evaluate.task
        axes = [torch.as_tensor(c, dtype=task.dtype).to(task.device) for c in coords.T]
        values = {
            n: v.double().cpu().numpy() for n, v in evaluate(Points.along(task.plane, axes)).items()
        }
    ends = {name: v[:2] for name, v in values.items()}
    data_vars = {name: ("t", v[2:]) for name, v in values.items()}
    data_vars |= {dim: ("t", c[2:]) for dim, c in zip(("alpha", "beta"), coords.T)}
    loss_a, loss_b = map(float, ends["loss"])
    rise = values["loss"][2:] - ((1 - t) * loss_a + t * loss_b)
    k = int(np.nanargmax(rise)) if np.isfinite(rise).any() else 0
    attrs = {
        "curve": curve.kind,
        "loss_a": loss_a,
        "loss_b": loss_b,
        "barrier": float(rise[k]),
        "barrier_t": float(t[k]),
    }
    return xr.Dataset(data_vars, coords={"t": t}, attrs=attrs)


def _curve(curve: Any) -> Curve:
    """``curve`` as a :class:`Curve` (a line ``Plane`` of one direction becomes one)."""
    if isinstance(curve, Curve):
        return curve
    if isinstance(curve, Plane) and curve.ndim == 1:
        return Curve("line", curve)
    raise CrumpleTypeError(
        f"curve must be a crumple.Curve (Curve.line(a, b), Curve.bezier(a, b, bend)) or a "
        f"line crumple.Plane.between(a, b), got {type(curve).__name__}"
        + (f" with {curve.ndim} directions" if isinstance(curve, Plane) else "")
    )
