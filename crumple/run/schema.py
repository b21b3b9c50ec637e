"""The ``xarray.Dataset`` of a surface or a line: coordinates named after the plane's axes,
one variable per function, the plane's facts and the run's in ``attrs``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from crumple.grid import Grid
from crumple.plane import Plane
from crumple.version import __version__

# the surface's attributes that hold numbers (or lists of numbers), checked when it is read
NUMBERS = (
    *("n_samples", "n_target_tokens", "n_parameters", "seconds", "tiles_computed"),
    *("batch_size", "chunk_size", "points_per_call", "check_max_rel_diff"),
    *("plane_seed", "plane_cosine", "plane_eigenvalues"),
)


def function_name(fn: Callable | str) -> str:
    """A function's name; ``"model"`` (the loss the model computes) is named so."""
    if isinstance(fn, str):
        return f"{fn} loss"
    return getattr(fn, "__name__", type(fn).__name__)


def coord_attrs(plane: Plane, grid: Grid) -> dict[str, dict]:
    """``long_name`` of each grid axis: the plane's axis names."""
    names = plane.attrs.get("axis_names", grid.dims)
    return {dim: {"long_name": str(name)} for dim, name in zip(grid.dims, names)}


def plane_attrs(plane: Plane, grid: Grid) -> dict[str, Any]:
    """The plane's facts as a surface's attributes (``plane_kind``, ``plane_seed``, ...)
    and how the grid was chosen, written when a run starts and again when it ends.

    Example:
        >>> import torch
        >>> plane_attrs(Plane.random(torch.nn.Linear(2, 1), seed=3), Grid([0.0, 1.0]))["plane_seed"]
        3
    """
    attrs = {"plane_kind": plane.attrs.get("kind", "custom")}
    if grid.chosen:
        attrs["grid_chosen"] = grid.chosen
    for key, value in plane.attrs.items():
        if key not in ("kind", "axis_names"):
            attrs[f"plane_{key}"] = list(value) if isinstance(value, (list, tuple)) else value
    return attrs


def grid_dataset(
    results: Mapping[str, np.ndarray],
    plane: Plane,
    grid: Grid,
    fns: Mapping[str, Callable],
    facts: Mapping[str, Any],
    long_names: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """``results[name][i, j]`` at ``(alpha[i], beta[j])`` as a Dataset; ``long_names`` of
    variables other than the functions' (an extra's).

    Example:
        >>> import torch
        >>> plane = Plane.axes(torch.nn.Linear(1, 1), "weight")
        >>> ds = grid_dataset({"loss": np.zeros(2)}, plane, Grid([0.0, 1.0]),
        ...                   {"loss": torch.nn.functional.mse_loss}, {})
        >>> ds.loss.attrs["long_name"], ds.alpha.attrs["long_name"]
        ('mse_loss', 'weight')
    """
    attrs_of = coord_attrs(plane, grid)
    coords = {dim: (dim, axis, attrs_of[dim]) for dim, axis in zip(grid.dims, grid.axes)}
    loss_name = function_name(fns["loss"])
    long_names = {"loss": loss_name, **(long_names or {})}
    data_vars = {
        name: (grid.dims, values, {"long_name": long_names.get(name, name)})
        for name, values in results.items()
    }
    attrs = plane_attrs(plane, grid)
    attrs |= {"loss_name": loss_name, **facts, "crumple_version": __version__}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
