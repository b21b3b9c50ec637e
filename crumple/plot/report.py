"""The page of a run: 3-D view (animated paths), contour view, loss curves, and the facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from crumple import planes
from crumple.analysis import EDGE_NOTE, critical_points, on_edge
from crumple.grid import Grid
from crumple.plot.bands import spread as band
from crumple.plot.bands import spread_facts
from crumple.plot.figures import animate, contour, losses, surface
from crumple.plot.lines import line_report
from crumple.plot.maps import curvature_facts, curvature_map
from crumple.plot.metrics import full_range, metric_panels, variable_figures
from crumple.plot.page import write_page
from crumple.plot.scale import Scale
from crumple.plot.sharpness import curvature_history, history_facts
from crumple.plot.style import check_paths, display_grid


def facts(
    ds: xr.Dataset,
    paths: Mapping[str, xr.Dataset] | None = None,
    *,
    log: bool = False,
    zmax: float | None = None,
    hessian: xr.Dataset | None = None,
) -> dict[str, str]:
    """What a reader needs to trust the picture: grid, plane, data, time, critical points,
    what the figures drew otherwise than it is (``drawn``: values clipped at the scale's cap,
    nan gaps, or no finite value at all; ``log`` and ``zmax`` as for the figures), how far
    each path is from its drawing, and the curvature (:func:`curvature`) where it is known.

    Example:
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.zeros((3, 4)))},
        ...                 attrs={"plane_kind": "axes", "seconds": 0.5})
        >>> facts(ds)["grid"]
        '3 x 4'
        >>> facts(ds.assign(loss=ds.loss * np.nan))["drawn"]
        'no finite loss value: nothing to draw (12 nan, 0 inf)'
    """
    paths = check_paths(paths, needs=("loss",))
    out = {"grid": " x ".join(str(n) for n in ds.loss.shape)}
    if "grid_chosen" in ds.attrs:
        out["grid range"] = str(ds.attrs["grid_chosen"])
    if ds.loss.ndim == 1 and zmax is None:  # a line is drawn whole, none of it clipped
        top = full_range(ds.loss)
        zmax = top if top is not None and (top > 0 or not log) else None
    scale = Scale(ds.loss.values, log, zmax)
    if scale.note():
        out["drawn"] = scale.note()
    plane = {k.removeprefix("plane_"): v for k, v in ds.attrs.items() if k.startswith("plane_")}
    out["plane"] = planes.describe(plane)
    if "n_samples" in ds.attrs:
        out["samples"] = f"{ds.attrs['n_samples']:,}"
    if "n_target_tokens" in ds.attrs:
        out["target tokens"] = f"{ds.attrs['n_target_tokens']:,}"
    for fact in ("recalibrated", "batchnorm", "precision"):
        if fact in ds.attrs:
            out[fact] = str(ds.attrs[fact])
    if "n_parameters" in ds.attrs:
        out["parameters"] = f"{ds.attrs['n_parameters']:,}"
    if "seconds" in ds.attrs:
        strategy = f" ({ds.attrs['strategy']})" if "strategy" in ds.attrs else ""
        out["surface time"] = f"{ds.attrs['seconds']:.3g} s{strategy}"
    if not scale.empty and ds.loss.ndim == 1:  # a line: its lowest point
        k = int(np.nanargmin(np.where(np.isfinite(ds.loss.values), ds.loss.values, np.nan)))
        dim = ds.loss.dims[0]
        out["line minimum"] = f"{float(ds.loss.values[k]):.5g} at {dim} = {ds[dim].values[k]:.4g}"
    elif not scale.empty:
        found = critical_points(ds)
        out["critical points"] = ", ".join(f"{n} {k}" for k, n in found.counts().items())
        if found.global_min is not None:
            i, j = found.global_min
            out["grid minimum"] = f"{float(ds.loss.values[i, j]):.5g}"
            if on_edge(found.global_min, ds.loss.shape):
                out["grid minimum"] += f", {EDGE_NOTE}"
    return out | curvature(hessian, ds.attrs) | curvature_facts(ds) | _path_facts(paths, ds)


def curvature(
    hessian: xr.Dataset | None = None, surface_attrs: Mapping[str, object] | None = None
) -> dict[str, str]:
    """The top eigenvalue, the trace and the sharpness at the model's weights, where they
    were computed: in ``hessian`` (the results of ``crumple hessian``, or a dataset with
    ``eigenvalues`` over ``rank``), else, for the top eigenvalue, from a surface's Hessian
    plane (its ``plane_eigenvalues`` in ``surface_attrs``).

    Example:
        >>> plane = {"plane_eigenvalues": [195.5, 12.3], "plane_eigenvector_index": [0, 1]}
        >>> curvature(None, plane)
        {'top eigenvalue': '195.5'}
        >>> curvature(xr.Dataset(attrs={"trace": 310.0, "trace_stderr": 4.2}))
        {'Hessian trace': '310 ± 4.2'}
    """
    h = {} if hessian is None else dict(hessian.attrs)
    plane = surface_attrs or {}
    top = h.get("sharpness_lambda_max")
    if hessian is not None and "eigenvalues" in hessian and bool((hessian["rank"] == 0).any()):
        top = float(hessian.eigenvalues.sel(rank=0))
    elif top is None and 0 in list(plane.get("plane_eigenvector_index") or []):
        top = plane["plane_eigenvalues"][list(plane["plane_eigenvector_index"]).index(0)]
    out = {} if top is None else {"top eigenvalue": f"{float(top):.5g}"}
    for prefix in ("", "sharpness_"):  # from --trace, else from --sharpness
        if f"{prefix}trace" in h:
            trace, stderr = h[f"{prefix}trace"], h[f"{prefix}trace_stderr"]
            out["Hessian trace"] = f"{float(trace):.5g} ± {float(stderr):.2g}"
            break
    if "sharpness_epsilon_sharpness" in h:
        value, epsilon = h["sharpness_epsilon_sharpness"], h["sharpness_epsilon"]
        out["epsilon-sharpness"] = f"{float(value):.4g}% (epsilon {float(epsilon):g})"
    if "sharpness_adaptive_sharpness" in h:
        value, rho, p = (h[f"sharpness_{k}"] for k in ("adaptive_sharpness", "rho", "p"))
        out["adaptive sharpness"] = f"{float(value):.4g} (rho {float(rho):g}, p {float(p):g})"
    return out


def _path_facts(paths: Mapping[str, xr.Dataset], ds: xr.Dataset) -> dict[str, str]:
    """How far each path is from its drawing, and how many of its points lie outside the
    grid of ``ds`` (drawn beside the surface)."""
    out = {}
    grid = Grid(*(ds[d].values for d in ds.loss.dims))
    for name, path in paths.items():
        quality = f"final loss {float(path.loss[-1]):.5g}"
        away = grid.outside(path)
        if away:
            quality += f", {away} of {path.sizes['step']} points outside the grid"
        if "off_plane" in path and "loss_on_plane" in path:
            gap = np.abs(path.loss.values - path.loss_on_plane.values)
            within = float(np.max(gap, initial=0.0, where=~np.isnan(gap)))
            quality += (
                f", off the plane by up to {float(path.off_plane.max()):.3g}, "
                f"loss on plane within {within:.3g}"
            )
        if "statistics" in path.attrs:  # which BatchNorm statistics its losses use
            quality += f"; BatchNorm statistics: {path.attrs['statistics']}"
        out[name] = quality
    return out


def report(
    path: str | Path,
    ds: xr.Dataset,
    paths: Mapping[str, xr.Dataset] | None = None,
    *,
    title: str = "crumple",
    more_facts: Mapping[str, object] | None = None,
    more_figures: Sequence[go.Figure] = (),
    log: bool = False,
    zmax: float | None = None,
    hessian: xr.Dataset | None = None,
    spread: xr.Dataset | None = None,
    notes: Sequence[str] = (),
    var: str = "loss",
    sharpness: xr.Dataset | None = None,
) -> Path:
    """Write the run's page: the 3-D view (paths animated), the contour view, the loss
    curves, the curvature map (of ``curvature=True``), the band of ``spread`` (a
    :func:`crumple.spread` result, ``crumple.run.store.open_spread(folder)``: how the loss
    along random directions varies with the draw), any ``more_figures``, and the facts
    (:func:`facts`: what was clipped, or that there is nothing to draw; the curvature from
    ``hessian``, the Hessian results of the run's folder; the spread's widest point).
    ``log`` and ``zmax`` are :func:`crumple.plot.surface`'s (``log`` also the band's).
    ``notes`` are said on the page above the figures (what was left out and why, as
    :func:`crumple.run.store.beside` gives them). Each metric of ``ds`` gets its own panel
    (:func:`crumple.plot.metrics.metric_panels`); ``var``, a metric's name, draws the page
    of that variable instead of the loss (:func:`~crumple.plot.metrics.variable_figures`).
    A line's dataset (one dimension, :func:`crumple.line`) gets the page of a line
    (:func:`crumple.plot.lines.line_report`).

    Example:
        >>> import tempfile
        >>> a = np.linspace(-1, 1, 5)
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), a[:, None] ** 2 + a[None, :])},
        ...                 coords={"alpha": a, "beta": a})
        >>> report(f"{tempfile.mkdtemp()}/page.html", ds).name
        'page.html'
    """
    line = ds.loss.ndim == 1
    paths = check_paths(paths, needs=("loss",) if line else ("alpha", "beta", "loss"))
    # checks log and zmax before any drawing
    drawn = facts(ds, paths, log=log, zmax=zmax, hessian=hessian) | history_facts(sharpness)
    if line:  # a line's page (crumple line)
        return line_report(
            path,
            ds,
            paths,
            title=title,
            facts={**drawn, **(more_facts or {})},
            log=log,
            zmax=zmax,
            notes=notes,
            more_figures=more_figures,
        )
    if var != "loss":  # the page of one variable
        figures = variable_figures(ds, paths, var, log=log, zmax=zmax)
    else:
        figures = [
            animate(ds, paths, log=log, zmax=zmax) if paths else surface(ds, log=log, zmax=zmax),
            contour(ds, paths, log=log, zmax=zmax),
        ]
        if paths:
            figures.append(losses(paths))
        if sharpness is not None:
            figures.append(curvature_history(sharpness))
        figures += metric_panels(ds, paths)
    if "lambda_max" in ds and ds.lambda_max.ndim == 2:
        figures.append(curvature_map(ds))
    if spread is not None:
        figures.append(band(spread, log=log))
        drawn |= spread_facts(spread)
    figures.extend(more_figures)
    _, note = display_grid(ds)
    return write_page(
        path,
        figures,
        title=title,
        facts={**drawn, **(more_facts or {})},
        notes=[*notes, *([note] if note else [])],
    )
