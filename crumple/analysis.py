"""What a gridded surface holds: its critical points, found by comparing neighbours."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

# the 8 neighbours of a grid point, in cyclic order around it
RING = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]


@dataclass
class CriticalPoints:
    """Indices ``(i, j)`` into ``loss[alpha, beta]`` of each kind, and the global minimum."""

    minima: list[tuple[int, int]]
    maxima: list[tuple[int, int]]
    saddles: list[tuple[int, int]]
    global_min: tuple[int, int] | None

    def counts(self) -> dict[str, int]:
        """Example:
        >>> CriticalPoints([(1, 1)], [], [(2, 2), (3, 3)], (1, 1)).counts()
        {'minima': 1, 'maxima': 0, 'saddles': 2}
        """
        return {
            "minima": len(self.minima),
            "maxima": len(self.maxima),
            "saddles": len(self.saddles),
        }


def critical_points(ds: xr.Dataset, var: str = "loss") -> CriticalPoints:
    """Local minima and maxima (strictly below or above all 8 neighbours) and saddles (the
    signs of neighbour minus centre change at least 4 times around the ring, neighbours
    level with the centre skipped) of the interior grid points; points next to nan or inf
    are left out. Also the grid's global minimum.

    Example:
        >>> a = np.linspace(-2, 2, 41)
        >>> f = (a[:, None] ** 2 - 1) ** 2 + (a[None, :] ** 2 - 1) ** 2
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), f)}, coords={"alpha": a, "beta": a})
        >>> critical_points(ds).counts()
        {'minima': 4, 'maxima': 1, 'saddles': 4}
    """
    z = np.asarray(ds[var].values, dtype=np.float64)
    finite = np.isfinite(z)
    global_min = (
        tuple(int(k) for k in np.unravel_index(np.nanargmin(np.where(finite, z, np.nan)), z.shape))
        if finite.any()
        else None
    )
    if z.ndim != 2 or min(z.shape) < 3:
        return CriticalPoints([], [], [], global_min)
    centre = z[1:-1, 1:-1]
    n, m = z.shape
    diffs = np.stack([z[1 + di : n - 1 + di, 1 + dj : m - 1 + dj] - centre for di, dj in RING])
    ok = np.isfinite(diffs).all(axis=0) & np.isfinite(centre)
    minima = ok & (diffs > 0).all(axis=0)
    maxima = ok & (diffs < 0).all(axis=0)
    # sign changes around the ring, skipping neighbours level with the centre (the
    # diagonals of a^2 - b^2): each zero takes the sign before it
    signs = np.sign(diffs)
    for _ in range(len(RING) - 1):
        signs = np.where(signs == 0, np.roll(signs, 1, axis=0), signs)
    changes = (signs != np.roll(signs, 1, axis=0)).sum(axis=0)
    saddles = ok & ~minima & ~maxima & (changes >= 4)

    def where(mask):
        return [(int(i) + 1, int(j) + 1) for i, j in np.argwhere(mask)]

    return CriticalPoints(where(minima), where(maxima), where(saddles), global_min)


EDGE_NOTE = "on the edge of the grid: the landscape goes on beyond it; widen the grid"


def on_edge(point: tuple[int, int] | None, shape: tuple[int, ...]) -> bool:
    """Whether grid point ``point`` (indices, as :attr:`CriticalPoints.global_min`) lies on
    the edge of a grid of ``shape``: a minimum there may not be one, the values may go on
    falling beyond it (:data:`EDGE_NOTE` says so).

    Example:
        >>> on_edge((0, 3), (5, 5)), on_edge((2, 3), (5, 5)), on_edge(None, (5, 5))
        (True, False, False)
    """
    if point is None:
        return False
    return any(k in (0, n - 1) for k, n in zip(point, shape))
