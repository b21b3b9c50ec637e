"""Static figures for papers (PNG, PDF, SVG) through matplotlib: the 3-D surface and the
contour view with the paths, critical points and grid minimum, as on the page."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from crumple.analysis import critical_points, on_edge
from crumple.errors import CrumpleError, require_extra
from crumple.files import suffixed_path, written
from crumple.plot.scale import Scale
from crumple.plot.style import check_paths, colours, display_grid, label, model_points

STATIC_SUFFIXES = (".png", ".pdf", ".svg")


def static_path(path: object, option: str = "path", suffix: str | None = None) -> Path:
    """``path`` as a Path if its suffix names a static format (``suffix`` only, if given),
    else a :class:`~crumple.errors.CrumpleError` naming ``option`` and the fix
    (:func:`crumple.files.suffixed_path`).

    Example:
        >>> static_path("fig.PDF").name
        'fig.PDF'
    """
    allowed = (suffix,) if suffix else STATIC_SUFFIXES
    return suffixed_path(path, option, allowed, "surface.png")


def save_static(
    ds: xr.Dataset,
    path: str | Path,
    paths: Mapping[str, xr.Dataset] | None = None,
    *,
    log: bool = False,
    zmax: float | None = None,
    title: str = "Loss Surface",
    dpi: int = 200,
) -> Path:
    """Write the surface (3-D and contour views side by side) to ``path``; the format
    follows the suffix (``.png``, ``.pdf``, ``.svg``; another is refused). The scale, its
    notes (values clipped, nan gaps, nothing to draw) and ``log``/``zmax`` are those of
    :func:`crumple.plot.surface`. Needs the ``static`` extra.

    Example:
        >>> import tempfile
        >>> a = np.linspace(-1, 1, 5)
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), a[:, None] ** 2 + a[None, :] ** 2)},
        ...                 coords={"alpha": a, "beta": a})
        >>> save_static(ds, f"{tempfile.mkdtemp()}/s.png").suffix
        '.png'
    """
    path = static_path(path)
    if ds.loss.ndim != 2:
        raise CrumpleError(
            f"ds.loss has dims {ds.loss.dims!r}, not ('alpha', 'beta'): the static figure "
            "draws a surface; a line (crumple.line, crumple line) is drawn on its page "
            "(crumple.plot.report, crumple plot RUN --html PAGE)"
        )
    paths = check_paths(paths)
    scale = Scale(ds.loss.values, log, zmax)
    require_extra("matplotlib", "static")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    view, note = display_grid(ds)
    with matplotlib.rc_context({"text.parse_math": False}):  # names drawn as they are: "$x^$"
        return _save(plt, ds, view, path, paths, scale, [title, note, scale.note()], dpi)


def _save(plt, ds, view, path: Path, paths, scale: Scale, title: list, dpi: int) -> Path:
    fig = plt.figure(figsize=(13, 5.5))
    ax3 = fig.add_subplot(1, 2, 1, projection="3d")
    ax2 = fig.add_subplot(1, 2, 2)
    _draw_surface(fig, ax3, ax2, view, scale)
    _draw_paths(ax3, ax2, paths, scale)
    if not scale.empty:
        _draw_critical(ax2, view)
        _draw_models(ax2, ds)
    for ax in (ax3, ax2):
        ax.set_xlabel(label(ds.alpha))
        ax.set_ylabel(label(ds.beta))
    ax3.set_zlabel(scale.title(label(ds.loss)))
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(loc="upper right", fontsize=8)
    fig.suptitle("\n".join(n for n in title if n))
    fig.tight_layout()
    try:
        with written(path) as temporary:
            fig.savefig(temporary, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def _draw_surface(fig, ax3, ax2, view: xr.Dataset, scale: Scale) -> None:
    """The surface and its filled contours (nan left as gaps), or why there is nothing."""
    if scale.empty:
        said = scale.note().replace(": ", ":\n", 1)
        ax3.text2D(0.5, 0.5, said, transform=ax3.transAxes, ha="center", va="center")
        ax2.text(0.5, 0.5, said, transform=ax2.transAxes, ha="center", va="center")
        return
    a, b = view.alpha.values, view.beta.values
    A, B = np.meshgrid(a, b, indexing="ij")
    z = scale(view.loss.values)
    low, high = scale.range()
    ax3.plot_surface(
        A, B, z, cmap="viridis", vmin=low, vmax=high, linewidth=0, antialiased=True, alpha=0.9
    )
    filled = ax2.contourf(A, B, z, levels=30, cmap="viridis", vmin=low, vmax=high)
    fig.colorbar(filled, ax=ax2, label=scale.title(label(view.loss)))


def _draw_paths(ax3, ax2, paths: Mapping[str, xr.Dataset], scale: Scale) -> None:
    for k, (name, p) in enumerate(paths.items()):
        color = colours(k)[0]
        x, y, zp = p.alpha.values, p.beta.values, scale(p.loss.values)
        name = f"\u200b{name}" if name.startswith("_") else name  # "_x" would leave the legend
        ax3.plot(x, y, zp, color=color, lw=2, label=name, zorder=10)
        ax2.plot(x, y, color=color, lw=2, marker="o", ms=3, label=name)
        ax2.plot(x[:1], y[:1], "D", color=color, ms=7)
        ax2.plot(x[-1:], y[-1:], "s", color=color, ms=7)


def _draw_critical(ax2, view: xr.Dataset) -> None:
    a, b = view.alpha.values, view.beta.values
    found = critical_points(view)
    for kind, marker, color in (
        ("minima", "o", "#00c060"),
        ("maxima", "o", "#e03030"),
        ("saddles", "x", "#d4a000"),
    ):
        points = getattr(found, kind)
        if points:
            i, j = np.array(points).T
            ax2.scatter(
                a[i],
                b[j],
                marker=marker,
                **(dict(facecolors="none", edgecolors=color) if marker == "o" else dict(c=color)),
                label=f"{kind} ({len(points)})",
                zorder=5,
            )
    if found.global_min is not None:
        i, j = found.global_min
        ax2.annotate(
            f"grid minimum {view.loss.values[i, j]:.4g}"
            + ("\non the grid's edge: widen the grid" if on_edge((i, j), view.loss.shape) else ""),
            (a[i], b[j]),
            xytext=(10, 10),
            textcoords="offset points",
            color="white",
            bbox=dict(facecolor="black", alpha=0.5),
        )


def _draw_models(ax2, ds: xr.Dataset) -> None:
    """The models the plane was made from, named, where they lie on the grid."""
    a, b = ds.alpha.values, ds.beta.values
    for name, (x, y) in model_points(ds).items():
        if a.min() <= x <= a.max() and b.min() <= y <= b.max():
            ax2.plot([x], [y], "*", color="white", mec="black", ms=12, zorder=6)
            ax2.annotate(name, (x, y), xytext=(0, 8), textcoords="offset points", color="white")
