"""plotly figures: the loss surface with paths over it, and a 1-D data fit."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
import xarray as xr

# the first path is drawn as in the article: a red line with yellow markers
PATH_STYLES = [
    ("red", "yellow"),
    ("#00e5ff", "white"),
    ("#7CFC00", "white"),
    ("#ff66ff", "white"),
    ("orange", "white"),
]


def _label(da: xr.DataArray) -> str:
    return str(da.attrs.get("long_name", da.name))


def surface(
    ds: xr.Dataset,
    paths: Mapping[str, xr.Dataset] | None = None,
    *,
    title: str = "Loss Surface",
    template: str = "plotly_dark",
    fig: go.Figure | None = None,
) -> go.Figure:
    """The loss surface in 3-D, with each path drawn at its loss.

    Args:
        ds: a dataset from :func:`crumple.surface` (``loss`` over ``alpha`` and ``beta``).
        paths: name -> dataset from :func:`crumple.project` (``alpha``, ``beta``, ``loss``).
        title: the figure title.
        template: a plotly template name.
        fig: an existing figure to draw into.

    Example:
        >>> import numpy as np, xarray as xr
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.zeros((3, 2)))},
        ...                 coords={"alpha": [0, 1, 2], "beta": [0, 1]})
        >>> [t.type for t in surface(ds).data]
        ['surface']
    """
    fig = fig if fig is not None else go.Figure()
    loss = ds["loss"]
    # plotly puts z[row] at y[row]: rows must run along beta
    fig.add_trace(
        go.Surface(
            x=ds["alpha"].values,
            y=ds["beta"].values,
            z=loss.transpose("beta", "alpha").values,
            colorscale="Viridis",
            colorbar=dict(title=_label(loss), len=0.6),
            name="loss",
        )
    )
    for k, (name, path) in enumerate((paths or {}).items()):
        line_color, marker_color = PATH_STYLES[k % len(PATH_STYLES)]
        fig.add_trace(
            go.Scatter3d(
                x=path["alpha"].values,
                y=path["beta"].values,
                z=path["loss"].values,
                mode="lines+markers",
                line=dict(color=line_color, width=2),
                marker=dict(size=4, color=marker_color),
                name=name,
                customdata=np.asarray(path["step"].values),
                hovertemplate="step %{customdata}<br>(%{x:.3f}, %{y:.3f})<br>loss %{z:.4g}",
            )
        )
    fig.update_layout(
        template=template,
        title=title,
        scene=dict(
            xaxis_title=_label(ds["alpha"]),
            yaxis_title=_label(ds["beta"]),
            zaxis_title=_label(loss),
            aspectratio=dict(x=1, y=1, z=0.5),
        ),
        showlegend=True,
        legend=dict(x=0.01, y=0.99),
        margin=dict(l=0, r=0, t=50, b=0),
    )
    return fig


def fit(
    x: np.ndarray,
    y: np.ndarray,
    x_curve: np.ndarray,
    y_curve: np.ndarray,
    *,
    title: str = "Data and fitted curve",
    template: str = "plotly_dark",
) -> go.Figure:
    """Data points and a model's curve through them, for 1-D regression.

    Example:
        >>> import numpy as np
        >>> len(fit(np.arange(3), np.arange(3), np.arange(3), np.arange(3)).data)
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
    order = np.argsort(x_curve)
    fig.add_trace(
        go.Scatter(
            x=np.asarray(x_curve)[order],
            y=np.asarray(y_curve)[order],
            mode="lines",
            name="model",
            line=dict(color="red", width=3),
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
