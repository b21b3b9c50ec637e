"""What a block of points is: ``params_at(*args)`` with each argument mapped along a level
(arguments on the same level are zipped, each level is one axis of the result)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.utils._pytree import tree_map

from crumple.curve import plane_coordinates
from crumple.params import Params
from crumple.plane import Plane


@dataclass(frozen=True)
class Points:
    """Points of weight space to evaluate together.

    Attributes:
        params_at: maps one point's arguments to its weights.
        args: per argument, a tensor (or a dict of tensors) with one entry per point
            along its level.
        levels: the axis of the result each argument runs along.
        plane: set when ``params_at`` is ``plane.at``: the layer expansion and the loop's
            shared rows need the plane.

    Example:
        >>> import torch
        >>> plane = Plane.axes(torch.nn.Linear(1, 1), "weight", "bias")
        >>> Points.grid(plane, [torch.zeros(3), torch.zeros(2)]).shape
        (3, 2)
    """

    params_at: Callable[..., Params]
    args: tuple
    levels: tuple[int, ...]
    plane: Plane | None = None

    @classmethod
    def grid(cls, plane: Plane, axes: Sequence[Tensor]) -> Points:
        """The product grid of the coordinate ``axes`` on ``plane``."""
        return cls(plane.at, tuple(axes), tuple(range(len(axes))), plane)

    @classmethod
    def along(cls, plane: Plane, coords: Sequence[Tensor]) -> Points:
        """Points of ``plane`` given by zipped coordinates (one tensor per axis)."""
        return cls(plane.at, tuple(coords), (0,) * len(coords), plane)

    @classmethod
    def curve(cls, plane: Plane, kind: str, t: Tensor) -> Points:
        """Points of a curve of ``kind`` on ``plane`` at ``t`` (:mod:`crumple.curve`)."""
        return cls.along(plane, plane_coordinates(kind, t))

    @classmethod
    def weights(cls, stacked: Params) -> Points:
        """Explicit weights: each tensor of ``stacked`` has one entry per point."""
        return cls(_same, (stacked,), (0,))

    @property
    def shape(self) -> tuple[int, ...]:
        shape = [0] * (max(self.levels) + 1)
        for arg, level in zip(self.args, self.levels):
            shape[level] = _length(arg)
        return tuple(shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def is_grid(self) -> bool:
        """A product grid on a 2-D plane: the loop makes each row's weights once."""
        return self.plane is not None and self.levels == (0, 1)

    def take(self, block: Sequence[slice]) -> Points:
        """The points of ``block`` (one slice per level)."""
        args = tuple(
            tree_map(lambda t, s=block[lv]: t[s], a) for a, lv in zip(self.args, self.levels)
        )
        return Points(self.params_at, args, self.levels, self.plane)

    def each(self) -> Iterator[tuple[tuple[int, ...], list[Any]]]:
        """Every point's index and arguments, coordinates as Python numbers."""
        for index in itertools.product(*map(range, self.shape)):
            yield (
                index,
                [
                    float(a[index[lv]])
                    if isinstance(a, Tensor)
                    else tree_map(lambda t, i=index[lv]: t[i], a)
                    for a, lv in zip(self.args, self.levels)
                ],
            )


def _same(weights: Params) -> Params:
    return weights


def _length(arg) -> int:
    return len(arg) if isinstance(arg, Tensor) else len(next(iter(arg.values())))
