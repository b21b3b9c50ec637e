"""``Grid.auto``'s search: the extent of each axis at which the loss has risen by a chosen
factor over the centre, found by a few line evaluations along each direction of the plane (a
doubling search outwards, then bisection); and ``covering``, the one place a grid is widened
to hold paths. The evaluations themselves come from :class:`crumple.landscape.Landscape`,
which prepares one evaluator for all of them."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping

import numpy as np

from crumple.errors import CrumpleError

START = 0.05  # the first step along a direction, in plane coordinates
DOUBLINGS = 12  # the farthest look is START * 2**DOUBLINGS
BISECTIONS = 8  # then the crossing is within (1/2)**8 of its bracket
DIMS = ("alpha", "beta")
MARGIN = 0.05  # room left around a covered path, as a share of the axis's span


def auto_extents(loss_along: Callable[[int, np.ndarray], np.ndarray], ndim: int, rise: float):
    """``[(low, high), ...]`` per direction of a plane: where the loss first reaches ``rise``
    times its value at the centre on each side (or the farthest look, if never), with a
    sentence saying what was chosen. ``loss_along(k, ts)``: the loss at coordinates ``ts``
    along direction ``k`` (the other coordinates 0).

    Example:
        >>> extents, said = auto_extents(lambda k, ts: 1 + np.asarray(ts) ** 2, 1, 2.0)
        >>> [round(float(t), 2) for t in extents[0]], said
        ([-1.0, 1.0], 'the loss reaches 2 x its centre value (1) at alpha = -0.998 and 0.998')
    """
    _check_rise(rise)
    extents, said = [], []
    for k in range(ndim):

        def loss_at(ts, k=k):
            return loss_along(k, np.asarray(ts, dtype=float))

        centre = float(loss_at([0.0])[0])
        if not centre > 0:
            raise CrumpleError(
                f"the loss at the centre is {centre:g}; a rise by a factor needs a positive loss "
                "there. Give the grid's extent yourself, e.g. cr.Grid(np.linspace(-1, 1, 51), ...)"
            )
        target = rise * centre
        sides = [_crossing(loss_at, sign, target) for sign in (-1.0, 1.0)]
        extents.append((-sides[0][0], sides[1][0]))
        notes = [
            f"{sign * t:.3g}" + ("" if reached else " (not reached)")
            for sign, (t, reached) in zip((-1, 1), sides)
        ]
        said.append(f"{DIMS[k]} = {notes[0]} and {notes[1]}")
    sentence = f"the loss reaches {rise:g} x its centre value ({centre:.4g}) at " + ", ".join(said)
    return extents, sentence


def check_search(rise: float, num: int) -> None:
    """Refuse a ``rise`` or ``num`` that ``Grid.auto`` cannot use, before any evaluation.

    Example:
        >>> check_search(2.0, 2.5)
        Traceback (most recent call last):
        crumple.errors.CrumpleError: num must be a whole number >= 2 (points per axis), got 2.5
    """
    _check_rise(rise)
    if not (isinstance(num, numbers.Integral) and not isinstance(num, bool) and num >= 2):
        raise CrumpleError(f"num must be a whole number >= 2 (points per axis), got {num!r}")


def _check_rise(rise) -> None:
    if not (isinstance(rise, (int, float)) and not isinstance(rise, bool) and rise > 1):
        raise CrumpleError(
            f"rise must be a number > 1 (the loss's factor at the edges), got {rise!r}"
        )


def _crossing(loss_at, sign: float, target: float) -> tuple[float, bool]:
    """The distance along ``sign`` at which the loss first reaches ``target``: doubling
    until it does (all steps in one line call), then bisection."""
    steps = START * 2.0 ** np.arange(DOUBLINGS + 1)
    values = loss_at(sign * steps)
    above = np.flatnonzero(~(values < target))  # nan counts as past the target
    if not len(above):
        return float(steps[-1]), False
    j = int(above[0])
    low, high = (0.0 if j == 0 else steps[j - 1]), steps[j]
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        if loss_at([sign * middle])[0] < target:
            low = middle
        else:
            high = middle
    return float((low + high) / 2), True


def covering(extents, cover, margin: float = MARGIN) -> tuple[list[tuple[float, float]], str]:
    """``extents`` widened to hold every point of the paths in ``cover`` (a dataset from
    :func:`crumple.project`, a dict or list of them, or None), with ``margin`` times each widened
    axis's span as room; and a sentence saying where it widened them ("" if nowhere).

    Example:
        >>> import xarray as xr
        >>> path = xr.Dataset({"alpha": ("step", [0.0, 3.0])})
        >>> covering([(-1.0, 1.0)], path)
        ([(-1.0, 3.2)], '; widened to hold the path: alpha to -1 .. 3.2')
    """
    paths = paths_of(cover, len(extents))
    out, said = [], []
    for k, (low, high) in enumerate(extents):
        dim = DIMS[k]
        values = np.concatenate([np.asarray(p[dim], dtype=float).ravel() for p in paths] or [[]])
        values = values[np.isfinite(values)]
        if len(values) and (values.min() < low or values.max() > high):
            span = max(high, values.max()) - min(low, values.min())
            low = min(low, values.min() - margin * span)
            high = max(high, values.max() + margin * span)
            said.append(f"{dim} to {low:.3g} .. {high:.3g}")
        out.append((float(low), float(high)))
    return out, ("; widened to hold the path: " + ", ".join(said)) if said else ""


def paths_of(cover, ndim: int) -> list:
    """The paths in ``cover`` (a dataset from :func:`crumple.project`, a dict or list of
    them, or None) as a list, each with the plane's ``ndim`` coordinates; else a clear error.

    Example:
        >>> import xarray as xr
        >>> len(paths_of({"SGD": xr.Dataset({"alpha": ("step", [0.0])})}, 1))
        1
    """
    import xarray as xr

    if cover is None:
        return []
    if isinstance(cover, xr.Dataset):
        items = [cover]
    elif isinstance(cover, Mapping):
        items = list(cover.values())
    elif isinstance(cover, (list, tuple)):
        items = list(cover)
    else:
        items = [cover]
    dims = DIMS[:ndim]
    for item in items:
        if not (isinstance(item, xr.Dataset) and all(d in item for d in dims)):
            raise CrumpleError(
                f"cover must hold paths from crumple.project (xarray Datasets with "
                f"{' and '.join(dims)}), as one, a dict or a list of them, or None; got "
                f"{type(item).__name__}; e.g. cover=cr.project(trajectory, plane, ...)"
            )
    return items
