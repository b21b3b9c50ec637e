"""Curvature at every point of a surface (``cr.surface(..., curvature=True)``): the largest
and smallest Hessian eigenvalues of the mean loss there, and their ratio, as in Li et al.
(2018)'s maps of convexity. Each point's eigenvalues come from Lanczos on Hessian-vector
products at that point's weights, so a map costs tens of products per point. The map is an
evaluation extra (:class:`Curvature`): tiled, stored, resumed and sent to Dask workers as the
loss is, without the engine knowing of it."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from crumple.errors import CrumpleError
from crumple.hessian.operator import Hessian
from crumple.hessian.spectrum import default_tol, eigenpairs
from crumple.names import CURVATURE

NAMES = tuple(CURVATURE)
LONG_NAMES = CURVATURE


@dataclass(frozen=True)
class Curvature:
    """The curvature map as an evaluation extra (:mod:`crumple.evaluation.extras`): the
    extreme eigenvalues at every point, to ``tol`` (``None``: the default for the dtype).

    Example:
        >>> Curvature.of(True), Curvature.of(False), Curvature.of({"tol": 1e-3}).options()
        (Curvature(tol=None), None, {'tol': 0.001})
    """

    tol: float | None = None
    key: ClassVar[str] = "curvature"
    names: ClassVar[tuple[str, ...]] = NAMES
    long_names: ClassVar[dict[str, str]] = LONG_NAMES

    @classmethod
    def of(cls, curvature: Any) -> Curvature | None:
        """``curvature=`` of :func:`crumple.surface` (``True``, ``False``/``None`` or
        ``{"tol": ...}``) as an extra, or ``None`` when off; else a clear error."""
        if curvature is None or curvature is False:
            return None
        if curvature is True:
            return cls()
        if isinstance(curvature, dict) and set(curvature) <= {"tol"}:
            tol = curvature.get("tol")
            if tol is None or (isinstance(tol, float) and 0 < tol < 1):
                return cls(tol)
        raise CrumpleError(
            f"curvature must be True, False or {{'tol': a float between 0 and 1}} (Lanczos's "
            f"relative accuracy at each point), got {curvature!r}"
        )

    def options(self) -> dict[str, Any]:
        """What the run's fingerprint keeps of it."""
        return {"tol": self.tol}

    def bind(self, task, settings) -> CurvatureMap:
        """The map for an evaluator's prepared task, within the run's memory budget."""
        return CurvatureMap(task, self.tol, settings.max_memory)


class CurvatureMap:
    """The extreme eigenvalues at each of a block of points, for an evaluator's task."""

    def __init__(self, task, tol: float | None = None, max_memory: int | None = None) -> None:
        self.hessian = Hessian(
            task.model,
            task.fns["loss"],
            task.data,
            dtype=task.dtype,
            device=task.device,
            max_memory=max_memory,
        )
        self.tol = tol or default_tol(self.hessian)
        self.failures = 0
        self._last: dict[tuple, dict[str, float]] = {}  # the previous call's points

    def __call__(self, points) -> dict[str, Tensor]:
        out = {name: torch.empty(points.shape, dtype=torch.float64) for name in NAMES}
        seen = {}
        for index, args in points.each():
            key = tuple(args) if all(isinstance(a, float) for a in args) else None
            values = self._last.get(key) if key is not None else None
            if values is None:
                values = self._at(points.params_at(*args))
            if key is not None:
                seen[key] = values
            for name, value in values.items():
                out[name][index] = value
        self._last = seen  # the timed first call of a run is its first tile's first block
        return out

    def facts(self) -> dict[str, Any]:
        """The accuracy asked of Lanczos, and the points it failed at (here, not on Dask
        workers)."""
        return {"curvature_tol": self.tol, "curvature_failures": self.failures}

    def _at(self, weights) -> dict[str, float]:
        hessian = self.hessian.at(weights)
        try:
            top, bottom = map(float, eigenpairs(hessian, 1, "both", self.tol, 0).eigenvalues)
        except CrumpleError as error:
            self.failures += 1
            warnings.warn(f"crumple: no curvature at a grid point, left NaN: {error}", stacklevel=2)
            top = bottom = math.nan
        ratio = abs(bottom / top) if top else math.nan
        return {"lambda_max": top, "lambda_min": bottom, "lambda_ratio": ratio}
