"""plotly figures of landscapes and paths: 3-D surface, contour, loss curves, 1-D lines,
animation. Labels come from the datasets' attributes (``long_name``); the traces the views
share are in :mod:`crumple.plot.traces`, colours and scales in :mod:`crumple.plot.style`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from crumple import planes
from crumple.plot.style import Paths, Scale, colours, display_grid, label, off_plane
from crumple.plot.traces import add_animation, add_clipped, add_critical, add_cursor, add_path

__all__ = ["surface", "contour", "losses", "line", "animate", "fit", "display_grid"]


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
    """The loss surface in 3-D, with each path drawn at its true loss.

    Args:
        ds: a dataset from :func:`crumple.surface` (``loss`` over ``alpha`` and ``beta``).
        paths: name -> dataset from :func:`crumple.project`. A path that leaves the plane is
            also drawn faintly at its projection (``loss_on_plane``).
        log: draw log10 of the loss.
        zmax: clip the drawn loss at this value (default: from the finite values' spread);
            clipped points, inf and nan are marked.
        critical: mark local minima, maxima and saddles (counts in the legend) and label
            the grid's global minimum.
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
    view, note = display_grid(ds)
    scale = Scale(view.loss.values, log, zmax)
    # plotly puts z[row] at y[row]: rows must run along beta
    z = view.loss.transpose("beta", "alpha").values
    x, y = view.alpha.values, view.beta.values
    fig.add_trace(
        go.Surface(
            x=x,
            y=y,
            z=scale(z),
            colorscale="Viridis",
            name="loss",
            colorbar=dict(title=scale.title(label(ds.loss)), len=0.6),
            hovertemplate="(%{x:.3f}, %{y:.3f})<br>%{z:.5g}<extra></extra>",
        )
    )
    add_clipped(fig, x, y, z, scale)
    if critical:
        add_critical(fig, view, scale, three_d=True)
    for k, (name, path) in enumerate((paths or {}).items()):
        add_path(fig, name, path, k, scale, three_d=True)
    add_cursor(fig)
    if animate and paths:
        add_animation(fig, paths, scale)
    fig.update_layout(
        template=template,
        title=title if note is None else f"{title}<br><sup>{note}</sup>",
        scene=dict(
            xaxis_title=label(ds.alpha),
            yaxis_title=label(ds.beta),
            zaxis_title=scale.title(label(ds.loss)),
            aspectratio=dict(x=1, y=1, z=0.5),
        ),
        showlegend=True,
        legend=dict(x=0.01, y=0.99),
        margin=dict(l=0, r=0, t=60, b=0),
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
    """The same landscape as filled contours, with the paths and critical points.

    Example:
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.arange(6.0).reshape(3, 2))},
        ...                 coords={"alpha": [0, 1, 2], "beta": [0, 1]})
        >>> contour(ds).data[0].type
        'contour'
    """
    view, note = display_grid(ds)
    scale = Scale(view.loss.values, log, zmax)
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
        )
    )
    if critical:
        add_critical(fig, view, scale, three_d=False)
    for k, (name, path) in enumerate((paths or {}).items()):
        add_path(fig, name, path, k, scale, three_d=False)
    fig.update_layout(
        template=template,
        title=title if note is None else f"{title}<br><sup>{note}</sup>",
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
    for k, (name, path) in enumerate(paths.items()):
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
    """1-D slices (from :func:`crumple.line`), one curve each.

    Example:
        >>> d = xr.Dataset({"loss": ("alpha", [1.0, 0.0, 1.0])}, coords={"alpha": [-1, 0, 1]})
        >>> len(line({"a": d, "b": d}).data)
        2
    """
    slices = {var: slices} if isinstance(slices, xr.Dataset) else dict(slices)
    fig = go.Figure()
    for k, (name, ds) in enumerate(slices.items()):
        fig.add_trace(
            go.Scatter(
                x=ds.alpha.values,
                y=ds[var].values,
                name=name,
                mode="lines",
                line=dict(color=colours(k)[0], width=2),
            )
        )
    first = next(iter(slices.values()))
    return _titled(fig, template, title, label(first.alpha), label(first[var]))


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
