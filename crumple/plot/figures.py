"""plotly figures of landscapes and paths: 3-D surface, contour, loss curves, 1-D lines,
animation. Labels come from the datasets' attributes (``long_name``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from crumple.analysis import critical_points

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


def _label(da: xr.DataArray) -> str:
    return str(da.attrs.get("long_name", da.name))


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


class Scale:
    """How loss values are drawn: optionally log10, and capped so that divergent regions
    (inf, nan, huge values) are clipped and marked instead of flattening the rest.

    The default cap is ``q95 + 3 (q95 - q5)`` of the finite values.
    """

    def __init__(self, z: np.ndarray, log: bool = False, zmax: float | None = None) -> None:
        self.log = log
        finite = np.asarray(z, dtype=np.float64)[np.isfinite(z)]
        if log:
            finite = finite[finite > 0]
        if finite.size == 0:
            self.cap, self.floor = 1.0, 0.0
            return
        low, high = np.percentile(finite, [5, 95])
        self.cap = float(zmax) if zmax is not None else float(high + 3 * (high - low))
        self.cap = max(self.cap, float(finite.min()))
        self.floor = float(finite.min())

    def clipped(self, z) -> np.ndarray:
        """Which values are drawn at the cap."""
        z = np.asarray(z, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return ~np.isfinite(z) | (z > self.cap) | ((z <= 0) if self.log else False)

    def __call__(self, z) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        out = np.where(self.clipped(z), self.cap, z)
        if self.log:
            out = np.log10(np.clip(out, self.floor, None))
        return out

    def title(self, label: str) -> str:
        return f"log10 {label}" if self.log else label


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
            colorbar=dict(title=scale.title(_label(ds.loss)), len=0.6),
            hovertemplate="(%{x:.3f}, %{y:.3f})<br>%{z:.5g}<extra></extra>",
        )
    )
    clipped = scale.clipped(z)
    rows, cols = np.nonzero(clipped)
    fig.add_trace(
        go.Scatter3d(
            x=x[cols],
            y=y[rows],
            z=np.full(len(rows), scale(scale.cap)),
            mode="markers",
            marker=dict(size=2, color="#ff4040", symbol="x"),
            name=f"clipped at {scale.cap:.4g} ({len(rows)})",
            visible=bool(len(rows)),
            showlegend=bool(len(rows)),
        )
    )
    if critical:
        _add_critical(fig, view, scale, three_d=True)
    for k, (name, path) in enumerate((paths or {}).items()):
        _add_path(fig, name, path, k, scale, three_d=True)
    fig.add_trace(
        go.Scatter3d(
            x=[],
            y=[],
            z=[],
            mode="markers",
            name="cursor",
            showlegend=False,
            marker=dict(size=6, color="white", symbol="diamond-open"),
            hoverinfo="skip",
        )
    )
    if animate and paths:
        _add_animation(fig, paths, scale)
    fig.update_layout(
        template=template,
        title=title if note is None else f"{title}<br><sup>{note}</sup>",
        scene=dict(
            xaxis_title=_label(ds.alpha),
            yaxis_title=_label(ds.beta),
            zaxis_title=scale.title(_label(ds.loss)),
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
    fig = go.Figure(
        go.Contour(
            x=view.alpha.values,
            y=view.beta.values,
            z=scale(view.loss.transpose("beta", "alpha").values),
            colorscale="Viridis",
            ncontours=30,
            name="loss",
            colorbar=dict(title=scale.title(_label(ds.loss))),
            hovertemplate="(%{x:.3f}, %{y:.3f})<br>%{z:.5g}<extra></extra>",
        )
    )
    if critical:
        _add_critical(fig, view, scale, three_d=False)
    for k, (name, path) in enumerate((paths or {}).items()):
        _add_path(fig, name, path, k, scale, three_d=False)
    fig.update_layout(
        template=template,
        title=title if note is None else f"{title}<br><sup>{note}</sup>",
        xaxis_title=_label(ds.alpha),
        yaxis_title=_label(ds.beta),
        yaxis=dict(scaleanchor="x", scaleratio=1) if _comparable(ds) else {},
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
        color = PATH_STYLES[k % len(PATH_STYLES)][0]
        fig.add_trace(
            go.Scatter(
                x=path.step.values,
                y=path.loss.values,
                name=name,
                mode="lines+markers",
                line=dict(color=color, width=2),
            )
        )
        if _off_plane(path):
            fig.add_trace(
                go.Scatter(
                    x=path.step.values,
                    y=path.loss_on_plane.values,
                    name=f"{name} (on plane)",
                    mode="lines",
                    line=dict(color=color, width=1, dash="dash"),
                )
            )
    fig.update_layout(
        template=template,
        title=title,
        xaxis_title="step",
        yaxis_title="loss",
        margin=dict(l=50, r=10, t=50, b=40),
    )
    return fig


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
                line=dict(color=PATH_STYLES[k % len(PATH_STYLES)][0], width=2),
            )
        )
    first = next(iter(slices.values()))
    fig.update_layout(
        template=template,
        title=title,
        xaxis_title=_label(first.alpha),
        yaxis_title=_label(first[var]),
    )
    return fig


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


def _comparable(ds: xr.Dataset) -> bool:
    return str(ds.attrs.get("plane_kind")) in ("random", "axes")


def _off_plane(path: xr.Dataset) -> bool:
    if "off_plane" not in path or "loss_on_plane" not in path:
        return False
    return bool(np.nanmax(path.off_plane.values, initial=0.0) > OFF_PLANE_TOL)


def _add_path(fig, name, path, k, scale: Scale, three_d: bool) -> None:
    line_color, marker_color = PATH_STYLES[k % len(PATH_STYLES)]
    n = path.sizes["step"]
    symbols = ["circle"] * n
    sizes = [4] * n
    symbols[0], sizes[0] = "diamond", 7
    if n > 1:
        symbols[-1], sizes[-1] = "square", 7
    off = path.off_plane.values if "off_plane" in path else np.zeros(n)
    text = [
        f"step {s}" + (f"<br>off the plane by {d:.3g}" if d > 0 else "")
        for s, d in zip(path.step.values, off)
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
    if three_d:
        fig.add_trace(
            go.Scatter3d(
                z=scale(path.loss.values),
                marker=dict(size=sizes, color=marker_color, symbol=symbols),
                hovertemplate="%{text}<br>(%{x:.3f}, %{y:.3f})<br>loss %{z:.5g}<extra>"
                + name
                + "</extra>",
                **common,
            )
        )
    else:
        fig.add_trace(
            go.Scatter(
                marker=dict(
                    size=[s + 2 for s in sizes],
                    color=marker_color,
                    symbol=symbols,
                ),
                hovertemplate="%{text}<br>(%{x:.3f}, %{y:.3f})<extra>" + name + "</extra>",
                **common,
            )
        )
    if three_d and _off_plane(path):
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


def _add_critical(fig, view: xr.Dataset, scale: Scale, three_d: bool) -> None:
    found = critical_points(view)
    a, b, z = view.alpha.values, view.beta.values, view.loss.values
    for kind, points in (
        ("minima", found.minima),
        ("maxima", found.maxima),
        ("saddles", found.saddles),
    ):
        i = np.array([p[0] for p in points], dtype=int)
        j = np.array([p[1] for p in points], dtype=int)
        name = {"minima": "local minima", "maxima": "local maxima", "saddles": "saddle points"}[
            kind
        ]
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
        if three_d:
            fig.add_trace(go.Scatter3d(z=scale(z[i, j]), **kwargs))
        else:
            fig.add_trace(go.Scatter(**kwargs))
    if found.global_min is not None:
        i, j = found.global_min
        text = f"grid minimum {z[i, j]:.5g}"
        if three_d:
            fig.update_layout(
                scene_annotations=[
                    dict(
                        x=a[i],
                        y=b[j],
                        z=float(scale(z[i, j])),
                        text=text,
                        showarrow=True,
                        arrowcolor="white",
                        font=dict(color="white"),
                        bgcolor="rgba(0,0,0,0.5)",
                    )
                ]
            )
        else:
            fig.add_annotation(
                x=a[i],
                y=b[j],
                text=text,
                showarrow=True,
                arrowcolor="white",
                font=dict(color="white"),
                bgcolor="rgba(0,0,0,0.5)",
            )


def _add_animation(fig: go.Figure, paths: Paths, scale: Scale) -> None:
    names = list(paths)
    indices = [i for i, t in enumerate(fig.data) if t.name in names]
    longest = max(p.sizes["step"] for p in paths.values())
    frames = []
    for n in range(1, longest + 1):
        data = []
        for name in names:
            p = paths[name].isel(step=slice(0, n))
            data.append(go.Scatter3d(x=p.alpha.values, y=p.beta.values, z=scale(p.loss.values)))
        frames.append(go.Frame(data=data, traces=indices, name=str(n - 1)))
    fig.frames = frames
    play = dict(
        frame=dict(duration=150, redraw=True), fromcurrent=True, transition=dict(duration=0)
    )
    fig.update_layout(
        updatemenus=[
            dict(
                type="buttons",
                showactive=False,
                x=0.02,
                y=0.02,
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
                active=longest - 1,
                x=0.15,
                len=0.8,
                y=0.02,
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
                line=dict(color=PATH_STYLES[k % len(PATH_STYLES)][0], width=3),
            )
        )
    fig.update_layout(
        template=template,
        title=title,
        xaxis_title="x",
        yaxis_title="y",
        margin=dict(l=40, r=10, t=50, b=40),
    )
    return fig
