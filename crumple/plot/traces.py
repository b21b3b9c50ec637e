"""The traces that the 3-D and contour views share: paths, critical points, clipped points,
the hover cursor, and the animation of the paths. Each adds to a figure in place."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from crumple.analysis import critical_points, on_edge
from crumple.plot.scale import Scale
from crumple.plot.style import CRITICAL_STYLES, Paths, colours, label, model_points, off_plane

CRITICAL_NAMES = {"minima": "local minima", "maxima": "local maxima", "saddles": "saddle points"}
NAME = "%{fullData.name}"  # a trace's name in its hover text, read by plotly, not spliced in
SLIDER_LIFT = 40  # pixels: the slider stands over the play and pause buttons, clear of them


def add_path(fig: go.Figure, name: str, path: xr.Dataset, k: int, scale: Scale, three_d: bool):
    """The ``k``-th path, start and end marked (diamond, square; named in the hover text),
    at its true loss in 3-D; a path that leaves the plane is also drawn faintly at its
    projection.

    Example:
        >>> p = xr.Dataset({"alpha": ("step", [0.0, 1.0]), "beta": ("step", [0.0, 1.0]),
        ...                 "loss": ("step", [2.0, 1.0])}, coords={"step": [0, 1]})
        >>> fig = go.Figure()
        >>> add_path(fig, "SGD", p, 0, Scale(np.ones(2)), three_d=False)
        >>> list(fig.data[0].marker.symbol)
        ['diamond', 'square']
    """
    line_color, marker_color = colours(k)
    n = path.sizes["step"]
    symbols, sizes = ["circle"] * n, [4] * n
    symbols[0], sizes[0] = "diamond", 7
    if n > 1:
        symbols[-1], sizes[-1] = "square", 7
    off = path.off_plane.values if "off_plane" in path else np.zeros(n)
    ends = {0: "start, ", n - 1: "end, "}
    text = [
        ends.get(k, "") + f"step {s}" + (f"<br>off the plane by {d:.3g}" if d > 0 else "")
        for k, (s, d) in enumerate(zip(path.step.values, off))
    ]
    common = dict(
        x=path.alpha.values,
        y=path.beta.values,
        mode="lines+markers",
        name=name,
        text=text,
        line=dict(color=line_color, width=2),
        legendgroup=name,
    )
    where = "%{text}<br>(%{x:.3f}, %{y:.3f})"
    if not three_d:
        marker = dict(size=[s + 2 for s in sizes], color=marker_color, symbol=symbols)
        fig.add_trace(
            go.Scatter(marker=marker, hovertemplate=f"{where}<extra>{NAME}</extra>", **common)
        )
        return
    marker = dict(size=sizes, color=marker_color, symbol=symbols)
    hover = f"{where}<br>loss %{{z:.5g}}<extra>{NAME}</extra>"
    fig.add_trace(
        go.Scatter3d(z=scale(path.loss.values), marker=marker, hovertemplate=hover, **common)
    )
    if off_plane(path):
        fig.add_trace(
            go.Scatter3d(
                x=path.alpha.values,
                y=path.beta.values,
                z=scale(path.loss_on_plane.values),
                mode="lines",
                name=f"{name} (projection)",
                legendgroup=name,
                opacity=0.35,
                line=dict(color=line_color, width=2, dash="dash"),
            )
        )


def add_critical(fig: go.Figure, view: xr.Dataset, scale: Scale, three_d: bool) -> None:
    """Local minima, maxima and saddles (counted in the legend), and a label on the grid's
    minimum (which says so when it lies on the grid's edge).

    Example:
        >>> a = np.linspace(-1, 1, 5)
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), a[:, None] ** 2 + a[None, :] ** 2)},
        ...                 coords={"alpha": a, "beta": a})
        >>> fig = go.Figure()
        >>> add_critical(fig, ds, Scale(ds.loss.values), three_d=False)
        >>> [t.name for t in fig.data]
        ['local minima (1)', 'local maxima (0)', 'saddle points (0)']
    """
    found = critical_points(view)
    a, b, z = view.alpha.values, view.beta.values, view.loss.values
    for kind, name in CRITICAL_NAMES.items():
        points = getattr(found, kind)
        i = np.array([p[0] for p in points], dtype=int)
        j = np.array([p[1] for p in points], dtype=int)
        marker = dict(
            size=4 if three_d else 7,
            color=CRITICAL_STYLES[kind],
            symbol="cross" if kind == "saddles" else "circle-open",
        )
        kwargs = dict(
            x=a[i],
            y=b[j],
            mode="markers",
            name=f"{name} ({len(points)})",
            marker=marker,
            visible=True if points else "legendonly",
        )
        fig.add_trace(go.Scatter3d(z=scale(z[i, j]), **kwargs) if three_d else go.Scatter(**kwargs))
    if found.global_min is None:
        return
    i, j = found.global_min
    edge = "<br>on the grid's edge: widen the grid" if on_edge(found.global_min, z.shape) else ""
    note = dict(
        x=a[i],
        y=b[j],
        text=f"grid minimum {z[i, j]:.5g}{edge}",
        showarrow=True,
        arrowcolor="white",
        font=dict(color="white"),
        bgcolor="rgba(0,0,0,0.5)",
    )
    if three_d:
        fig.update_layout(scene_annotations=[note | {"z": float(scale(z[i, j]))}])
    else:
        fig.add_annotation(**note)


def add_models(fig: go.Figure, ds: xr.Dataset, scale: Scale, three_d: bool) -> None:
    """The models the plane was made from (:func:`~crumple.plot.style.model_points`: the
    model at the origin, or a, b, c of a plane between models), each marked where it sits
    with its value (at the nearest grid point when it falls between them); those outside
    the grid are named in the legend instead. Left out when nothing is drawn.

    Example:
        >>> a = np.linspace(-1, 1, 3)
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.arange(9.0).reshape(3, 3))},
        ...                 coords={"alpha": a, "beta": a}, attrs={"plane_kind": "between"})
        >>> fig = go.Figure()
        >>> add_models(fig, ds, Scale(ds.loss.values), three_d=False)
        >>> fig.data[0].name, list(fig.data[0].text), list(fig.data[0].hovertext)[1]
        ('models a, b, c', ['a', 'b', 'c'], 'b at (1, 0)<br>loss 7')
    """
    points = model_points(ds)
    if not points or scale.empty:
        return  # no model on the plane, or nothing drawn: the figure says why
    grid = ds.loss.transpose("alpha", "beta")
    marked, value, hover, away = [], [], [], []
    for name, (a, b) in points.items():
        found = _at_grid_point(grid, a, b)
        if found is None:
            away.append(name)
            continue
        v, exact = found
        where = "" if exact else " at the nearest grid point"
        marked.append((a, b))
        value.append(v)
        hover.append(f"{name} at ({a:.4g}, {b:.4g})<br>{label(ds.loss)}{where} {v:.5g}")
    title = "model" if list(points) == ["model"] else "models " + ", ".join(points)
    if len(away) == len(points):
        title += " outside the grid"
    elif away:
        title += f" ({', '.join(away)} outside the grid)"
    kwargs = dict(
        x=[a for a, _ in marked],
        y=[b for _, b in marked],
        mode="markers+text",
        name=title,
        meta="models",  # the page and the animation tell it from a path by this
        text=[n for n in points if n not in away],
        textposition="top center",
        textfont=dict(color="white"),
        hovertext=hover,
        hoverinfo="text",
    )
    if three_d:
        marker = dict(size=5, color="white", symbol="circle")
        fig.add_trace(go.Scatter3d(z=scale(np.array(value)), marker=marker, **kwargs))
    else:
        marker = dict(size=13, color="white", symbol="star", line=dict(width=1, color="black"))
        fig.add_trace(go.Scatter(marker=marker, **kwargs))


def _at_grid_point(grid: xr.DataArray, a: float, b: float) -> tuple[float, bool] | None:
    """The value of ``grid`` (over alpha, beta) at its point nearest (a, b) and whether
    that is (a, b) itself; None when (a, b) lies outside the grid."""
    axes = [np.asarray(grid[d].values, dtype=np.float64) for d in ("alpha", "beta")]
    nearest, exact = [], True
    for axis, t in zip(axes, (a, b)):
        if axis.size == 0 or not axis.min() <= t <= axis.max():
            return None
        k = int(np.argmin(np.abs(axis - t)))
        nearest.append(k)
        exact &= bool(abs(axis[k] - t) <= 1e-9 * max(1.0, float(np.ptp(axis))))
    return float(grid.values[nearest[0], nearest[1]]), exact


def add_clipped(fig: go.Figure, x: np.ndarray, y: np.ndarray, z: np.ndarray, scale: Scale):
    """Markers where the points drawn clipped sit (at the cap or the floor; ``z`` rows run
    along ``y``), counted in the legend, their true values in the hover text; hidden when
    there are none, left out when nothing is drawn. nan is not marked: it is a gap.

    Example:
        >>> fig = go.Figure()
        >>> z = np.array([[1.0, np.inf, np.nan]])
        >>> add_clipped(fig, np.array([0.0, 1.0, 2.0]), np.array([0.0]), z, Scale(z, zmax=2.0))
        >>> fig.data[0].name, list(fig.data[0].text)
        ('clipped at 2 (1)', ['inf'])
    """
    if scale.empty:
        return  # nothing drawn, nothing clipped: the figure says why
    mask = scale.clipped(z)
    rows, cols = np.nonzero(mask)
    n = len(rows)
    name = f"clipped at {scale.cap:.4g} ({n})"
    if scale.below:
        name = f"clipped to {scale.floor:.4g}..{scale.cap:.4g} ({n})"
    fig.add_trace(
        go.Scatter3d(
            x=x[cols],
            y=y[rows],
            z=scale(z[mask]),
            text=[f"{v:.5g}" for v in z[mask]],
            mode="markers",
            marker=dict(size=2, color="#ff4040", symbol="x"),
            name=name,
            hovertemplate="(%{x:.3f}, %{y:.3f})<br>%{text}, drawn at %{z:.5g}<extra></extra>",
            visible=bool(n),
            showlegend=bool(n),
        )
    )


def add_cursor(fig: go.Figure) -> None:
    """An empty marker that the page moves to where the contour view is hovered.

    Example:
        >>> fig = go.Figure()
        >>> add_cursor(fig)
        >>> fig.data[0].name
        'cursor'
    """
    fig.add_trace(
        go.Scatter3d(
            x=[],
            y=[],
            z=[],
            mode="markers",
            name="cursor",
            meta="cursor",  # the page finds it by this, which no path's trace has
            showlegend=False,
            marker=dict(size=6, color="white", symbol="diamond-open"),
            hoverinfo="skip",
        )
    )


def add_animation(fig: go.Figure, paths: Paths, scale: Scale) -> None:
    """Frames in which the paths (the traces named as in ``paths``) grow step by step, with
    a play button and a slider.

    Example:
        >>> p = xr.Dataset({"alpha": ("step", [0.0, 1.0]), "beta": ("step", [0.0, 1.0]),
        ...                 "loss": ("step", [2.0, 1.0])}, coords={"step": [0, 5]})
        >>> fig = go.Figure(go.Scatter3d(name="p"))
        >>> add_animation(fig, {"p": p}, Scale(np.ones(2)))
        >>> [f.name for f in fig.frames]
        ['0', '5']
    """
    names = list(paths)
    indices = [i for i, t in enumerate(fig.data) if t.name in names and t.meta is None]
    longest = max(paths.values(), key=lambda p: p.sizes["step"])
    # each frame is named by the step the training loop recorded (every=3: 0, 3, 6, ...)
    steps = longest["step"].values if "step" in longest.coords else range(longest.sizes["step"])
    frames = []
    for n, step in enumerate(steps, start=1):
        data = []
        for name in names:
            p = paths[name].isel(step=slice(0, n))
            data.append(go.Scatter3d(x=p.alpha.values, y=p.beta.values, z=scale(p.loss.values)))
        frames.append(go.Frame(data=data, traces=indices, name=str(step)))
    fig.frames = frames
    play = dict(
        frame=dict(duration=150, redraw=True), fromcurrent=True, transition=dict(duration=0)
    )
    fig.update_layout(
        updatemenus=[
            dict(
                type="buttons",
                showactive=False,
                x=0,
                y=0,
                xanchor="left",
                yanchor="bottom",
                direction="left",
                buttons=[
                    dict(label="play", method="animate", args=[None, play]),
                    dict(
                        label="pause",
                        method="animate",
                        args=[[None], dict(frame=dict(duration=0, redraw=False), mode="immediate")],
                    ),
                ],
            )
        ],
        sliders=[
            dict(
                active=len(frames) - 1,
                x=0,
                len=1,
                pad=dict(b=SLIDER_LIFT, l=10, r=10),
                y=0,
                yanchor="bottom",
                currentvalue=dict(prefix="step "),
                steps=[
                    dict(
                        method="animate",
                        label=f.name,
                        args=[
                            [f.name],
                            dict(
                                mode="immediate",
                                frame=dict(duration=0, redraw=True),
                                transition=dict(duration=0),
                            ),
                        ],
                    )
                    for f in frames
                ],
            )
        ],
    )
