"""What every figure shares: colours, axis labels from attributes, the thinned display grid,
and the checks of what the figures are given (the scale that clips divergent values is
:mod:`crumple.plot.scale`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from crumple.checks import check_name
from crumple.errors import CrumpleError

# the first path is drawn as in the article: a red line with yellow markers
PATH_STYLES = [
    ("red", "yellow"),
    ("#00e5ff", "#b3f5ff"),
    ("#7CFC00", "#d4ffb0"),
    ("#ff66ff", "#ffd1ff"),
    ("orange", "#ffe0a3"),
    ("#ffffff", "#cccccc"),
]
CRITICAL_STYLES = {"minima": "#00ff7f", "maxima": "#ff4040", "saddles": "#ffd700"}
DISPLAY_MAX = 200  # points per axis drawn; the stored data is never reduced
OFF_PLANE_TOL = 1e-6  # relative distance above which a path is drawn with its projection
Paths = Mapping[str, xr.Dataset]


def label(da: xr.DataArray) -> str:
    """The axis title of a variable or coordinate: its ``long_name``, else its name.

    Example:
        >>> label(xr.DataArray([1.0], dims="alpha", name="alpha", attrs={"long_name": "PC1"}))
        'PC1'
    """
    return str(da.attrs.get("long_name", da.name))


def colours(k: int) -> tuple[str, str]:
    """The line and marker colours of the ``k``-th path (they repeat after six).

    Example:
        >>> colours(0), colours(6) == colours(0)
        (('red', 'yellow'), True)
    """
    return PATH_STYLES[k % len(PATH_STYLES)]


def off_plane(path: xr.Dataset) -> bool:
    """Whether a path leaves the plane (so its projection is drawn too).

    Example:
        >>> off_plane(xr.Dataset({"off_plane": ("step", [0.0, 0.1]),
        ...                       "loss_on_plane": ("step", [1.0, 1.0])}))
        True
    """
    if "off_plane" not in path or "loss_on_plane" not in path:
        return False
    return bool(np.nanmax(path.off_plane.values, initial=0.0) > OFF_PLANE_TOL)


def model_points(ds: xr.Dataset) -> dict[str, tuple[float, float]]:
    """Where the models sit on a surface's plane, by name: on a plane between models
    (``Plane.between``), ``a`` at (0, 0), ``b`` at (1, 0) and ``c`` at (0, 1); on a plane of
    two weights (``Plane.axes``, whose origin is no model) none; on any other, the model at
    the origin.

    Example:
        >>> model_points(xr.Dataset(attrs={"plane_kind": "between"}))
        {'a': (0.0, 0.0), 'b': (1.0, 0.0), 'c': (0.0, 1.0)}
        >>> model_points(xr.Dataset(attrs={"plane_kind": "random"}))
        {'model': (0.0, 0.0)}
    """
    kind = ds.attrs.get("plane_kind")
    if kind in ("between", "aligned"):  # the third named where it is no third model
        return {"a": (0.0, 0.0), "b": (1.0, 0.0), str(ds.attrs.get("plane_third", "c")): (0.0, 1.0)}
    return {} if kind == "axes" else {"model": (0.0, 0.0)}


def display_grid(ds: xr.Dataset, max_points: int = DISPLAY_MAX) -> tuple[xr.Dataset, str | None]:
    """Every k-th grid line so that at most ``max_points`` per axis are drawn, and a note
    saying so (``None`` if nothing was left out).

    Example:
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.zeros((400, 50)))})
        >>> small, note = display_grid(ds)
        >>> small.loss.shape, note
        ((200, 50), 'drawn from every 2nd grid line (200 x 50 of 400 x 50); the data holds all')
    """
    steps = {d: max(1, -(-ds.sizes[d] // max_points)) for d in ds.loss.dims}
    step = max(steps.values())
    if step == 1:
        return ds, None
    small = ds.isel({d: slice(None, None, k) for d, k in steps.items()})
    shape = " x ".join(str(n) for n in small.loss.shape)
    full = " x ".join(str(n) for n in ds.loss.shape)
    suffix = {2: "nd", 3: "rd"}.get(step, "th")
    return (
        small,
        f"drawn from every {step}{suffix} grid line ({shape} of {full}); the data holds all",
    )


def check_paths(paths: object, needs: tuple[str, ...] = ("alpha", "beta", "loss")) -> dict:
    """``paths`` as a dict name -> path dataset, or a :class:`CrumpleError` naming what is
    missing or a name a path may not take (:func:`crumple.checks.check_name`).

    Example:
        >>> p = xr.Dataset({"alpha": ("step", [0.0]), "beta": ("step", [0.0]),
        ...                 "loss": ("step", [1.0])})
        >>> list(check_paths({"SGD": p}))
        ['SGD']
        >>> try:
        ...     check_paths({"SGD": p.drop_vars("beta")})
        ... except CrumpleError as e:
        ...     print(str(e)[:56])
        paths['SGD'] has no 'beta' (it holds ['alpha', 'loss']);
    """
    if paths is None:
        return {}
    if isinstance(paths, xr.Dataset) or not isinstance(paths, Mapping):
        raise CrumpleError(
            f"paths={_short(paths)} is not a mapping of name -> path dataset; give "
            "paths={'SGD': path} with each path from crumple.project"
        )
    for name, path in paths.items():
        check_name(name, "the path named")
        if not isinstance(path, xr.Dataset):
            raise CrumpleError(
                f"paths[{name!r}]={_short(path)} is not an xarray Dataset; give the dataset "
                "that crumple.project returns"
            )
        missing = [v for v in needs if v not in path.variables]
        if missing or "step" not in path.dims:
            what = repr(missing[0]) if missing else "'step' dimension"
            raise CrumpleError(
                f"paths[{name!r}] has no {what} (it holds {sorted(map(str, path.variables))}); "
                f"a path is a dataset from crumple.project with {', '.join(needs[:-1])} and "
                f"{needs[-1]} over step"
            )
    return dict(paths)


def _short(value: object) -> str:
    """``repr`` of a value, cut to one short line for an error message."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."
