"""The band of a spread over random directions (:func:`crumple.spread`): each direction's
curve thin and faint, the mean bold, the min-max range and mean +- one standard deviation
shaded, on a y range set from the curves' tops with the far fence of
:mod:`crumple.plot.scale` (so one diverging direction does not flatten the others, and no
ordinary curve is cut)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from crumple.errors import CrumpleError
from crumple.plot.scale import Scale, fences
from crumple.plot.style import label
from crumple.spread import summary

BANDS = ("both", "std", "minmax")
FILL = {"minmax": "rgba(138, 180, 248, 0.16)", "std": "rgba(138, 180, 248, 0.38)"}
CURVE = "rgba(255, 255, 255, 0.3)"
MEAN = "#ffb74d"
PAD = 0.05  # of the drawn range, above and below


def spread(
    ds: xr.Dataset,
    *,
    var: str = "loss",
    band: str = "both",
    curves: bool = True,
    log: bool = False,
    ymax: float | None = None,
    title: str = "Loss along random directions",
    template: str = "plotly_dark",
    fig: go.Figure | None = None,
) -> go.Figure:
    """The curves of a spread over random directions, their mean and a shaded band.

    Args:
        ds: a dataset from :func:`crumple.spread` (or ``crumple.run.store.open_spread``); a
            spread of surfaces is drawn along its cut nearest ``beta = 0``.
        var: the variable to draw (``"loss"`` or a metric).
        band: ``"both"`` (min-max faint, mean +- one sample standard deviation darker),
            ``"std"`` or ``"minmax"``; the legend says which is which.
        curves: draw each direction's curve (thin, faint; its seed on hover).
        log: a log y axis.
        ymax: end the y axis here. By default it ends at the highest curve's top, unless
            that curve's top lies beyond the far fence of all the curves' tops
            (:func:`~crumple.plot.scale.fences`): then at the highest top within it, so one
            direction whose loss runs off by orders of magnitude does not flatten the
            others. The values above run off the top, and the subtitle counts them; the
            bottom is the smallest value (:class:`~crumple.plot.scale.Scale`).
        title, template: the figure's title and plotly template.
        fig: an existing figure to draw into.

    Example:
        >>> a = np.linspace(-1, 1, 5)
        >>> ds = xr.Dataset({"loss": (("direction", "alpha"), [a**2, 2 * a**2, 3 * a**2])},
        ...                 coords={"alpha": a, "seed": ("direction", [0, 1, 2])})
        >>> [t.name for t in spread(ds).data][-2:]
        ['each direction (3)', 'mean of 3 directions']
    """
    if band not in BANDS:
        raise CrumpleError(f"band={band!r} is not one of {BANDS}; e.g. band='std'")
    ds, cut = _one_dimension(ds, var)
    fig = fig if fig is not None else go.Figure()
    curves_da = ds[var].transpose("direction", ...)
    x, values = ds[curves_da.dims[1]].values, curves_da.values
    stats = summary(ds, var)
    n = values.shape[0]
    scale = Scale(values, log, ymax if ymax is not None else _cap(values, log), "ymax")
    for which in ("minmax", "std") if band == "both" else (band,):
        _add_band(fig, x, stats, var, which, n)
    if curves:
        _add_curves(fig, x, values, ds["seed"].values if "seed" in ds.coords else range(n))
    fig.add_trace(
        go.Scatter(
            x=x,
            y=stats[f"{var}_mean"].values,
            mode="lines",
            name=f"mean of {n} directions",
            line=dict(color=MEAN, width=3),
            hovertemplate="mean<br>%{x:.3f}: %{y:.5g}<extra></extra>",
        )
    )
    xlabel = label(ds[curves_da.dims[1]])
    ylabel = label(ds[var])
    fig.update_layout(
        template=template,
        title=_subtitled(title, cut, _note(scale)),
        xaxis_title=xlabel,
        yaxis=_yaxis(scale, ylabel),
        margin=dict(l=60, r=10, t=60, b=40),
        legend=dict(x=0.01, y=0.99, bgcolor="rgba(0, 0, 0, 0.4)"),
    )
    return fig


def spread_facts(ds: xr.Dataset, var: str = "loss") -> dict[str, str]:
    """The spread in words for a page: how many directions, and where they differ most.

    Example:
        >>> a = np.linspace(-1, 1, 3)
        >>> ds = xr.Dataset({"loss": (("direction", "alpha"), [a**2, 3 * a**2])},
        ...                 coords={"alpha": a, "seed": ("direction", [0, 1])})
        >>> spread_facts(ds)["widest spread"]
        'std 1.41 at alpha -1 (mean 2, min 1, max 3)'
    """
    ds, cut = _one_dimension(ds, var)
    stats = summary(ds, var)
    n = ds.sizes["direction"]
    seeds = ds["seed"].values.tolist() if "seed" in ds.coords else []
    told = f"{n} (seeds {_seeds(seeds)})" if seeds else str(n)
    out = {"random directions": told}
    std = stats[f"{var}_std"].values
    if np.isfinite(std).any():
        k = int(np.nanargmax(np.where(np.isfinite(std), std, -np.inf)))
        dim = ds[var].transpose("direction", ...).dims[1]
        at = float(ds[dim].values[k])
        mean, low, high = (float(stats[f"{var}_{s}"].values[k]) for s in ("mean", "min", "max"))
        out["widest spread"] = (
            f"std {std[k]:.3g} at {dim} {at:.3g} (mean {mean:.4g}, min {low:.4g}, max {high:.4g})"
        )
    return out


def _add_curves(fig: go.Figure, x, values: np.ndarray, seeds) -> None:
    """Each direction's curve, thin and faint, one legend entry for all, its seed on hover."""
    for k, seed in enumerate(seeds):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=values[k],
                mode="lines",
                name=f"each direction ({len(values)})",
                legendgroup="directions",
                showlegend=k == 0,
                line=dict(color=CURVE, width=1),
                hovertemplate=f"seed {seed}<br>%{{x:.3f}}: %{{y:.5g}}<extra></extra>",
            )
        )


