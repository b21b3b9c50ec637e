"""The curvature measured while training (:class:`crumple.hessian.Tracking`,
``Recorder.sharpness()``) against the step: the top Hessian eigenvalue, Adam's
preconditioned one, the curvature along the update, the optimizer's stability threshold and
the training loss; and the facts that sum it up."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from crumple.errors import CrumpleError
from crumple.plot.style import label

__all__ = ["curvature_history", "history_facts"]

# name in the legend, colour, width, dash and mode of each curvature drawn on the left axis
CURVES = {
    "lambda_max": ("λ_max", "#00e5ff", 2, None, "lines+markers"),
    "preconditioned": ("λ_max of P⁻¹H", "#ff66ff", 2, None, "lines+markers"),
    "directional": ("along the update", "#7CFC00", 1, "dot", "lines"),
}
THRESHOLD_COLOUR = "#ff4040"
LOSS_COLOUR = "#b0b0b0"
STEP_COLOUR = "rgba(255, 215, 0, 0.8)"
STEP_MARK = "step-mark"  # the meta of the marker the page's path animation moves


def curvature_history(
    ds: xr.Dataset,
    *,
    template: str = "plotly_dark",
    title: str = "Curvature along training",
) -> go.Figure:
    """The curvature history against the step: ``lambda_max`` (and ``preconditioned`` and
    ``directional`` where measured) on the left axis, the optimizer's stability threshold
    dashed (a trace over the steps: the learning rate may change), the training loss on the
    right axis (log if all positive), and a vertical marker at the last step (``meta``
    ``"step-mark"``: on a run's page the 3-D view's slider moves it to the step shown).

    Args:
        ds: the curvature history, ``recorder.sharpness()`` or
            ``crumple.run.store.open_sharpness(folder)`` (``lambda_max`` over ``step``).
        template, title: the figure's plotly template and title.

    Raises:
        CrumpleError: ``ds`` is not a dataset with ``lambda_max`` over ``step``.

    Example:
        >>> ds = xr.Dataset({"lambda_max": ("step", [11.0, 25.0, 40.0]),
        ...                  "threshold": ("step", [40.0, 40.0, 40.0]),
        ...                  "loss": ("step", [0.5, 0.2, 0.1])},
        ...                 coords={"step": [0, 50, 100]}, attrs={"threshold_formula": "2 / lr"})
        >>> fig = curvature_history(ds)
        >>> [t.name for t in fig.data]
        ['λ_max', 'threshold 2 / lr', 'training loss', 'step']
        >>> list(fig.data[-1].x), fig.layout.yaxis2.type
        ([100, 100], 'log')
    """
    _check(ds)
    steps = ds.step.values
    fig = go.Figure()
    for var, (name, colour, width, dash, mode) in CURVES.items():
        if var in ds and np.isfinite(ds[var].values).any():
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=ds[var].values,
                    name=name,
                    mode=mode,
                    line=dict(color=colour, width=width, dash=dash),
                    marker=dict(size=4),
                    hovertemplate=f"step %{{x}}<br>%{{y:.4g}}<extra>{label(ds[var])}</extra>",
                )
            )
    if _measured(ds, "threshold"):
        fig.add_trace(_threshold_line(ds))
    low, high = _span(fig)
    loss = _loss_axis(fig, ds)
    last = steps[-1].item()
    fig.add_trace(
        go.Scatter(
            x=[last, last],
            y=[low, high],
            name="step",
            meta=STEP_MARK,
            mode="lines",
            line=dict(color=STEP_COLOUR, width=1.5),
            hoverinfo="skip",
            showlegend=False,
        )
    )
    fig.update_layout(
        template=template,
        title=title,
        xaxis_title="step",
        yaxis_title="curvature",
        margin=dict(l=50, r=55 if loss else 10, t=50, b=40),
        legend=dict(orientation="h", x=0, y=-0.18, yanchor="top"),
        hovermode="x",
    )
    return fig


def _check(ds: object) -> None:
    """A :class:`CrumpleError` unless ``ds`` holds ``lambda_max`` over ``step``."""
    if isinstance(ds, xr.Dataset):
        if "lambda_max" in ds and ds.lambda_max.dims == ("step",) and ds.sizes["step"] > 0:
            return
        what = f"a dataset holding {sorted(map(str, ds.data_vars))} over {tuple(ds.dims)}"
    else:
        what = type(ds).__name__
    raise CrumpleError(
        f"the curvature history needs lambda_max over step, got {what}; pass "
        "recorder.sharpness() of a Recorder(model, curvature=crumple.hessian.Tracking(...)), "
        "or crumple.run.store.open_sharpness(folder) of a run folder"
    )


def _threshold_line(ds: xr.Dataset) -> go.Scatter:
    """The stability threshold over the steps, dashed, named with its formula."""
    formula = ds.attrs.get("threshold_formula")
    return go.Scatter(
        x=ds.step.values,
        y=ds.threshold.values,
        name=f"threshold {formula}" if formula else "threshold",
        mode="lines",
        line=dict(color=THRESHOLD_COLOUR, width=2, dash="dash"),
        hovertemplate="step %{x}<br>%{y:.4g}<extra>threshold</extra>",
    )


def _span(fig: go.Figure) -> tuple[float, float]:
    """The lowest and highest finite value of the curvature traces drawn (0, 1 if none)."""
    values = np.concatenate([np.asarray(t.y, float) for t in fig.data] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    return float(values.min()), float(values.max())


def _loss_axis(fig: go.Figure, ds: xr.Dataset) -> bool:
    """The training loss on a second axis at the right (log if all positive), if known."""
    if "loss" not in ds or ds.loss.dims != ("step",):
        return False
    values = ds.loss.values.astype(float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return False
    fig.add_trace(
        go.Scatter(
            x=ds.step.values,
            y=values,
            name="training loss",
            yaxis="y2",
            mode="lines",
            line=dict(color=LOSS_COLOUR, width=1.5),
            hovertemplate="step %{x}<br>%{y:.4g}<extra>training loss</extra>",
        )
    )
    fig.update_layout(
        yaxis2=dict(
            title=dict(text=label(ds.loss), font=dict(color=LOSS_COLOUR)),
            tickfont=dict(color=LOSS_COLOUR),
            tickformat=".2g",
            overlaying="y",
            side="right",
            type="log" if bool((finite > 0).all()) else "linear",
            showgrid=False,
        )
    )
    return True


def history_facts(ds: xr.Dataset | None) -> dict[str, str]:
    """The curvature history in a line or two for a page's facts: ``lambda_max`` at the
    first and last step and its median over the last third of the steps, the same for
    ``preconditioned`` where measured, and the stability threshold (with the one it bounds:
    ``preconditioned`` where measured, else ``lambda_max``); none without a history.

    Example:
        >>> ds = xr.Dataset({"lambda_max": ("step", [11.3, 30.0, 40.4, 40.5]),
        ...                  "threshold": ("step", [40.0] * 4)},
        ...                 coords={"step": [0, 2000, 4000, 6000]},
        ...                 attrs={"threshold_formula": "2 / lr"})
        >>> history_facts(ds)["lambda_max"]
        '11.3 at step 0, 40.5 at step 6000 (median of the last third 40.5); threshold 40 (2 / lr)'
    """
    if ds is None:
        return {}
    _check(ds)
    bounded = "preconditioned" if _measured(ds, "preconditioned") else "lambda_max"
    out = {}
    for var, name in (("lambda_max", "lambda_max"), ("preconditioned", "preconditioned")):
        if var != "lambda_max" and not _measured(ds, var):
            continue
        said = _summary(ds[var])
        if var == bounded and _measured(ds, "threshold"):
            said += f"; {_threshold(ds)}"
        out[name] = said
    if "eval_mode" in ds.attrs:  # a BatchNorm or dropout model
        out["curvature"] = str(ds.attrs["eval_mode"])
    return out


def _measured(ds: xr.Dataset, var: str) -> bool:
    return var in ds and bool(np.isfinite(ds[var].values).any())


def _summary(da: xr.DataArray) -> str:
    """First and last finite value, with their steps, and the median of the last third."""
    values, steps = da.values.astype(float), da.step.values
    finite = np.flatnonzero(np.isfinite(values))
    if finite.size == 0:
        return "no finite value"
    first, last = finite[0], finite[-1]
    tail = values[len(values) - max(1, -(-len(values) // 3)) :]
    median = float(np.nanmedian(tail)) if np.isfinite(tail).any() else float("nan")
    return (
        f"{values[first]:.3g} at step {steps[first]}, {values[last]:.3g} at step {steps[last]} "
        f"(median of the last third {median:.3g})"
    )


def _threshold(ds: xr.Dataset) -> str:
    """The stability threshold at the last step, with its formula, and its range if it
    changed."""
    values = ds.threshold.values.astype(float)
    finite = values[np.isfinite(values)]
    how = [str(ds.attrs["threshold_formula"])] if "threshold_formula" in ds.attrs else []
    last = values[~np.isnan(values)][-1]  # inf where the learning rate has reached 0
    said = f"threshold {last:.3g}" + (" (the learning rate is 0)" if np.isinf(last) else "")
    if finite.min() != finite.max() or last != finite[-1]:  # the learning rate changed
        said += " at the last step"
        how.append(f"{finite.min():.3g} .. {finite.max():.3g} along training")
    return said + (f" ({'; '.join(how)})" if how else "")
