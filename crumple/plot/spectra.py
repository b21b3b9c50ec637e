"""Figures of the Hessian's spectrum and the page of ``crumple hessian``: the whole model's
eigenvalue density on a log scale with the extreme eigenvalues marked on it, the
eigenvalues by rank, each block's density and trace, and the facts
(:func:`crumple.plot.report.curvature` reads the top eigenvalue, trace and sharpness, as
for the landscape page).

The results dataset (``hessian.zarr``, see :mod:`crumple.hessian.results`) holds ``density``
over ``eigenvalue`` (as :func:`crumple.hessian.density` returns it), ``eigenvalues`` and
``residuals`` over ``rank`` (0 the largest, -1 the smallest), and per block
``block_density`` over (``block``, ``bin``) at ``block_eigenvalue`` (with
``block_density_width`` and ``block_n_parameters``), ``block_eigenvalues`` over
(``block``, ``rank``) and ``block_trace`` over ``block``; each figure draws what is there.

The density axes stop at a tenth of one eigenvalue's bump (:func:`bump`): a single
outlying eigenvalue of ``n`` rises above the floor, the gaps between the Gaussian kernels
that smooth the quadrature's nodes (noise, not structure) fall below it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from crumple.errors import CrumpleError
from crumple.plot.page import write_page
from crumple.plot.report import curvature
from crumple.plot.style import colours

ONE_EIGENVALUE = 0.1  # the density axes reach this fraction of one eigenvalue's bump
PEAK_FLOOR = 1e-6  # ... or, where the count or the width is not known, of the peak
ENDS = {"largest": ("#ff4040", "diamond"), "smallest": ("#00e5ff", "diamond-open")}


def bump(n: int, width: float) -> float:
    """The height of one eigenvalue's Gaussian kernel in a density of ``n`` eigenvalues
    smoothed by ``width`` (each weighs ``1/n``): what a single outlying eigenvalue rises to.

    Example:
        >>> round(bump(100, 0.01), 4)  # 1 / (100 * 0.01 * sqrt(2 pi))
        0.3989
    """
    return 1.0 / (n * width * math.sqrt(2 * math.pi))


def spectrum(
    ds: xr.Dataset,
    *,
    floor: float | None = None,
    title: str = "Eigenvalue density of the Hessian",
    template: str = "plotly_dark",
) -> go.Figure:
    """The whole model's spectral density (``density`` over ``eigenvalue``) on a log axis
    down to ``floor`` (default: :data:`ONE_EIGENVALUE` of :func:`bump` of the
    ``n_parameters`` and the width in the attrs, where single outlying eigenvalues show
    and the gaps between the kernels do not), with the extreme eigenvalues
    (``eigenvalues`` over ``rank``) marked on the curve; the subtitle says how the
    density was estimated and smoothed. Blocks: :func:`block_densities`.

    Example:
        >>> grid = np.linspace(-1.0, 5.0, 61)
        >>> esd = xr.Dataset({"density": ("eigenvalue", np.exp(-grid**2))},
        ...                  coords={"eigenvalue": grid})
        >>> fig = spectrum(esd.assign(eigenvalues=("rank", [4.0])))
        >>> [t.name for t in fig.data], fig.layout.yaxis.type
        (['density', 'largest eigenvalues (1)'], 'log')
    """
    if "density" not in ds:
        raise CrumpleError(
            f"spectrum: the dataset has no density (it holds {sorted(map(str, ds.data_vars))}); "
            "give the dataset of crumple.hessian.density, or of crumple hessian --density"
        )
    x, y = ds.eigenvalue.values, ds.density.values
    peak = max(float(np.nanmax(y, initial=0.0)), np.finfo(float).tiny)
    n, width = ds.attrs.get("n_parameters"), _quadrature(ds, "width")
    known = bool(n and width and width > 0)
    if floor is None:
        floor = ONE_EIGENVALUE * bump(n, width) if known else PEAK_FLOOR * peak
    fig = go.Figure(_curve("density", x, y, floor, "white", 2.5))
    if "eigenvalues" in ds:
        _add_ends(fig, ds, np.maximum(np.interp(ds.eigenvalues.values, x, y), floor))
    how = ["Stochastic Lanczos quadrature"]
    if _quadrature(ds, "probes"):
        probes, steps = _quadrature(ds, "probes"), _quadrature(ds, "steps")
        how = [f"Estimate from {probes} random probes x {steps} Lanczos steps (SLQ)"]
    if width:
        how[0] += f", smoothed by a Gaussian of width {width:.2g}"
    if known:
        how.append(f"The axis stops at 1/10 of the bump of one eigenvalue (of {n:,})")
    _log_layout(fig, "<br>".join([title, *(f"<sup>{line}</sup>" for line in how)]), floor, peak)
    return fig.update_layout(template=template)


def block_densities(
    ds: xr.Dataset,
    *,
    title: str = "Eigenvalue density of each block",
    template: str = "plotly_dark",
) -> go.Figure:
    """Each block's density (``block_density`` at ``block_eigenvalue``: its own estimate on
    its own eigenvalues) times its share of the parameters (``block_n_parameters``), so
    that one eigenvalue weighs ``1/n`` in every block and the curves add up to the density
    of the block-diagonal Hessian; the whole model's density, dotted, for reference. The
    axis stops at :data:`ONE_EIGENVALUE` of the bump of one eigenvalue in the block of the
    widest kernel, and each curve leaves it downwards at the ends of its grid (5 widths
    past its outermost nodes), not implying that the block has nothing there.

    Example:
        >>> grid = np.linspace(0.0, 1.0, 5)
        >>> ds = xr.Dataset({"block_density": (("block", "bin"), [[0, 1, 2, 1, 0]] * 2),
        ...                  "block_n_parameters": ("block", [30, 10])},
        ...                 coords={"block": ["a", "b"],
        ...                         "block_eigenvalue": (("block", "bin"), [grid, grid])})
        >>> [(t.name, float(max(t.y))) for t in block_densities(ds).data]
        [('block a', 1.5), ('block b', 0.5)]
    """
    counts = ds.block_n_parameters.values if "block_n_parameters" in ds else None
    shares = counts / counts.sum() if counts is not None else np.ones(ds.sizes["block"])
    curves = [
        (f"block {b}", ds.block_eigenvalue.values[k], shares[k] * ds.block_density.values[k])
        for k, b in enumerate(ds.block.values)
    ]
    peak = max(float(np.nanmax(y, initial=0.0)) for _, _, y in curves)
    peak = max(peak, np.finfo(float).tiny)
    widths = ds.block_density_width.values if "block_density_width" in ds else None
    if counts is not None and widths is not None:
        floor = ONE_EIGENVALUE * bump(int(counts.sum()), float(np.max(widths)))
    else:
        floor = PEAK_FLOOR * peak
    fig = go.Figure()
    if "density" in ds:
        whole = ("whole model", ds.eigenvalue.values, ds.density.values)
        fig.add_trace(_curve(*whole, floor, "#9a9a9a", 1.5, dash="dot"))
    for k, (name, x, y) in enumerate(curves):
        fig.add_trace(_curve(name, x, y, floor, _block_colour(k), 2))
    note = "Each block's own estimate"
    if widths is not None and np.ptp(widths) <= 1e-9 * np.max(widths):
        note += f", smoothed by a Gaussian of width {np.max(widths):.2g}"
    elif widths is not None:
        note += f", smoothed by Gaussians of widths {np.min(widths):.2g} to {np.max(widths):.2g}"
    if counts is not None:
        note += f", times its share of the {int(counts.sum()):,} parameters"
    _log_layout(fig, f"{title}<br><sup>{note}</sup>", floor, peak, len(fig.data))
    ytitle = "density x share (log scale)" if counts is not None else "density (log scale)"
    return fig.update_layout(template=template, yaxis_title=ytitle)


def _quadrature(ds: xr.Dataset, name: str):
    """The density's ``name`` attribute: ``density_NAME`` in the results of ``crumple
    hessian``, ``NAME`` in a dataset of :func:`crumple.hessian.density`."""
    return ds.attrs.get(f"density_{name}", ds.attrs.get(name))


def _curve(name, x, y, floor: float, colour: str, width: float, dash: str = "solid"):
    """A density as a line; what lies below ``floor`` (and the ends of its grid, 5 kernel
    widths past the outermost nodes, where it is ~exp(-12.5) of theirs) is drawn just below
    the axis, so that the line leaves the plot downwards rather than breaking or stopping."""
    drawn = np.maximum(np.asarray(y, dtype=float), floor / 10)
    if len(drawn) > 2:
        drawn[[0, -1]] = floor / 10
    return go.Scatter(
        x=x,
        y=drawn,
        name=name,
        mode="lines",
        line=dict(color=colour, width=width, dash=dash),
        hovertemplate="eigenvalue %{x:.4g}<br>density %{y:.3g}<extra>%{fullData.name}</extra>",
    )


def _log_layout(fig: go.Figure, title: str, floor: float, peak: float, traces: int = 1) -> None:
    fig.update_layout(
        title=title,
        xaxis_title="eigenvalue",
        yaxis=dict(title="density (log scale)", type="log", exponentformat="power"),
        yaxis_range=[np.log10(floor), np.log10(max(peak, floor)) + 0.5],
        legend=_legend(traces),
        margin=dict(l=60, r=10, t=80, b=40),
    )


def _legend(traces: int) -> dict:
    """Below the plot in a row or two; on the right (where it scrolls) for many traces."""
    return dict(orientation="h", y=-0.15) if traces <= 8 else dict(orientation="v")


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
        legend=_legend(len(fig.data)),
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
    if "batchnorm" in a:
        out["BatchNorm"] = str(a["batchnorm"])
    if "seconds" in a:
        out["time"] = f"{float(a['seconds']):.3g} s"
    return out


def hessian_report(path: str | Path, ds: xr.Dataset, *, title: str = "crumple: Hessian") -> Path:
    """Write the Hessian page: the facts (:func:`hessian_facts`), then the whole model's
    density (:func:`spectrum`) where it was computed and the extreme eigenvalues by rank
    (:func:`eigenvalue_ranks`) side by side, then the blocks' densities
    (:func:`block_densities`) and traces (:func:`block_traces`).

    Example:
        >>> import tempfile
        >>> ds = xr.Dataset({"eigenvalues": ("rank", [4.0, 2.0])}, coords={"rank": [0, 1]})
        >>> hessian_report(f"{tempfile.mkdtemp()}/hessian.html", ds).name
        'hessian.html'
    """
    figures = []
    if "density" in ds:
        figures.append(spectrum(ds))
    if "eigenvalues" in ds or "block_eigenvalues" in ds:
        figures.append(eigenvalue_ranks(ds))
    if "block_density" in ds:
        figures.append(block_densities(ds))
    if "block_trace" in ds:
        figures.append(block_traces(ds))
    return write_page(path, figures, title=title, facts=hessian_facts(ds), height=520)
