"""Figures of the Hessian's spectrum and the page of ``crumple hessian``: the eigenvalue
density on a log scale with the extreme eigenvalues marked on it, the eigenvalues by rank,
each block's trace, and the facts (:func:`crumple.plot.report.curvature` reads the top
eigenvalue, trace and sharpness, as for the landscape page).

The results dataset (``hessian.zarr``, see :mod:`crumple.cli_hessian`) holds ``density``
over ``eigenvalue`` (as :func:`crumple.hessian.density` returns it), ``eigenvalues`` and
``residuals`` over ``rank`` (0 the largest, -1 the smallest), and per block
``block_density`` over (``block``, ``bin``) at ``block_eigenvalue``, ``block_eigenvalues``
over (``block``, ``rank``) and ``block_trace`` over ``block``; each figure draws what is
there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from crumple.errors import CrumpleError
from crumple.plot.page import write_page
from crumple.plot.report import curvature
from crumple.plot.style import colours

FLOOR = 1e-10  # the density axis reaches this fraction of the peak
ENDS = {"largest": ("#ff4040", "diamond"), "smallest": ("#00e5ff", "diamond-open")}


def spectrum(
    ds: xr.Dataset,
    *,
    floor: float = FLOOR,
    title: str = "Eigenvalue density of the Hessian",
    template: str = "plotly_dark",
) -> go.Figure:
    """The spectral density on a log axis (down to ``floor`` times its peak, where single
    outlying eigenvalues still show), each block's density beside it, and the extreme
    eigenvalues (``eigenvalues`` over ``rank``) marked on the curve.

    Example:
        >>> grid = np.linspace(-1.0, 5.0, 61)
        >>> esd = xr.Dataset({"density": ("eigenvalue", np.exp(-grid**2))},
        ...                  coords={"eigenvalue": grid})
        >>> fig = spectrum(esd.assign(eigenvalues=("rank", [4.0])))
        >>> [t.name for t in fig.data], fig.layout.yaxis.type
        (['density', 'largest eigenvalues (1)'], 'log')
    """
    if "density" not in ds and "block_density" not in ds:
        raise CrumpleError(
            f"spectrum: the dataset has no density (it holds {sorted(map(str, ds.data_vars))}); "
            "give the dataset of crumple.hessian.density, or of crumple hessian --density"
        )
    fig, curves = go.Figure(), []
    if "density" in ds:
        curves.append(("density", ds.eigenvalue.values, ds.density.values, "white", 2.5))
    for k, block in enumerate(ds.block.values if "block_density" in ds else []):
        one = ds.sel(block=block)
        x, y = one.block_eigenvalue.values, one.block_density.values
        curves.append((f"block {block}", x, y, _block_colour(k), 1.5))
    peak = max(float(np.nanmax(c[2], initial=0.0)) for c in curves)
    low = max(peak, np.finfo(float).tiny) * floor
    for name, x, y, colour, width in curves:  # zeros sit below the axis, not as gaps
        fig.add_trace(
            go.Scatter(
                x=x,
                y=np.maximum(y, low / 10),
                name=name,
                mode="lines",
                line=dict(color=colour, width=width),
                hovertemplate="eigenvalue %{x:.4g}<br>density %{y:.3g}<extra>" + name + "</extra>",
            )
        )
    if "density" in ds and "eigenvalues" in ds:
        y = np.interp(ds.eigenvalues.values, ds.eigenvalue.values, ds.density.values)
        _add_ends(fig, ds, np.maximum(y, low))
    fig.update_layout(
        template=template,
        title=title,
        xaxis_title="eigenvalue",
        yaxis=dict(title="density (log scale)", type="log", exponentformat="power"),
        yaxis_range=[np.log10(low), np.log10(max(peak, low)) + 0.5],
        legend=dict(orientation="h", y=-0.15),
        margin=dict(l=60, r=10, t=60, b=40),
    )
    return fig


def _add_ends(fig: go.Figure, ds: xr.Dataset, y: np.ndarray) -> None:
    """The largest and smallest eigenvalues as markers at heights ``y`` (one per rank)."""
    ranks = ds["rank"].values
    for end, chosen in (("largest", ranks >= 0), ("smallest", ranks < 0)):
        if not chosen.any():
            continue
        colour, symbol = ENDS[end]
        text = [
            f"rank {r}: {v:.6g}<br>residual {e:.2g}"
            for r, v, e in zip(ranks[chosen], ds.eigenvalues.values[chosen], _residuals(ds)[chosen])
        ]
        fig.add_trace(
            go.Scatter(
                x=ds.eigenvalues.values[chosen],
                y=y[chosen],
                text=text,
                mode="markers",
                name=f"{end} eigenvalues ({int(chosen.sum())})",
                marker=dict(color=colour, symbol=symbol, size=10, line=dict(width=1.5)),
                hovertemplate="%{text}<extra></extra>",
            )
        )


def _block_colour(k: int) -> str:
    """The ``k``-th block's colour: the path colours after the two of the whole model's
    ends (red, cyan)."""
    return colours(k + 2)[0]


def _residuals(ds: xr.Dataset) -> np.ndarray:
    return ds.residuals.values if "residuals" in ds else np.full(ds.sizes["rank"], np.nan)


def eigenvalue_ranks(
    ds: xr.Dataset, *, title: str = "Extreme eigenvalues", template: str = "plotly_dark"
) -> go.Figure:
    """The ``k``-th largest and ``k``-th smallest eigenvalues against ``k`` (solid), and
    each block's (dashed), from ``eigenvalues`` (and ``block_eigenvalues``) over ``rank``.

    Example:
        >>> ds = xr.Dataset({"eigenvalues": ("rank", [4.0, 2.0, -1.0])},
        ...                 coords={"rank": [0, 1, -1]})
        >>> [(t.name, list(t.x)) for t in eigenvalue_ranks(ds).data]
        [('largest', [1, 2]), ('smallest', [1])]
    """
    fig = go.Figure()
    ranks = ds["rank"].values
    ks = np.where(ranks >= 0, ranks + 1, -ranks)  # 1 = the largest, or the smallest
    series = (
        [("", ds.eigenvalues.values, _residuals(ds), "solid", None)] if "eigenvalues" in ds else []
    )
    for k, block in enumerate(ds.block.values if "block_eigenvalues" in ds else []):
        values = ds.block_eigenvalues.sel(block=block).values
        series.append((f"block {block}, ", values, np.full(len(values), np.nan), "dash", k))
    for prefix, values, residuals, dash, k in series:
        for end, chosen in (("largest", ranks >= 0), ("smallest", ranks < 0)):
            if not chosen.any():
                continue
            order = np.argsort(ks[chosen])
            colour = ENDS[end][0] if k is None else _block_colour(k)
            fig.add_trace(
                go.Scatter(
                    x=ks[chosen][order].tolist(),
                    y=values[chosen][order],
                    text=[f"residual {e:.2g}" for e in residuals[chosen][order]],
                    name=f"{prefix}{end}",
                    mode="lines+markers",
                    line=dict(color=colour, dash=dash, width=2),
                    marker=dict(symbol=ENDS[end][1], size=8),
                    hovertemplate="k = %{x}: %{y:.6g}<br>%{text}<extra>%{fullData.name}</extra>",
                )
            )
    fig.update_layout(
        template=template,
        title=title,
        xaxis=dict(title="k (the k-th largest, or smallest)", dtick=1),
        yaxis_title="eigenvalue",
        legend=dict(orientation="h", y=-0.15),
        margin=dict(l=60, r=10, t=60, b=40),
    )
    return fig


def block_traces(
    ds: xr.Dataset, *, title: str = "Trace of each block", template: str = "plotly_dark"
) -> go.Figure:
    """Each diagonal block's trace (``block_trace`` over ``block``) with its standard
    error.

    Example:
        >>> ds = xr.Dataset({"block_trace": ("block", [3.0, 1.0]),
        ...                  "block_trace_stderr": ("block", [0.1, 0.2])},
        ...                 coords={"block": ["0", "2"]})
        >>> list(block_traces(ds).data[0].x)
        ['0', '2']
    """
    fig = go.Figure(
        go.Bar(
            x=[str(b) for b in ds.block.values],
            y=ds.block_trace.values,
            error_y=dict(type="data", array=ds.block_trace_stderr.values, visible=True),
            marker_color=[_block_colour(k) for k in range(ds.sizes["block"])],
            name="trace",
            hovertemplate="%{x}: %{y:.5g}<extra></extra>",
        )
    )
    fig.update_layout(
        template=template,
        title=title,
        xaxis_title="block",
        yaxis_title="trace",
        margin=dict(l=60, r=10, t=60, b=40),
    )
    return fig


def hessian_facts(ds: xr.Dataset) -> dict[str, str]:
    """The facts of the Hessian page: model, data, the curvature (as on the landscape
    page), how each number was computed, and the time.

    Example:
        >>> ds = xr.Dataset({"eigenvalues": ("rank", [4.0, -1.0]),
        ...                  "residuals": ("rank", [1e-12, 3e-11])},
        ...                 coords={"rank": [0, -1]}, attrs={"n_parameters": 1234})
        >>> facts = hessian_facts(ds)
        >>> facts["parameters"], facts["top eigenvalue"], facts["smallest eigenvalue"]
        ('1,234', '4', '-1')
    """
    a = ds.attrs
    counts = (("parameters", "n_parameters"), ("samples", "n_samples"))
    out = {fact: f"{a[key]:,}" for fact, key in counts if key in a}
    if "loss_name" in a:
        out["loss"] = str(a["loss_name"])
    out |= curvature(ds)
    if "eigenvalues" in ds and bool((ds["rank"] < 0).any()):
        out["smallest eigenvalue"] = f"{float(ds.eigenvalues.sel(rank=-1)):.5g}"
    if "residuals" in ds:
        out["largest residual"] = f"{float(ds.residuals.max()):.2g}"
    if "trace_probes" in a:
        out["trace probes"] = f"{a['trace_probes']} ({a.get('trace_method', 'hutchinson')})"
    if "density_probes" in a:
        out["density"] = (
            f"{a['density_probes']} probes x {a['density_steps']} Lanczos steps, "
            f"width {float(a['density_width']):.3g}"
        )
    if "block" in ds.dims:
        out["blocks"] = f"{ds.sizes['block']} (by {a.get('by', 'group')})"
    for key in ("dtype", "device"):
        if key in a:
            out[key] = str(a[key])
    if "seconds" in a:
        out["time"] = f"{float(a['seconds']):.3g} s"
    return out


def hessian_report(path: str | Path, ds: xr.Dataset, *, title: str = "crumple: Hessian") -> Path:
    """Write the Hessian page: the density (:func:`spectrum`) where it was computed, the
    extreme eigenvalues by rank (:func:`eigenvalue_ranks`), each block's trace
    (:func:`block_traces`), and the facts (:func:`hessian_facts`).

    Example:
        >>> import tempfile
        >>> ds = xr.Dataset({"eigenvalues": ("rank", [4.0, 2.0])}, coords={"rank": [0, 1]})
        >>> hessian_report(f"{tempfile.mkdtemp()}/hessian.html", ds).name
        'hessian.html'
    """
    figures = []
    if "density" in ds or "block_density" in ds:
        figures.append(spectrum(ds))
    if "eigenvalues" in ds or "block_eigenvalues" in ds:
        figures.append(eigenvalue_ranks(ds))
    if "block_trace" in ds:
        figures.append(block_traces(ds))
    return write_page(path, figures, title=title, facts=hessian_facts(ds), height=520)
