"""Curvature at every point of a surface (``cr.surface(..., curvature=True)``): the largest
and smallest Hessian eigenvalues of the mean loss there, and their ratio, as in Li et al.
(2018)'s maps of convexity. Each point's eigenvalues come from Lanczos on Hessian-vector
products at that point's weights, so a map costs tens of products per point."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from crumple.errors import CrumpleError
from crumple.hessian.operator import Hessian
from crumple.hessian.spectrum import default_tol, eigenpairs

NAMES = ("lambda_max", "lambda_min", "lambda_ratio")
LONG_NAMES = {
    "lambda_max": "largest Hessian eigenvalue",
    "lambda_min": "smallest Hessian eigenvalue",
    "lambda_ratio": "|lambda_min / lambda_max|",
}


def curvature_options(curvature: Any) -> dict | None:
    """``curvature=`` of :func:`crumple.surface` as plain options (``None``: off):
    ``True`` or ``{"tol": ...}``.

    Example:
        >>> curvature_options(True), curvature_options(False), curvature_options({"tol": 1e-3})
        ({'tol': None}, None, {'tol': 0.001})
    """
    if curvature is None or curvature is False:
        return None
    if curvature is True:
        return {"tol": None}
    if isinstance(curvature, dict) and set(curvature) <= {"tol"}:
        tol = curvature.get("tol")
        if tol is None or (isinstance(tol, float) and 0 < tol < 1):
            return {"tol": tol}
    raise CrumpleError(
        f"curvature must be True, False or {{'tol': a float between 0 and 1}} (Lanczos's "
        f"relative accuracy at each point), got {curvature!r}"
    )


class CurvatureMap:
    """The extreme eigenvalues at each of a block of points, for an evaluator's task."""

    def __init__(self, task, options: dict) -> None:
        self.hessian = Hessian(
            task.model, task.fns["loss"], task.data, dtype=task.dtype, device=task.device
        )
        self.tol = options.get("tol") or default_tol(self.hessian)
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
