"""The page of a run: 3-D view (animated paths), contour view, loss curves, and the facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from crumple import planes
from crumple.analysis import critical_points
from crumple.plot.figures import animate, contour, losses, surface
from crumple.plot.page import write_page
from crumple.plot.style import display_grid


def facts(ds: xr.Dataset, paths: Mapping[str, xr.Dataset] | None = None) -> dict[str, str]:
    """What a reader needs to trust the picture: grid, plane, data, time, critical points and
    how far each path is from its drawing.

    Example:
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.zeros((3, 4)))},
        ...                 attrs={"plane_kind": "axes", "seconds": 0.5})
        >>> facts(ds)["grid"]
        '3 x 4'
    """
    out = {"grid": " x ".join(str(n) for n in ds.loss.shape)}
    plane = {k.removeprefix("plane_"): v for k, v in ds.attrs.items() if k.startswith("plane_")}
    out["plane"] = planes.describe(plane)
    if "n_samples" in ds.attrs:
        out["samples"] = f"{ds.attrs['n_samples']:,}"
    if "n_parameters" in ds.attrs:
        out["parameters"] = f"{ds.attrs['n_parameters']:,}"
    if "seconds" in ds.attrs:
        strategy = f" ({ds.attrs['strategy']})" if "strategy" in ds.attrs else ""
        out["surface time"] = f"{ds.attrs['seconds']:.3g} s{strategy}"
    found = critical_points(ds)
    out["critical points"] = ", ".join(f"{n} {k}" for k, n in found.counts().items())
    if found.global_min is not None:
        i, j = found.global_min
        out["grid minimum"] = f"{float(ds.loss.values[i, j]):.5g}"
    for name, path in (paths or {}).items():
        quality = f"final loss {float(path.loss[-1]):.5g}"
        if "off_plane" in path:
            gap = np.abs(path.loss.values - path.loss_on_plane.values)
            quality += (
                f", off the plane by up to {float(path.off_plane.max()):.3g}, "
                f"loss on plane within {float(np.nanmax(gap)):.3g}"
            )
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
) -> Path:
    """Write the run's page: the 3-D view (paths animated), the contour view, the loss
    curves, any ``more_figures``, and the facts.

    Example:
        >>> import tempfile
        >>> a = np.linspace(-1, 1, 5)
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), a[:, None] ** 2 + a[None, :])},
        ...                 coords={"alpha": a, "beta": a})
        >>> report(f"{tempfile.mkdtemp()}/page.html", ds).name
        'page.html'
    """
    paths = dict(paths or {})
    figures = [
        animate(ds, paths, log=log, zmax=zmax) if paths else surface(ds, log=log, zmax=zmax),
        contour(ds, paths, log=log, zmax=zmax),
    ]
    if paths:
        figures.append(losses(paths))
    figures.extend(more_figures)
    _, note = display_grid(ds)
    return write_page(
        path,
        figures,
        title=title,
        facts={**facts(ds, paths), **(more_facts or {})},
        notes=[note] if note else [],
    )
