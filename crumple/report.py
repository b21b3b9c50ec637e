"""A landscape run written to a folder, the one way ``crumple surface`` and the training
callbacks (:mod:`crumple.integrations`) both write theirs: the surface, each path projected
onto the plane, the data (``landscape.zarr``, ``plane.safetensors``) and the page
(``landscape.html``)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import xarray as xr

from crumple.checks import check_name
from crumple.files import written
from crumple.grid import Grid
from crumple.names import PAGE
from crumple.run.lock import writer

if TYPE_CHECKING:
    from crumple.landscape import Landscape

MARGIN = 0.2  # room left around a path, as a fraction of its extent, on each side


class Run(NamedTuple):
    """What :func:`write_run` computed and wrote."""

    surface: xr.Dataset
    paths: dict[str, xr.Dataset]
    page: Path


def write_run(
    folder: str | Path,
    landscape: Landscape,
    plane,
    grid: Grid,
    *,
    trajectory=None,
    paths: Mapping[str, xr.Dataset] | None = None,
    title: str | None = None,
    sharpness: xr.Dataset | None = None,
) -> Run:
    """:func:`save_surface`, then :func:`write_page` (with ``title``): the whole run folder
    of ``crumple surface``.

    Example:
        >>> import tempfile, torch, crumple as cr
        >>> from crumple.landscape import Landscape
        >>> net = torch.nn.Linear(2, 1)
        >>> x = torch.randn(8, 2)
        >>> land = Landscape(net, torch.nn.functional.mse_loss, (x, x[:, :1]), progress=False)
        >>> run = write_run(tempfile.mkdtemp(), land, cr.Plane.random(net, seed=0),
        ...                 cr.Grid([-1.0, 0.0, 1.0], [0.0, 1.0]))
        >>> run.surface.loss.shape, run.page.name
        ((3, 2), 'landscape.html')
    """
    with writer(folder):  # one writer from the surface to the page
        ds, paths = save_surface(
            folder, landscape, plane, grid, trajectory=trajectory, paths=paths, sharpness=sharpness
        )
        return Run(ds, paths, write_page(folder, ds, paths, title=title))


def save_surface(
    folder: str | Path,
    landscape: Landscape,
    plane,
    grid: Grid,
    *,
    trajectory=None,
    paths: Mapping[str, xr.Dataset] | None = None,
    sharpness: xr.Dataset | None = None,
) -> tuple[xr.Dataset, dict[str, xr.Dataset]]:
    """Compute the surface on ``landscape`` (a model, loss, data and options bound once),
    project ``trajectory`` onto the plane as the path ``"path"`` (evaluated as the surface
    is), add the ``paths`` already projected, and write them and the plane to ``folder``
    (:func:`crumple.run.store.save_run`), with the curvature measured in training
    (``sharpness``, by default the trajectory's) beside them.

    Example:
        >>> import tempfile, torch, crumple as cr
        >>> from crumple.landscape import Landscape
        >>> net = torch.nn.Linear(2, 1)
        >>> x = torch.randn(8, 2)
        >>> land = Landscape(net, torch.nn.functional.mse_loss, (x, x[:, :1]), progress=False)
        >>> ds, paths = save_surface(tempfile.mkdtemp(), land, cr.Plane.random(net, seed=0),
        ...                          cr.Grid([0.0, 1.0], [0.0]))
        >>> ds.attrs["n_parameters"], paths
        (3, {})
    """
    from crumple.run import store

    for name in paths or {}:  # before the surface is computed
        check_name(name, "the path named")
    with writer(folder):  # its one writer, from the resume check (a landscape's store) on
        ds = landscape.surface(plane, grid)
        paths = dict(paths or {})
        if trajectory is not None:
            paths["path"] = landscape.project(trajectory, plane)
        ds.attrs["n_parameters"] = sum(p.numel() for p in landscape.model.parameters())
        store.save_run(folder, ds, paths, plane)
        if sharpness is None and trajectory is not None:
            sharpness = trajectory.sharpness()
        if sharpness is not None:
            store.save_sharpness(folder, sharpness)
    return ds, paths


def choose_grid(
    grid, landscape: Landscape | None, plane, paths, *, num: int = 25, rise: float = 2.0
) -> Grid:
    """The grid of a run: ``grid`` itself if it is a :class:`~crumple.grid.Grid` (with a
    warning if a path leaves it), ``"auto"`` for :meth:`Landscape.auto_grid
    <crumple.landscape.Landscape.auto_grid>` (``rise``) widened to hold the ``paths`` (a
    dict of projected paths), or ``None`` for one around the paths (:func:`covering_grid`).

    Example:
        >>> path = xr.Dataset({"alpha": ("step", [0.0, 2.0]), "beta": ("step", [0.0, 1.0])})
        >>> choose_grid(None, None, None, {"path": path}, num=3)
        Grid(alpha=[-0.4 .. 2.4] (3), beta=[-0.2 .. 1.2] (3))
    """
    if isinstance(grid, Grid):
        away = outside(paths, grid)
        if away:
            total = sum(p.sizes["step"] for p in paths.values())
            warnings.warn(
                f"crumple: {away} of {total} path points lie outside the grid; widen it, or "
                "let the grid hold the path ('auto', or None: around the path)",
                stacklevel=3,
            )
        return grid
    if grid == "auto":
        return landscape.auto_grid(plane, rise=rise, num=num, cover=paths)
    return covering_grid(paths, num=num)


def write_page(
    folder: str | Path,
    surface: xr.Dataset,
    paths: Mapping[str, xr.Dataset] | None = None,
    *,
    title: str | None = None,
    **stores: xr.Dataset | None,
) -> Path:
    """The run's page, ``folder/landscape.html`` (:func:`crumple.plot.report`). ``stores``
    are the results kept beside the surface that the page draws, as ``report``'s keywords
    (``hessian=``, ``spread=``, ``sharpness=``); without any, those the folder holds
    (:func:`crumple.run.store.beside`: a damaged one is left out, and the page says so).

    Example:
        >>> import tempfile
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.ones((2, 2)))},
        ...                 coords={"alpha": [0.0, 1.0], "beta": [0.0, 1.0]})
        >>> write_page(tempfile.mkdtemp(), ds).name
        'landscape.html'
    """
    from crumple import plot
    from crumple.run import store

    folder = Path(folder)
    with writer(folder):
        stores = stores or store.beside(folder)
        title = title or f"crumple: {surface.attrs.get('loss_name', 'loss')} landscape"
        return plot.report(folder / PAGE, surface, paths, title=title, **stores)


def covering_grid(
    paths: Mapping[str, xr.Dataset] | xr.Dataset, *, num: int = 25, margin: float = MARGIN
) -> Grid:
    """A grid of ``num`` points per axis that holds every point of the paths and the
    plane's origin, with ``margin`` times their extent of room on each side
    (:func:`crumple.auto_range.covering`).

    Example:
        >>> path = xr.Dataset({"alpha": ("step", [-1.0, 3.0]), "beta": ("step", [0.5, 1.0])})
        >>> grid = covering_grid(path, num=5)
        >>> [(float(a[0]), float(a[-1])) for a in grid.axes]
        [(-1.8, 3.8), (-0.2, 1.2)]
    """
    from crumple.auto_range import covering

    paths = {"path": paths} if isinstance(paths, xr.Dataset) else dict(paths)
    dims = ("alpha", "beta") if all("beta" in p for p in paths.values()) else ("alpha",)
    origin = xr.Dataset({dim: ("step", [0.0]) for dim in dims})
    extents, _ = covering([(0.0, 0.0)] * len(dims), [origin, *paths.values()], margin)
    # a path that never leaves the origin: one unit each way
    extents = [(low, high) if high > low else (low - 1.0, high + 1.0) for low, high in extents]
    grid = Grid(*(np.linspace(low, high, num) for low, high in extents))
    grid.chosen = f"the path's extent and the origin, with {margin:.0%} of it as room each side"
    return grid


def outside(paths: Mapping[str, xr.Dataset], grid: Grid) -> int:
    """How many path points, over all ``paths``, lie outside the grid's extent
    (:meth:`Grid.outside <crumple.grid.Grid.outside>`).

    Example:
        >>> path = xr.Dataset({"alpha": ("step", [0.0, 2.0]), "beta": ("step", [0.0, 0.0])})
        >>> outside({"path": path}, Grid([-1.0, 1.0], [-1.0, 1.0]))
        1
    """
    return sum(grid.outside(path) for path in paths.values())


def export_netcdf(folder: str | Path, file: str | Path) -> Path:
    """One netCDF file, written whole or not at all, with the surface and every path
    (``path{k}_*`` variables along ``step{k}``, named in their ``path_name`` attribute).

    Example:
        >>> import tempfile
        >>> from crumple.run.store import save_run
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.ones((2, 2)))},
        ...                 coords={"alpha": [0.0, 1.0], "beta": [0.0, 1.0]})
        >>> folder = save_run(tempfile.mkdtemp(), ds)
        >>> float(xr.open_dataset(export_netcdf(folder, f"{folder}/run.nc")).loss.sum())
        4.0
    """
    from crumple.run.store import open_run

    run = open_run(folder)
    run.pop("sharpness", None)  # over the training's steps, not a path's
    merged = run.pop("surface").copy()
    for k, (name, path) in enumerate(run.items()):
        renamed = path.rename({"step": f"step{k}"}).rename(
            {v: f"path{k}_{v}" for v in path.data_vars}
        )
        for v in renamed.data_vars:
            renamed[v].attrs["path_name"] = name
        merged = merged.merge(renamed)
    attrs = {
        k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in merged.attrs.items()
    }
    merged.attrs = {k: v for k, v in attrs.items() if v is not None}
    file = Path(file)
    with written(file) as temporary:
        merged.to_netcdf(temporary)
    return file
