"""plotly figures of landscapes and paths: 3-D surface, contour, loss curves, 1-D lines,
animation. Labels come from the datasets' attributes (``long_name``); the traces the views
share are in :mod:`crumple.plot.traces`, colours and scales in :mod:`crumple.plot.style`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from crumple import planes
from crumple.errors import CrumpleError
from crumple.plot.scale import Scale
from crumple.plot.style import Paths, check_paths, colours, display_grid, label, off_plane
from crumple.plot.traces import (
    add_animation,
    add_clipped,
    add_critical,
    add_cursor,
    add_models,
    add_path,
)

__all__ = ["surface", "contour", "losses", "line", "animate", "fit", "display_grid"]
CAMERA_EYE = dict(x=1.6, y=1.6, z=1.1)  # plotly's 1.25 each clips the axis titles
SCENE_VIEW = dict(aspectratio=dict(x=1, y=1, z=0.5), camera=dict(eye=CAMERA_EYE))


def surface(
    ds: xr.Dataset,
    paths: Paths | None = None,
    *,
    log: bool = False,
    zmax: float | None = None,
    critical: bool = True,
    animate: bool = False,
    title: str = "Loss Surface",
    template: str = "plotly_dark",
    fig: go.Figure | None = None,
) -> go.Figure:
    """The loss surface in 3-D, each path at its true loss, the plane's models marked.

    Args:
        ds: a dataset from :func:`crumple.surface` (``loss`` over ``alpha`` and ``beta``).
        paths: name -> dataset from :func:`crumple.project`. A path that leaves the plane is
            also drawn faintly at its projection (``loss_on_plane``).
        log: draw log10 of the loss.
        zmax: clip the drawn loss at this value (default: the largest value within the
            finite values' spread, :class:`~crumple.plot.scale.Scale`); clipped points and
            inf are marked and counted in the subtitle, nan is left as a gap. A surface with
            no finite value says so instead of drawing anything.
        critical: mark local minima, maxima and saddles (counts in the legend) and label
            the grid's global minimum (saying so when it lies on the grid's edge).
        animate: let the paths grow step by step (play button and slider).
        title, template: the figure's title and plotly template.
        fig: an existing figure to draw into.

    Example:
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.arange(6.0).reshape(3, 2))},
        ...                 coords={"alpha": [0, 1, 2], "beta": [0, 1]})
        >>> fig = surface(ds)
        >>> fig.data[0].type, fig.layout.scene.zaxis.title.text
        ('surface', 'loss')
    """
    fig = fig if fig is not None else go.Figure()
    paths = check_paths(paths)
    view, note = display_grid(ds)
    scale = Scale(ds.loss.values, log, zmax)  # from all the data, not the thinned view
    # plotly puts z[row] at y[row]: rows must run along beta
    z = view.loss.transpose("beta", "alpha").values
    x, y = view.alpha.values, view.beta.values
    if not scale.empty:  # a surface of nan only stops plotly's WebGL scene: none is drawn
        fig.add_trace(
            go.Surface(
                x=x,
                y=y,
                z=scale(z),
                colorscale="Viridis",
                name="loss",
                colorbar=dict(title=scale.title(label(ds.loss)), len=0.6, thickness=15),
                hovertemplate="(%{x:.3f}, %{y:.3f})<br>%{z:.5g}<extra></extra>",
                **_colour_range(scale, "c"),
            )
        )
    add_clipped(fig, x, y, z, scale)
    if critical and not scale.empty:
        add_critical(fig, view, scale, three_d=True)
    add_models(fig, ds, scale, three_d=True)
    for k, (name, path) in enumerate(paths.items()):
        add_path(fig, name, path, k, scale, three_d=True)
    add_cursor(fig)
    if animate and paths:
        add_animation(fig, paths, scale)
    _say_if_empty(fig, scale)
    fig.update_layout(
        template=template,
        title=_subtitled(title, note, scale.note()),
        scene=dict(
            xaxis_title=label(ds.alpha),
            yaxis_title=label(ds.beta),
            zaxis_title=scale.title(label(ds.loss)),
            **SCENE_VIEW,
        ),
        showlegend=True,
        legend=dict(x=0.01, y=0.99),
        margin=dict(l=10, r=10, t=60, b=10),
    )
    return fig


def contour(
    ds: xr.Dataset,
    paths: Paths | None = None,
    *,
    log: bool = False,
    zmax: float | None = None,
    critical: bool = True,
    title: str = "Seen from above",
    template: str = "plotly_dark",
) -> go.Figure:
    """The same landscape as filled contours, with the paths and critical points; the
    options are :func:`surface`'s.

    Example:
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.arange(6.0).reshape(3, 2))},
        ...                 coords={"alpha": [0, 1, 2], "beta": [0, 1]})
        >>> contour(ds).data[0].type
        'contour'
    """
    paths = check_paths(paths)
    view, note = display_grid(ds)
    scale = Scale(ds.loss.values, log, zmax)
    one_scale = planes.comparable(ds.attrs.get("plane_kind"))  # both axes to one scale
    fig = go.Figure(
        go.Contour(
            x=view.alpha.values,
            y=view.beta.values,
            z=scale(view.loss.transpose("beta", "alpha").values),
            colorscale="Viridis",
            ncontours=30,
            name="loss",
            colorbar=dict(title=scale.title(label(ds.loss))),
            hovertemplate="(%{x:.3f}, %{y:.3f})<br>%{z:.5g}<extra></extra>",
            **_colour_range(scale, "z"),
        )
    )
    if critical and not scale.empty:
        add_critical(fig, view, scale, three_d=False)
    add_models(fig, ds, scale, three_d=False)
    for k, (name, path) in enumerate(paths.items()):
        add_path(fig, name, path, k, scale, three_d=False)
    _say_if_empty(fig, scale, ds)
    fig.update_layout(
        template=template,
        title=_subtitled(title, note, scale.note()),
        xaxis_title=label(ds.alpha),
        yaxis_title=label(ds.beta),
        yaxis=dict(scaleanchor="x", scaleratio=1) if one_scale else {},
        margin=dict(l=50, r=10, t=60, b=40),
        legend=dict(orientation="h", y=-0.15),
    )
    return fig


def losses(
    paths: Paths, *, template: str = "plotly_dark", title: str = "Loss along the paths"
) -> go.Figure:
    """Each path's true loss per step (solid) and, where it leaves the plane, the loss at its
    projection (dashed).

    Example:
        >>> p = xr.Dataset({"loss": ("step", [3.0, 2.0]), "loss_on_plane": ("step", [3.0, 2.0]),
        ...                 "off_plane": ("step", [0.0, 0.0])}, coords={"step": [0, 1]})
        >>> [t.name for t in losses({"SGD": p}).data]
        ['SGD']
    """
    fig = go.Figure()
    for k, (name, path) in enumerate(check_paths(paths, needs=("loss",)).items()):
        color = colours(k)[0]
        fig.add_trace(
            go.Scatter(
                x=path.step.values,
                y=path.loss.values,
                name=name,
                mode="lines+markers",
                line=dict(color=color, width=2),
            )
        )
        if off_plane(path):
            fig.add_trace(
                go.Scatter(
                    x=path.step.values,
                    y=path.loss_on_plane.values,
                    name=f"{name} (on plane)",
                    mode="lines",
                    line=dict(color=color, width=1, dash="dash"),
                )
            )
    return _titled(fig, template, title, "step", "loss")


def line(
    slices: xr.Dataset | Mapping[str, xr.Dataset],
    *,
    var: str = "loss",
    template: str = "plotly_dark",
    title: str = "Loss along a line",
) -> go.Figure:
    """1-D slices (from :func:`crumple.line`, or a surface cut with
    ``ds.sel(beta=0, method="nearest")``), one curve each, over the slice's own dimension.

    Example:
        >>> d = xr.Dataset({"loss": ("alpha", [1.0, 0.0, 1.0])}, coords={"alpha": [-1, 0, 1]})
        >>> len(line({"a": d, "b": d}).data)
        2
    """
    slices = {var: slices} if isinstance(slices, xr.Dataset) else dict(slices)
    fig = go.Figure()
    for k, (name, ds) in enumerate(slices.items()):
        dim = _one_dimension(name, ds, var)
        fig.add_trace(
            go.Scatter(
                x=ds[dim].values,
                y=ds[var].values,
                name=name,
                mode="lines",
                line=dict(color=colours(k)[0], width=2),
            )
        )
    first = next(iter(slices.values()))
    dim = first[var].dims[0]
    return _titled(fig, template, title, label(first[dim]), label(first[var]))


def animate(ds: xr.Dataset, paths: Paths, **kwargs) -> go.Figure:
    """:func:`surface` with the paths growing step by step (play button and slider).

    Example:
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.zeros((3, 3)))},
        ...                 coords={"alpha": [0, 1, 2], "beta": [0, 1, 2]})
        >>> p = xr.Dataset({"alpha": ("step", [0.0, 1.0]), "beta": ("step", [0.0, 1.0]),
        ...                 "loss": ("step", [0.0, 0.0])}, coords={"step": [0, 1]})
        >>> len(animate(ds, {"p": p}).frames)
        2
    """
    return surface(ds, paths, animate=True, **kwargs)


def fit(
    x: np.ndarray,
    y: np.ndarray,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    title: str = "Data and fitted curves",
    template: str = "plotly_dark",
) -> go.Figure:
    """Data points and one or more models' curves through them, for 1-D regression.

    Example:
        >>> len(fit(np.arange(3), np.arange(3), {"model": (np.arange(3), np.arange(3))}).data)
        2
    """
    fig = go.Figure()
    fig.add_trace(
        go.Scattergl(
            x=np.asarray(x),
            y=np.asarray(y),
            mode="markers",
            name="data",
            marker=dict(size=3, opacity=0.35, color="#8ab4f8"),
        )
    )
    for k, (name, (xc, yc)) in enumerate(curves.items()):
        order = np.argsort(xc)
        fig.add_trace(
            go.Scatter(
                x=np.asarray(xc)[order],
                y=np.asarray(yc)[order],
                mode="lines",
                name=name,
                line=dict(color=colours(k)[0], width=3),
            )
        )
    return _titled(fig, template, title, "x", "y")


def _titled(fig: go.Figure, template: str, title: str, x: str, y: str) -> go.Figure:
    """A 2-D figure's template, title and axis titles."""
    fig.update_layout(
        template=template,
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        margin=dict(l=50, r=10, t=50, b=40),
    )
    return fig


