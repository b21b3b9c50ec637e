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

from crumple.batches import load
from crumple.checks import named_functions, whole_number
from crumple.curve import Curve, check_t, plane_coordinates
from crumple.errors import CrumpleError, CrumpleTypeError
from crumple.evaluation.probes import functional
from crumple.grid import Grid
from crumple.landscape import Landscape, LossFn
from crumple.losses import Objective
from crumple.plane import Plane
from crumple.progress import tqdm

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
        **options: :func:`crumple.line`'s keywords (``metrics``, ``recalibrate``, ``dtype``,
            ``device``, ``strategy``, ``store`` (a run folder: the same call resumes it),
            ``dask`` (tiles of ``t`` on Dask workers), ...); ``check`` is refused.

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
    if options.get("check"):
        raise CrumpleError(
            "check= is not an option of path_loss: its points are a curve, and the test "
            "suite checks them against the reference loop; leave check out"
        )
    return along(Landscape(model, loss_fn, data, **options), curve, t)


def along(landscape: Landscape, curve: Curve | Plane, t: Any = T) -> xr.Dataset:
    """:func:`path_loss` on a :class:`~crumple.landscape.Landscape` (options bound once):
    the points of ``t`` and the two ends, through the run driver (``store=`` resumed,
    ``dask=`` workers), as a grid over ``t`` along the curve."""
    curve = _curve(curve)
    t = check_t(t)
    every = np.unique(np.concatenate([[0.0, 1.0], t]))  # the ends too, each point once
    run = landscape.evaluate(curve.plane, Grid(every), along=curve.kind)
    at = np.searchsorted(every, t)
    values = {name: run[name].values for name in run.data_vars}
    data_vars = {name: ("t", v[at]) for name, v in values.items()}
    data_vars |= {dim: ("t", c) for dim, c in zip(("alpha", "beta"), curve.coordinates(t).T)}
    loss_a, loss_b = float(values["loss"][0]), float(values["loss"][-1])
    rise = data_vars["loss"][1] - ((1 - t) * loss_a + t * loss_b)
    k = int(np.nanargmax(rise)) if np.isfinite(rise).any() else 0
    attrs = {
        "curve": curve.kind,
        "loss_a": loss_a,
        "loss_b": loss_b,
        "barrier": float(rise[k]),
        "barrier_t": float(t[k]),
    }
    keep = ("seconds", "strategy", "n_samples", "recalibrated", "tiles_computed", "store")
    attrs |= {key: run.attrs[key] for key in keep if key in run.attrs}
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


def connect(
    model_a: nn.Module,
    model_b: nn.Module,
    loss_fn: LossFn,
    train_data: Any,
    kind: str = "bezier",
    *,
    steps: int = 1000,
    lr: float = 0.05,
    momentum: float = 0.9,
    seed: int = 0,
    progress: bool = False,
) -> Curve:
    """A low-loss curve from ``model_a`` to ``model_b``: the bend of a quadratic Bezier
    curve (``kind="bezier"``) or a polygonal chain (``"polychain"``), started at the
    midpoint and trained as Garipov et al. (2018) train it: each step, the loss on the next
    batch of ``train_data`` at a point of the curve drawn uniformly in ``t``, its gradient
    with respect to the bend, and an SGD step (``lr``, ``momentum``). The ends stay fixed;
    the model runs in train mode, on its own copy of the buffers (``model_a`` and
    ``model_b`` are left as they were).

    Returns:
        The trained :class:`crumple.Curve`; its ``history`` is a Dataset over ``step``
        of the ``t`` drawn and the batch ``loss`` there.

    Example:
        >>> import torch, crumple as cr
        >>> a, b = torch.nn.Linear(2, 1).double(), torch.nn.Linear(2, 1).double()
        >>> x = torch.randn(16, 2, dtype=torch.float64)
        >>> curve = cr.connect(a, b, torch.nn.functional.mse_loss, (x, x[:, :1]), steps=5)
        >>> curve.kind, curve.history.sizes["step"]
        ('bezier', 5)
    """
    if kind not in ("bezier", "polychain"):
        raise CrumpleError(f"kind must be 'bezier' or 'polychain', got {kind!r}")
    steps = whole_number("steps", steps, 1)
    for name, value in (("lr", lr), ("momentum", momentum)):
        if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise CrumpleError(f"{name} must be a number >= 0, got {value!r}")
    start = getattr(Curve, kind)(model_a, model_b, model=model_a)
    objective = Objective(model_a, named_functions(loss_fn))
    origin, (to_b, to_bend) = start.plane.origin, start.plane.directions
    reference = next(iter(origin.values()))
    batches = load(train_data).to(reference.device, reference.dtype)
    bend = {n: (o + to_bend[n]).clone().requires_grad_() for n, o in origin.items()}
    optimizer = torch.optim.SGD(bend.values(), lr=lr, momentum=momentum)
    buffers = {n: b.detach().clone() for n, b in model_a.named_buffers()}
    generator = torch.Generator().manual_seed(seed)
    drawn, losses = [], []
    batch_iter = _cycle(batches)
    flags = {m: m.training for m in model_a.modules()}
    try:
        model_a.train()
        for _ in tqdm(range(steps), desc="connect", disable=not progress):
            t = float(torch.rand((), generator=generator, dtype=torch.float64))
            batch = next(batch_iter)
            x, y = plane_coordinates(kind, torch.tensor(t, dtype=torch.float64))
            weights = {  # on the plane, with the bend's direction the one trained
                n: o + float(x) * to_b[n] + float(y) * (bend[n] - o) for n, o in origin.items()
            }
            predict = functional(model_a, weights, buffers)
            loss = objective.values(objective.call(predict, batch), batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            drawn.append(t)
            losses.append(float(loss.detach()))
    finally:
        for m, flag in flags.items():
            m.train(flag)
    trained = {n: p.detach() for n, p in bend.items()}
    curve = getattr(Curve, kind)(origin, start.plane.at(1.0, 0.0), trained)
    history = xr.Dataset(
        {"t": ("step", np.array(drawn)), "loss": ("step", np.array(losses))},
        coords={"step": np.arange(1, steps + 1)},
    )
    return Curve(curve.kind, curve.plane, history)


def _cycle(batches):
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise CrumpleError("train_data holds no batch")
