"""The coordinates at which a plane is evaluated, and their split into tiles."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from crumple.errors import CrumpleError

DIMS = ("alpha", "beta")


class Grid:
    """A product grid of plane coordinates: ``alpha`` (and ``beta`` for a plane).

    Each axis is sorted into increasing order; a coordinate given twice is refused.

    Example:
        >>> Grid(alpha=np.arange(-2, 2, 0.05), beta=np.arange(-2, 2, 0.05)).shape
        (80, 80)
        >>> Grid([1, -1, 0.5, 0]).axes[0].tolist()
        [-1.0, 0.0, 0.5, 1.0]
    """

    def __init__(self, alpha, beta=None) -> None:
        axes = [alpha] if beta is None else [alpha, beta]
        self.axes = tuple(_checked_axis(a, dim) for a, dim in zip(axes, DIMS))
        self.chosen = ""  # how Grid.auto chose the extent

    @classmethod
    def auto(
        cls, model, loss_fn, data, plane, rise: float = 2.0, num: int = 51, cover=None, **options
    ):
        """A grid whose edges lie where the loss has risen to ``rise`` times its value at
        the plane's origin, on each side of each axis (:mod:`crumple.auto_range`: a few
        line evaluations through one prepared evaluator, ``options`` as for
        :func:`crumple.line`); ``grid.chosen`` says what it found. ``num`` points per axis.
        ``cover``: paths on the plane (datasets from :func:`crumple.project`, or a dict of
        them) that the grid is widened to hold.

        Example:
            >>> import torch
            >>> from crumple.plane import Plane
            >>> net = torch.nn.Linear(1, 1, bias=False)
            >>> x = torch.ones(4, 1)
            >>> grid = Grid.auto(net, torch.nn.functional.mse_loss, (x, x),
            ...                  Plane.axes(net, "weight"), rise=4.0, num=3)
            >>> [round(float(a), 2) for a in grid.axes[0]]  # (w - 1)^2 = 4 at w = -1, 3
            [-1.0, 1.0, 3.0]
        """
        from crumple.landscape import Landscape  # a facade: the search evaluates the model

        landscape = Landscape(model, loss_fn, data, **{"progress": False, **options})
        return landscape.auto_grid(plane, rise, num, cover)

    @property
    def dims(self) -> tuple[str, ...]:
        """``("alpha",)`` or ``("alpha", "beta")``."""
        return DIMS[: len(self.axes)]

    @property
    def shape(self) -> tuple[int, ...]:
        """Points along each axis."""
        return tuple(len(a) for a in self.axes)

    @property
    def size(self) -> int:
        """Points in all."""
        return int(np.prod(self.shape))

    def tiles(self, max_points: int) -> Iterator[tuple[slice, ...]]:
        """Rectangular blocks of at most ``max_points`` points that cover the grid, row by row.

        Example:
            >>> list(Grid(np.arange(3), np.arange(2)).tiles(4))
            [(slice(0, 2, None), slice(0, 2, None)), (slice(2, 3, None), slice(0, 2, None))]
        """
        return blocks(self.shape, max_points)

    def outside(self, path) -> int:
        """How many points of ``path`` (from :func:`crumple.project`: the grid's coordinates
        along ``step``) lie outside the grid's extent; a nan coordinate counts as outside.

        Example:
            >>> import xarray as xr
            >>> path = xr.Dataset({"alpha": ("step", [0.0, 2.0]), "beta": ("step", [0.0, 0.0])})
            >>> Grid([-1.0, 1.0], [-1.0, 1.0]).outside(path)
            1
        """
        inside = np.ones(np.shape(path[self.dims[0]]), dtype=bool)
        for dim, axis in zip(self.dims, self.axes):
            values = np.asarray(path[dim], dtype=float)
            inside &= (values >= axis[0]) & (values <= axis[-1])
        return int((~inside).sum())

    def __repr__(self) -> str:
        parts = [f"{d}=[{a[0]:g} .. {a[-1]:g}] ({len(a)})" for d, a in zip(self.dims, self.axes)]
        return f"Grid({', '.join(parts)})"


def blocks(shape: tuple[int, ...], max_points: int) -> Iterator[tuple[slice, ...]]:
    """Rectangular blocks of at most ``max_points`` points that cover an array of ``shape``,
    row by row: whole rows where they fit, else pieces of one row.

    Example:
        >>> [(r.start, r.stop, c.start, c.stop) for r, c in blocks((2, 5), 3)]
        [(0, 1, 0, 3), (0, 1, 3, 5), (1, 2, 0, 3), (1, 2, 3, 5)]
    """
    if max_points < 1:
        raise CrumpleError(f"chunk_size must be a positive number of points, got {max_points}")
    *_, n_last = shape
    cols = min(n_last, max_points)
    rows = max(1, max_points // cols)
    starts = [range(0, n, rows) for n in shape[:-1]] + [range(0, n_last, cols)]
    steps = [rows] * (len(shape) - 1) + [cols]
    for corner in itertools.product(*starts):
        yield tuple(slice(i, min(i + step, n)) for i, step, n in zip(corner, steps, shape))


def _checked_axis(values, dim: str) -> np.ndarray:
    try:
        axis = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise CrumpleError(
            f"grid axis {dim!r} must hold numbers, got {values!r:.80}; e.g. np.arange(-2, 2, 0.05)"
        ) from e
    if axis.ndim != 1 or axis.size == 0:
        raise CrumpleError(
            f"grid axis {dim!r} must be a non-empty 1-D sequence of numbers, got shape "
            f"{axis.shape}; e.g. np.arange(-2, 2, 0.05)"
        )
    if not np.all(np.isfinite(axis)):
        raise CrumpleError(f"grid axis {dim!r} holds inf or nan; give finite coordinates")
    axis = np.sort(axis)  # a surface is drawn and analysed along increasing coordinates
    repeated = axis[1:][np.diff(axis) == 0]
    if repeated.size:
        raise CrumpleError(
            f"grid axis {dim!r} holds {np.unique(repeated).tolist()[:5]} more than once; give "
            "each coordinate once, e.g. np.unique(values)"
        )
    return axis