def _add_band(fig: go.Figure, x, stats: xr.Dataset, var: str, which: str, n: int) -> None:
    """Two traces: the band's lower edge (no legend), then its upper edge filled down to it."""
    mean = stats[f"{var}_mean"].values
    if which == "std":
        std = stats[f"{var}_std"].values
        low, high, name = mean - std, mean + std, f"mean ± 1 std ({n} directions)"
    else:
        low, high = stats[f"{var}_min"].values, stats[f"{var}_max"].values
        name = f"min–max of {n} directions"
    edge = dict(x=x, mode="lines", line=dict(width=0), legendgroup=which, hoverinfo="skip")
    fig.add_trace(go.Scatter(y=low, name=f"{name}: low", showlegend=False, **edge))
    fig.add_trace(
        go.Scatter(y=high, name=name, fill="tonexty", fillcolor=FILL[which], **edge),
    )


def _one_dimension(ds: object, var: str) -> tuple[xr.Dataset, str | None]:
    """The spread as curves over one dimension (a spread of surfaces cut nearest beta = 0),
    and a note of the cut; a :class:`CrumpleError` for anything that is not a spread."""
    if not isinstance(ds, xr.Dataset) or var not in ds or "direction" not in ds[var].dims:
        have = sorted(map(str, ds.data_vars)) if isinstance(ds, xr.Dataset) else type(ds).__name__
        raise CrumpleError(
            f"spread: got {have}, not a spread with var={var!r} over 'direction'; give the "
            "dataset of crumple.spread (or crumple.run.store.open_spread(folder))"
        )
    if ds[var].ndim == 3 and "beta" in ds[var].dims:
        ds = ds.sel(beta=0.0, method="nearest")
        return ds, f"cut at beta = {float(ds.beta):.3g}"
    if ds[var].ndim != 2:
        raise CrumpleError(
            f"spread: {var} is over {ds[var].dims!r}; a spread is over ('direction', 'alpha') "
            "or ('direction', 'alpha', 'beta')"
        )
    return ds, None


def _cap(values: np.ndarray, log: bool) -> float | None:
    """The highest top of a curve (its largest finite value, positive with ``log``) within
    the far fence of all the curves' tops; ``None`` when no curve has one."""
    usable = np.isfinite(values) & (values > 0 if log else True)
    tops = np.array([row[ok].max() for row, ok in zip(values, usable) if ok.any()])
    if not tops.size:
        return None
    drawn = np.log10(tops) if log else tops
    return float(tops[drawn <= fences(drawn)[1]].max())


def _yaxis(scale: Scale, title: str) -> dict:
    """The y axis from the smallest value to the scale's cap, padded (in log10 units on a
    log axis, as plotly takes its range there)."""
    axis = dict(title=title, type="log" if scale.log else "linear")
    drawn = scale.range()
    if drawn is None:
        return axis
    low, high = drawn
    pad = PAD * (high - low) if high > low else max(abs(high) * PAD, 0.05)
    return axis | dict(range=[low - pad, high + pad])


def _note(scale: Scale) -> str | None:
    """What the axis does not show: values above its top, below 0 on a log axis, nan."""
    if scale.empty:
        return scale.note()
    parts = []
    if scale.above:
        inf = f", {scale.posinf} inf" if scale.posinf else ""
        parts.append(
            f"{scale.above} of {scale.size} values above {scale.cap:.4g} run off the top{inf}"
        )
    if scale.log and scale.nonpositive:
        parts.append(f"{scale.nonpositive} values at or below 0 left off the log axis")
    if scale.nan:
        parts.append(f"{scale.nan} nan left as gaps")
    return "; ".join(parts) or None


def _subtitled(title: str, *notes: str | None) -> str:
    said = "; ".join(n for n in notes if n)
    return f"{title}<br><sup>{said}</sup>" if said else title


def _seeds(seeds: list[int]) -> str:
    """``0-9`` for a run of seeds, else the list."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))
