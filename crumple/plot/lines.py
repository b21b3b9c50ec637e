"""The page of a line (``crumple line``, :func:`crumple.line`): the loss along the line and
each metric in its own panel (accuracy in %), the models on it marked (``a`` at t=0 and ``b``
at t=1 on a line between two models, the model at 0 on any other), a recorded path placed
at its true loss, and the facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from crumple.plot.figures import line, losses
from crumple.plot.metrics import in_loss_place, metric_names
from crumple.plot.page import write_page
from crumple.plot.style import Paths, check_paths, colours, label

MARK_COLOUR = "#ffd700"


def marks(ds: xr.Dataset) -> dict[str, float]:
    """Where the models sit on the line, by name: on a line between two models (its axis
    named ``"a -> b"``), ``a`` at 0 and ``b`` at 1; on any other, the model at 0.

    Example:
        >>> ds = xr.Dataset({"loss": ("alpha", [1.0, 2.0])},
        ...                 coords={"alpha": ("alpha", [0.0, 1.0], {"long_name": "a -> b"})},
        ...                 attrs={"plane_kind": "between"})
        >>> marks(ds)
        {'a': 0.0, 'b': 1.0}
    """
    dim = ds.loss.dims[0]
    start, arrow, end = label(ds[dim]).partition(" -> ")
    if ds.attrs.get("plane_kind") == "between" and arrow:
        return {start: 0.0, end: 1.0}
    return {"model": 0.0}


def line_figure(
    ds: xr.Dataset,
    paths: Paths | None = None,
    *,
    var: str = "loss",
    log: bool = False,
    zmax: float | None = None,
    template: str = "plotly_dark",
) -> go.Figure:
    """``var`` along the line (:func:`crumple.plot.line`; accuracy in %), each model marked
    (:func:`marks`: a dotted vertical line, and a marker at its value where the line holds
    that point), and the ``paths`` placed at their values of ``var``; ``log``: a log axis,
    ``zmax``: the top of the axis.

    Example:
        >>> ds = xr.Dataset({"loss": ("alpha", [1.0, 0.5, 2.0])}, coords={"alpha": [0.0, 0.5, 1.0]})
        >>> [t.name for t in line_figure(ds).data]
        ['loss', 'model']
    """
    shown, moved = in_loss_place(ds, check_paths(paths, needs=("loss",)), var)
    dim = shown.loss.dims[0]
    name = label(shown.loss)
    fig = line({name: shown}, title=f"{name} along the line", template=template)
    for k, (name, path) in enumerate(moved.items()):
        _add_path(fig, name, path, dim, k)
    coords = shown[dim].values
    for name, t in marks(ds).items():
        fig.add_vline(x=t, line=dict(color=MARK_COLOUR, width=1, dash="dot"))
        at = np.flatnonzero(np.isclose(coords, t, rtol=0, atol=1e-12))
        y = [float(shown.loss.values[at[0]])] if at.size else []
        fig.add_trace(
            go.Scatter(
                x=[t] * len(y),
                y=y,
                name=name,
                mode="markers+text",
                text=[name] * len(y),
                textposition="top center",
                marker=dict(size=11, color=MARK_COLOUR, symbol="diamond"),
                hovertemplate=f"{name}<br>t = %{{x:.4g}}<br>%{{y:.6g}}<extra></extra>",
            )
        )
    if log:
        fig.update_yaxes(type="log")
    if zmax is not None:
        low = float(np.nanmin(shown.loss.values))
        fig.update_yaxes(range=[np.log10(low), np.log10(zmax)] if log else [low, zmax])
    return fig


def _add_path(fig: go.Figure, name: str, path: xr.Dataset, dim: str, k: int) -> None:
    """A recorded path at its position along the line and its true value, each point's
    distance from the line in its hover text."""
    if dim not in path:
        return
    off = path.off_plane.values if "off_plane" in path else np.zeros(path.sizes["step"])
    line_colour, marker_colour = colours(k)
    fig.add_trace(
        go.Scatter(
            x=path[dim].values,
            y=path.loss.values,
            name=name,
            mode="lines+markers",
            text=[f"step {s}, off the line by {d:.3g}" for s, d in zip(path.step.values, off)],
            line=dict(color=line_colour, width=1),
            marker=dict(size=5, color=marker_colour),
            hovertemplate="%{text}<br>t = %{x:.4g}<br>%{y:.6g}<extra></extra>",
        )
    )


def line_report(
    path: str | Path,
    ds: xr.Dataset,
    paths: Paths | None = None,
    *,
    title: str = "crumple",
    facts: Mapping[str, object] | None = None,
    log: bool = False,
    zmax: float | None = None,
    notes: Sequence[str] = (),
    more_figures: Sequence[go.Figure] = (),
) -> Path:
    """Write the page of a line: the loss along it (:func:`line_figure`), each metric in
    its own panel, the loss along the paths, any ``more_figures``, and the ``facts``.

    Example:
        >>> import tempfile
        >>> ds = xr.Dataset({"loss": ("alpha", [1.0, 0.5, 2.0])}, coords={"alpha": [0.0, 0.5, 1.0]})
        >>> line_report(f"{tempfile.mkdtemp()}/line.html", ds).name
        'line.html'
    """
    paths = check_paths(paths, needs=("loss",))
    figures = [line_figure(ds, paths, log=log, zmax=zmax)]
    figures += [line_figure(ds, paths, var=var) for var in metric_names(ds)]
    if paths:
        figures.append(losses(paths))
    figures.extend(more_figures)
    return write_page(path, figures, title=title, facts=facts, notes=notes)
