"""The metrics beside the loss (``--metric accuracy``, ``cr.surface(metrics=...)``) drawn:
each in its own contour panel, accuracy in percent, and along the paths where they hold it;
and the page of one variable (``crumple plot --var NAME``).

A metric is drawn by putting it in the loss's place (:func:`in_loss_place`), so every figure
of :mod:`crumple.plot.figures` draws it as it draws the loss. A bounded metric is not a loss
that diverges: its whole range is drawn, none of it clipped."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from crumple.errors import CrumpleError
from crumple.names import CURVATURE
from crumple.plot.figures import animate, contour, losses, surface
from crumple.plot.style import Paths, label

PERCENT = "accuracy"  # a metric whose name holds this, valued in [0, 1], is drawn in %


def metric_names(ds: xr.Dataset) -> list[str]:
    """The metrics of a surface or line: its variables over the loss's dimensions but the
    loss and the curvature map's.

    Example:
        >>> ds = xr.Dataset({"loss": ("alpha", [1.0]), "accuracy": ("alpha", [0.5]),
        ...                  "lambda_max": ("alpha", [2.0])})
        >>> metric_names(ds)
        ['accuracy']
    """
    return [
        str(v)
        for v in ds.data_vars
        if v != "loss" and v not in CURVATURE and ds[v].dims == ds.loss.dims
    ]


def check_var(ds: xr.Dataset, var: str, option: str = "var") -> str:
    """``var`` if the run holds it (the loss or a metric), else a :class:`CrumpleError`
    listing what it holds.

    Example:
        >>> ds = xr.Dataset({"loss": ("alpha", [1.0]), "accuracy": ("alpha", [0.5])})
        >>> check_var(ds, "accuracy")
        'accuracy'
    """
    held = ["loss", *metric_names(ds)]
    if var not in held:
        raise CrumpleError(
            f"{option}={var!r} is not a variable of the run; it holds {', '.join(held)}: give "
            f"one of them (crumple surface and crumple line store a metric given --metric NAME)"
        )
    return var


def drawn(da: xr.DataArray) -> xr.DataArray:
    """A variable as the figures draw it: a fraction named like accuracy in percent, any
    other as it is; named in its ``long_name``.

    Example:
        >>> acc = xr.DataArray([0.25, 1.0], dims="alpha", name="accuracy")
        >>> d = drawn(acc)
        >>> d.values.tolist(), d.attrs["long_name"]
        ([25.0, 100.0], 'accuracy (%)')
    """
    name = str(da.attrs.get("long_name", da.name))
    values = np.asarray(da.values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if PERCENT in str(da.name) and finite.size and finite.min() >= 0 and finite.max() <= 1:
        return da.copy(data=values * 100).assign_attrs(long_name=f"{name} (%)")
    return da.assign_attrs(long_name=name)


def in_loss_place(
    ds: xr.Dataset, paths: Paths | None, var: str
) -> tuple[xr.Dataset, dict[str, xr.Dataset]]:
    """The surface (or line) and the paths with ``var`` (:func:`drawn`) in the loss's place,
    so that a figure of the loss draws it. A path that does not hold ``var`` keeps its place
    with no value (nan): the contour view draws where it went, the 3-D view nothing.

    Example:
        >>> ds = xr.Dataset({"loss": ("alpha", [2.0]), "accuracy": ("alpha", [0.5])})
        >>> float(in_loss_place(ds, None, "accuracy")[0].loss[0])
        50.0
    """
    shown = ds.assign(loss=drawn(ds[var]))
    moved = {}
    for name, path in (paths or {}).items():
        value = drawn(path[var]) if var in path else xr.full_like(path.loss, np.nan)
        moved[name] = path.drop_vars(["loss_on_plane"], errors="ignore").assign(loss=value)
    return shown, moved


def full_range(da: xr.DataArray) -> float | None:
    """The cap that draws every finite value (None when there is none).

    Example:
        >>> full_range(xr.DataArray([0.1, np.nan, 0.9]))
        0.9
    """
    values = np.asarray(da.values, dtype=np.float64)
    return float(np.nanmax(values)) if np.isfinite(values).any() else None


def metric_panels(
    ds: xr.Dataset, paths: Paths | None = None, *, template: str = "plotly_dark"
) -> list[go.Figure]:
    """One contour panel per metric of ``ds`` (accuracy in %, its whole range drawn), the
    paths drawn where they went; and each metric along the paths that hold it.

    Example:
        >>> a = np.linspace(-1, 1, 3)
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.ones((3, 3))),
        ...                  "accuracy": (("alpha", "beta"), np.full((3, 3), 0.5))},
        ...                 coords={"alpha": a, "beta": a})
        >>> [float(v) for v in metric_panels(ds)[0].data[0].z[0]]
        [50.0, 50.0, 50.0]
    """
    figures = []
    for var in metric_names(ds):
        shown, moved = in_loss_place(ds, paths, var)
        title = f"{label(shown.loss)}, seen from above"
        zmax = full_range(shown.loss)
        panel = contour(shown, moved, zmax=zmax, critical=False, title=title)
        figures.append(_named(panel, label(shown.loss)))
        figures.extend(_along_paths(moved, label(shown.loss), template))
    return figures


def variable_figures(
    ds: xr.Dataset,
    paths: Paths | None,
    var: str,
    *,
    log: bool = False,
    zmax: float | None = None,
    template: str = "plotly_dark",
) -> list[go.Figure]:
    """The 3-D and contour views of the variable ``var`` (the page of ``crumple plot --var
    NAME``), the paths drawn where they hold it, and ``var`` along them; ``zmax`` by default
    the variable's whole range.

    Example:
        >>> a = np.linspace(-1, 1, 3)
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.ones((3, 3))),
        ...                  "accuracy": (("alpha", "beta"), np.full((3, 3), 0.5))},
        ...                 coords={"alpha": a, "beta": a})
        >>> [f.data[0].type for f in variable_figures(ds, None, "accuracy")]
        ['surface', 'contour']
    """
    shown, moved = in_loss_place(ds, paths, check_var(ds, var))
    name = label(shown.loss)
    zmax = full_range(shown.loss) if zmax is None else zmax
    options = dict(log=log, zmax=zmax, critical=False, template=template)
    drawn_3d = animate if moved else surface
    return [
        _named(drawn_3d(shown, moved, title=name, **options), name),
        _named(contour(shown, moved, title=f"{name}, seen from above", **options), name),
        *_along_paths(moved, name, template),
    ]


def _named(fig: go.Figure, name: str) -> go.Figure:
    """The figure with its trace of the variable (named ``loss`` by the figures, a name
    no path may take) named ``name``."""
    return fig.update_traces(name=name, selector=dict(name="loss"))


def _along_paths(moved: Mapping[str, xr.Dataset], name: str, template: str) -> list[go.Figure]:
    """The variable along the paths that hold it (a figure), or nothing."""
    known = {n: p for n, p in moved.items() if np.isfinite(p.loss.values).any()}
    if not known:
        return []
    fig = losses(known, template=template, title=f"{name} along the paths")
    fig.update_layout(yaxis_title=name)
    return [fig]
