"""The curvature map of a surface (``cr.surface(..., curvature=True)``): the largest Hessian
eigenvalue and the non-convexity ratio ``|lambda_min / lambda_max|`` at each grid point,
beside each other, as Li et al. (2018) draw them; and its facts for the page."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from crumple.plot.style import label


def curvature_map(
    ds: xr.Dataset, *, title: str = "Curvature", template: str = "plotly_dark"
) -> go.Figure:
    """Two heat maps over the grid: ``lambda_max`` (how sharp), and ``lambda_ratio`` on 0
    to 1 (0: no negative curvature against the positive; where ``lambda_min < 0`` the loss
    is not locally convex). Hovering shows both eigenvalues.

    Example:
        >>> a = np.linspace(-1, 1, 3)
        >>> ds = xr.Dataset({k: (("alpha", "beta"), np.ones((3, 3))) for k in
        ...                  ("lambda_max", "lambda_min", "lambda_ratio")},
        ...                 coords={"alpha": a, "beta": a})
        >>> [t.name for t in curvature_map(ds).data]
        ['lambda_max', 'lambda_ratio']
    """
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("largest eigenvalue", "|lambda_min / lambda_max|"),
        horizontal_spacing=0.12,
    )
    both = np.stack(
        [ds[k].transpose("beta", "alpha").values for k in ("lambda_max", "lambda_min")], -1
    )
    hover = "(%{x:.3f}, %{y:.3f})<br>lambda_max %{customdata[0]:.4g}"
    hover += "<br>lambda_min %{customdata[1]:.4g}<extra></extra>"
    for col, (name, scale, limits) in enumerate(
        (("lambda_max", "Viridis", {}), ("lambda_ratio", "Plasma", {"zmin": 0, "zmax": 1})), 1
    ):
        fig.add_trace(
            go.Heatmap(
                x=ds.alpha.values,
                y=ds.beta.values,
                z=ds[name].transpose("beta", "alpha").values,
                customdata=both,
                colorscale=scale,
                name=name,
                hovertemplate=hover,
                colorbar=dict(
                    title=dict(text=name, side="top"),
                    orientation="h",
                    x=0.21 if col == 1 else 0.79,
                    y=-0.32,
                    len=0.4,
                    thickness=12,
                ),
                **limits,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=label(ds.alpha), row=1, col=col)
        fig.update_yaxes(title_text=label(ds.beta), row=1, col=col)
    fig.update_layout(template=template, title=title, margin=dict(l=50, r=10, t=70, b=110))
    return fig


def curvature_facts(ds: xr.Dataset) -> dict[str, str]:
    """The map's ranges and where the loss is not locally convex.

    Example:
        >>> ds = xr.Dataset({"lambda_max": ("alpha", [2.0, 3.0]),
        ...                  "lambda_min": ("alpha", [-0.5, 0.1])})
        >>> curvature_facts(ds)["not convex"]
        '1 of 2 points (lambda_min < 0)'
    """
    if "lambda_max" not in ds:
        return {}
    top, bottom = ds.lambda_max.values, ds.lambda_min.values
    finite = np.isfinite(top) & np.isfinite(bottom)
    if not finite.any():
        return {"curvature map": "no point's eigenvalues were found"}
    out = {
        "lambda_max": f"{np.min(top[finite]):.4g} to {np.max(top[finite]):.4g}",
        "lambda_min": f"{np.min(bottom[finite]):.4g} to {np.max(bottom[finite]):.4g}",
        "not convex": f"{int((bottom[finite] < 0).sum())} of {top.size} points (lambda_min < 0)",
    }
    if not finite.all():
        out["curvature map"] = f"{int((~finite).sum())} points without eigenvalues (nan)"
    return out
