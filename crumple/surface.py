"""``surface`` and ``line``, the functional front of :class:`crumple.landscape.Landscape`:
check the inputs, run the grid tile by tile (``crumple.run.driver``), return an
``xarray.Dataset``; ``check=N`` re-does N points with ``crumple.reference``."""

from __future__ import annotations

from typing import Any

import xarray as xr
from torch import nn

from crumple.grid import Grid
from crumple.landscape import Landscape, LossFn
from crumple.plane import Plane


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
            Hessian's extreme eigenvalues at each point (:mod:`crumple.hessian.curvature_map`).
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
    return Landscape(model, loss_fn, data, **options).surface(plane, grid)


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
    return Landscape(model, loss_fn, data, **options).line(plane, alpha)
