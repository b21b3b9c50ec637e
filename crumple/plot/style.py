"""What every figure shares: colours, axis labels from attributes, the thinned display grid,
and the scale that clips divergent values."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

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


def label(da: xr.DataArray) -> str:
    """The axis title of a variable or coordinate: its ``long_name``, else its name.

    Example:
        >>> label(xr.DataArray([1.0], dims="alpha", name="alpha", attrs={"long_name": "PC1"}))
        'PC1'
    """
    return str(da.attrs.get("long_name", da.name))


def colours(k: int) -> tuple[str, str]:
    """The line and marker colours of the ``k``-th path (they repeat after six).

    Example:
        >>> colours(0), colours(6) == colours(0)
        (('red', 'yellow'), True)
    """
    return PATH_STYLES[k % len(PATH_STYLES)]


def off_plane(path: xr.Dataset) -> bool:
    """Whether a path leaves the plane (so its projection is drawn too).

    Example:
        >>> off_plane(xr.Dataset({"off_plane": ("step", [0.0, 0.1]),
        ...                       "loss_on_plane": ("step", [1.0, 1.0])}))
        True
    """
    if "off_plane" not in path or "loss_on_plane" not in path:
        return False
    return bool(np.nanmax(path.off_plane.values, initial=0.0) > OFF_PLANE_TOL)


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

    Example:
        >>> scale = Scale(np.array([1.0, 2.0, np.inf]), zmax=1.5)
        >>> scale(np.array([1.0, 2.0, np.inf])).tolist(), scale.clipped([1.0, 2.0]).tolist()
        ([1.0, 1.5, 1.5], [False, True])
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
        """The axis title of the drawn values: ``label``, or ``log10 label``."""
        return f"log10 {label}" if self.log else label