def _one_dimension(name: str, ds: object, var: str) -> str:
    """The dimension of a 1-D slice, or a :class:`CrumpleError` saying what to draw instead."""
    if not isinstance(ds, xr.Dataset) or var not in ds:
        have = sorted(map(str, ds.data_vars)) if isinstance(ds, xr.Dataset) else type(ds).__name__
        raise CrumpleError(
            f"line: slice {name!r} has no variable var={var!r} (it holds {have}); give the "
            "dataset from crumple.line, or var= one of its variables"
        )
    if ds[var].ndim != 1:
        dims = ds[var].dims
        raise CrumpleError(
            f"line: slice {name!r} has {var} over {dims!r}, not one dimension; draw a surface "
            "with crumple.plot.surface(ds), or cut a line from it first, e.g. "
            "crumple.plot.line(ds.sel(beta=0, method='nearest'))"
        )
    return str(ds[var].dims[0])


def _colour_range(scale: Scale, prefix: str) -> dict:
    """The colour range fixed to the scale's floor and cap (``cmin``/``zmin``...)."""
    drawn = scale.range()
    return {} if drawn is None else {f"{prefix}min": drawn[0], f"{prefix}max": drawn[1]}


def _subtitled(title: str, *notes: str | None) -> str:
    """The title, with the notes that apply as a subtitle."""
    said = "; ".join(n for n in notes if n)
    return f"{title}<br><sup>{said}</sup>" if said else title


def _say_if_empty(fig: go.Figure, scale: Scale, ds: xr.Dataset | None = None) -> None:
    """Across a figure with nothing to draw, say why (over the grid's extent, ``ds``, for
    the 2-D view)."""
    if scale.empty:
        if ds is not None:
            fig.update_xaxes(range=[float(ds.alpha.min()), float(ds.alpha.max())])
            fig.update_yaxes(range=[float(ds.beta.min()), float(ds.beta.max())])
        fig.add_annotation(
            text=scale.note(),
            name="nothing to draw",
            x=0.5,
            y=0.5,
            xref="paper",
            yref="paper",
            showarrow=False,
            font=dict(size=16, color="#e6c069"),
        )
