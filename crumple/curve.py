"""Curves between two models in weight space: the straight line, a quadratic Bezier curve
and a polygonal chain through one bend (Garipov et al. 2018). Each lies in the plane through
``a``, ``b`` and the bend (:meth:`Plane.between <crumple.plane.Plane.between>`: ``a`` at
``(0, 0)``, ``b`` at ``(1, 0)``, the bend at ``(0, 1)``), so a point of a curve is a point
of that plane and is evaluated as one (:func:`crumple.path_loss`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from crumple.errors import CrumpleError
from crumple.params import Params
from crumple.plane import Plane

KINDS = ("line", "bezier", "polychain")


@dataclass(frozen=True)
class Curve:
    """A curve from ``a`` (``t = 0``) to ``b`` (``t = 1``) on ``plane`` (origin ``a``,
    directions ``b - a`` and, but for a line, ``bend - a``).

    - ``line``: ``(1 - t) a + t b``;
    - ``bezier``: ``(1 - t)^2 a + 2 t (1 - t) bend + t^2 b``, the quadratic Bezier curve;
    - ``polychain``: the line from ``a`` to the bend (``t <= 1/2``), then to ``b``.

    Example:
        >>> a, b = {"w": torch.zeros(2)}, {"w": torch.tensor([2.0, 0.0])}
        >>> curve = Curve.bezier(a, b, bend={"w": torch.tensor([1.0, 2.0])})
        >>> curve.at(0.5)["w"].tolist()  # a / 4 + bend / 2 + b / 4
        [1.0, 1.0]
        >>> curve.coordinates([0.0, 0.5, 1.0]).tolist()  # on the plane through a, b, bend
        [[0.0, 0.0], [0.25, 0.5], [1.0, 0.0]]
    """

    kind: str
    plane: Plane
    history: Any = field(default=None, compare=False)  # the training of its bend (connect)

    @classmethod
    def line(cls, a: nn.Module | Params, b: nn.Module | Params, *, model=None) -> Curve:
        """The straight line from ``a`` to ``b`` (models, or dicts of their weights, as
        :meth:`Plane.between <crumple.plane.Plane.between>` takes them).

        Example:
            >>> Curve.line({"w": torch.zeros(1)}, {"w": torch.ones(1)}).at(0.25)
            {'w': tensor([0.2500])}
        """
        return cls("line", Plane.between(a, b, model=model))

    @classmethod
    def bezier(cls, a, b, bend=None, *, model=None) -> Curve:
        """The quadratic Bezier curve from ``a`` to ``b`` pulled towards ``bend`` (by
        default the midpoint of ``a`` and ``b``: the straight line, to be trained by
        :func:`crumple.connect`).

        Example:
            >>> a, b = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
            >>> Curve.bezier(a, b).at(0.25)["w"].tolist()  # no bend yet: the line
            [0.25]
        """
        return cls("bezier", _through(a, b, bend, model, "bezier"))

    @classmethod
    def polychain(cls, a, b, bend=None, *, model=None) -> Curve:
        """The polygonal chain from ``a`` through ``bend`` to ``b`` (the bend at
        ``t = 1/2``; by default the midpoint).

        Example:
            >>> a, b = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
            >>> Curve.polychain(a, b, bend={"w": torch.tensor([3.0])}).at(0.5)["w"].tolist()
            [3.0]
        """
        return cls("polychain", _through(a, b, bend, model, "polychain"))

    @property
    def bend(self) -> Params | None:
        """The bend's weights (``None`` for a line)."""
        if len(self.plane.directions) < 2:
            return None
        return {n: o + self.plane.directions[1][n] for n, o in self.plane.origin.items()}

    def coordinates(self, t: Any) -> np.ndarray:
        """The plane coordinates of the curve at ``t`` (each in ``[0, 1]``): an array of
        shape ``(len(t), 1)`` for a line, ``(len(t), 2)`` otherwise.

        Example:
            >>> chain = Curve.polychain({"w": torch.zeros(2)}, {"w": torch.ones(2)},
            ...                         bend={"w": torch.tensor([1.0, -1.0])})
            >>> chain.coordinates([0.25, 0.5, 0.75]).tolist()  # to the bend, then to b
            [[0.0, 0.5], [0.0, 1.0], [0.5, 0.5]]
        """
        t = torch.as_tensor(check_t(t))
        return torch.stack(plane_coordinates(self.kind, t), dim=1).numpy()

    def at(self, t: float) -> Params:
        """The weights at ``t``.

        Example:
            >>> Curve.line({"w": torch.zeros(2)}, {"w": torch.ones(2)}).at(0.5)
            {'w': tensor([0.5000, 0.5000])}
        """
        return self.plane.at(*map(float, self.coordinates([t])[0]))

    def __repr__(self) -> str:
        """The kind and the parameters it spans.

        Example:
            >>> Curve.line({"w": torch.zeros(3)}, {"w": torch.ones(3)})
            Curve(line, 3 parameters)
        """
        size = sum(t.numel() for t in self.plane.origin.values())
        return f"Curve({self.kind}, {size:,} parameters)"


def plane_coordinates(kind: str, t: torch.Tensor) -> list[torch.Tensor]:
    """The plane coordinates of a curve of ``kind`` at ``t`` (a tensor), one tensor per axis:
    the one place a curve's shape is written (:meth:`Curve.coordinates`, the run driver).

    Example:
        >>> [c.tolist() for c in plane_coordinates("bezier", torch.tensor([0.5]))]
        [[0.25], [0.5]]
    """
    if kind == "line":
        return [t]
    if kind == "bezier":
        return [t * t, 2 * t * (1 - t)]
    first = t <= 0.5  # polychain: a -> bend, then bend -> b
    zero = torch.zeros_like(t)
    return [torch.where(first, zero, 2 * t - 1), torch.where(first, 2 * t, 2 - 2 * t)]


def check_t(t: Any) -> np.ndarray:
    """``t`` as a 1-D float64 array of values in ``[0, 1]``, or a refusal that says so.

    Example:
        >>> check_t([0, 0.5, 1]).tolist()
        [0.0, 0.5, 1.0]
    """
    try:
        values = np.asarray(t, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise CrumpleError(f"t must be numbers from 0 to 1, got {t!r}") from None
    if values.size == 0 or not np.all((values >= 0) & (values <= 1)):  # nan fails too
        raise CrumpleError(
            f"t must be numbers from 0 (a) to 1 (b), e.g. numpy.linspace(0, 1, 41); got "
            f"{np.asarray(t).reshape(-1)[:8].tolist()}"
        )
    return values


def _through(a, b, bend, model, kind: str) -> Plane:
    """The plane through ``a``, ``b`` and ``bend`` (by default their midpoint), each read
    and checked as :meth:`Plane.between <crumple.plane.Plane.between>` reads them; the
    bend may lie on the line (a curve not yet trained is the line itself)."""
    line = Plane.between(a, b, model=model)
    to_b = line.directions[0]
    if bend is None:
        to_bend = {n: 0.5 * d for n, d in to_b.items()}
    else:
        reference = model or next((m for m in (a, b) if isinstance(m, nn.Module)), None)
        to_bend = Plane.between(line.origin, bend, model=reference).directions[0]
    attrs = {**line.attrs, "axis_names": ("a -> b", "a -> bend"), "third": "bend"}
    return Plane(line.origin, (to_b, to_bend), attrs)
