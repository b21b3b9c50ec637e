"""How loss values are drawn: the one place that decides the colour and z range of every
figure (plotly and static), what is clipped, and what the figure and page say about it.

The cap is the largest finite value within Tukey's far fence ``q75 + 3 (q75 - q25)`` (of the
log10 values with ``log=True``), where a box plot's upper whisker ends. Up to a quarter of
the grid can hold huge values (a loss of 1e36 where training diverges) before they move the
cap; the previous cap, ``q95 + 3 (q95 - q5)``, gave way at 5%. When more than half the values
are equal (a plateau), the wider quantile pairs (10, 90) and (5, 95) are tried in turn. The
floor is the smallest finite value (positive, with ``log``): the bottom of a basin is what a
reader looks for, and is never clipped. The data is never changed: nan is drawn as a gap,
inf and values beyond the cap at the cap (with ``log``, values <= 0 at the floor), marked on
the figure and counted in its note.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from crumple.errors import CrumpleError

FENCE = 3.0  # interquartile ranges beyond the quartiles (Tukey's "far out")
QUANTILE_PAIRS = ((25, 75), (10, 90), (5, 95))


def check_zmax(zmax: object, log: bool, option: str = "zmax") -> float | None:
    """``zmax`` as a float, or a :class:`CrumpleError` saying why it cannot be drawn
    (naming the caller's ``option``).

    Example:
        >>> check_zmax(3, log=False)
        3.0
        >>> try:
        ...     check_zmax(-1.0, log=True)
        ... except CrumpleError as e:
        ...     print(str(e)[:63])
        zmax=-1.0 cannot be drawn on a log scale: log=True needs a zmax
    """
    if zmax is None:
        return None
    fix = "or leave it out (None) for a cap from the finite values' spread"
    if isinstance(zmax, bool) or not isinstance(zmax, Real):
        raise CrumpleError(
            f"{option}={zmax!r} is not a number; give the loss value to cap the drawing at "
            f"(e.g. {option}=10.0), {fix}"
        )
    if not math.isfinite(zmax):
        raise CrumpleError(f"{option}={zmax!r} is not finite; give a finite loss value, {fix}")
    if log and zmax <= 0:
        raise CrumpleError(
            f"{option}={zmax!r} cannot be drawn on a log scale: log=True needs a {option} above 0; "
            f"give a positive {option}, {fix}"
        )
    return float(zmax)


def fences(values: np.ndarray) -> tuple[float, float]:
    """Tukey's far fences of finite ``values``: 3 spreads beyond the first quantile pair
    (25-75, 10-90, 5-95) with a spread; no bounds when none has one. The values inside
    reach from a box plot's lower whisker to its upper one.

    Example:
        >>> bowl = np.arange(100.0)
        >>> fences(np.concatenate([bowl, [1e36] * 10]))
        (-136.25, 245.25)
    """
    for lo_q, hi_q in QUANTILE_PAIRS:
        lo, hi = np.percentile(values, [lo_q, hi_q])
        if hi > lo:
            return float(lo - FENCE * (hi - lo)), float(hi + FENCE * (hi - lo))
    return -math.inf, math.inf


class Scale:
    """How the values ``z`` of a surface are drawn: optionally log10, between the smallest
    value and a robust cap (:func:`fences`; ``zmax`` sets the cap), nan left as gaps.

    Example:
        >>> scale = Scale(np.array([1.0, 2.0, np.inf, np.nan]), zmax=1.5)
        >>> scale(np.array([1.0, 2.0, np.inf, np.nan])).tolist()
        [1.0, 1.5, 1.5, nan]
        >>> scale.clipped([1.0, 2.0, np.nan]).tolist(), scale.note()
        ([False, True, False], '2 of 4 values above 1.5 drawn at 1.5 (1 inf); 1 nan left as gaps')
        >>> Scale(np.full(3, np.nan)).note()
        'no finite loss value: nothing to draw (3 nan, 0 inf)'
    """

    def __init__(
        self, z, log: bool = False, zmax: float | None = None, option: str = "zmax"
    ) -> None:
        zmax = check_zmax(zmax, log, option)
        self.option = option
        z = np.asarray(z, dtype=np.float64)
        self.log = bool(log)
        self.size = z.size
        self.nan = int(np.isnan(z).sum())
        self.posinf, self.neginf = int(np.isposinf(z).sum()), int(np.isneginf(z).sum())
        finite = z[np.isfinite(z)]
        self.nonpositive = int((finite <= 0).sum()) if log else 0
        usable = finite[finite > 0] if log else finite
        self.empty = usable.size == 0
        self.floor = self.cap = math.nan
        self.above = self.below = 0
        if self.empty:
            return
        drawn = np.log10(usable) if log else usable
        high = fences(drawn)[1]
        self.floor, self.cap = float(usable.min()), float(usable[drawn <= high].max())
        if zmax is not None:
            if zmax < float(usable.min()):
                raise CrumpleError(self._below_minimum(zmax, float(usable.min())))
            self.cap = zmax
        self.above = int((z > self.cap).sum())  # +inf included
        self.below = int((z < self.floor).sum())  # -inf and, with log, values <= 0 included

    def _below_minimum(self, zmax: float, smallest: float) -> str:
        what = "smallest positive loss" if self.log else "smallest loss"
        return (
            f"{self.option}={zmax!r} is below the surface's {what} {smallest:.5g}: nothing "
            f"would be visible; give a {self.option} of at least {smallest:.5g}, or leave it "
            "out (None) for a cap from the finite values' spread"
        )

    def clipped(self, z) -> np.ndarray:
        """Which values are drawn at the cap or the floor (not nan: nan is a gap)."""
        z = np.asarray(z, dtype=np.float64)
        if self.empty:
            return np.zeros(z.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            return (z > self.cap) | (z < self.floor)

    def __call__(self, z) -> np.ndarray:
        """The drawn values: clipped to [floor, cap], log10 with ``log``, nan kept."""
        z = np.asarray(z, dtype=np.float64)
        if self.empty:
            return np.full(z.shape, np.nan)
        out = np.clip(z, self.floor, self.cap)  # with log, values <= 0 go to the floor
        return np.log10(out) if self.log else out

    def range(self) -> tuple[float, float] | None:
        """The drawn floor and cap (the colour range), or None when nothing is drawn."""
        return None if self.empty else (float(self(self.floor)), float(self(self.cap)))

    def title(self, label: str) -> str:
        """The axis title of the drawn values: ``label``, or ``log10 label``."""
        return f"log10 {label}" if self.log else label

    def note(self) -> str | None:
        """What the figure does not show as it is: nothing drawn, values clipped, nan gaps;
        None when every value is drawn as it is."""
        if self.empty:
            counts = f"{self.nan} nan, {self.posinf + self.neginf} inf"
            if self.log and self.nonpositive:
                return (
                    "no positive finite loss value: nothing to draw on a log scale "
                    f"({self.nonpositive} at or below 0, {counts})"
                )
            return f"no finite loss value: nothing to draw ({counts})"
        parts = []
        for n, side, at, extra in (
            (self.above, "above", self.cap, self.posinf and f"{self.posinf} inf"),
            (self.below, "below", self.floor, self._below_extra()),
        ):
            if n:
                detail = f" ({extra})" if extra else ""
                parts.append(f"{n} of {self.size} values {side} {at:.4g} drawn at {at:.4g}{detail}")
        if self.nan:
            parts.append(f"{self.nan} nan left as gaps")
        return "; ".join(parts) or None

    def _below_extra(self) -> str:
        extra = [f"{self.neginf} -inf"] if self.neginf else []
        if self.nonpositive:
            extra.append(f"{self.nonpositive} at or below 0, which log10 cannot draw")
        return ", ".join(extra)
