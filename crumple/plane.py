"""A line or plane through weight space: an origin and one or two directions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from crumple.errors import CrumpleError
from crumple.params import Params, cast, parameters_of, parse_entry


@dataclass(frozen=True)
class Plane:
    """The weights ``origin + a * directions[0] (+ b * directions[1])``.

    Attributes:
        origin: the weights at coordinate 0, one tensor per parameter name.
        directions: one or two dicts with the same names and shapes as ``origin``.
        attrs: facts about the plane: ``kind`` and ``axis_names`` at least.

    Example:
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> plane = Plane.axes(net, "weight")
        >>> plane.at(0.5)["weight"]
        tensor([[0.5000]])
    """

    origin: Params
    directions: tuple[Params, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    touched: tuple[frozenset[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.directions) not in (1, 2):
            raise CrumpleError(
                f"a plane has 1 or 2 directions, got {len(self.directions)}; "
                "use one for a line, two for a plane"
            )
        for k, direction in enumerate(self.directions):
            if direction.keys() != self.origin.keys() or any(
                direction[n].shape != self.origin[n].shape for n in self.origin
            ):
                raise CrumpleError(
                    f"direction {k} must have the origin's parameter names and shapes"
                )
        # the names each direction moves; the others stay shared along that axis
        touched = tuple(
            frozenset(n for n, d in direction.items() if bool(d.any()))
            for direction in self.directions
        )
        object.__setattr__(self, "touched", touched)

    @property
    def ndim(self) -> int:
        """1 for a line, 2 for a plane."""
        return len(self.directions)

    @classmethod
    def axes(cls, model: nn.Module, name_a: str, name_b: str | None = None) -> Plane:
        """The plane whose coordinates are two weights of the model themselves.

        Every other weight keeps the model's value. ``name_a`` and ``name_b`` name a
        parameter with one entry, or one entry of a larger one as ``"name[i, j]"``.

        Example:
            >>> net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
            >>> Plane.axes(net, "0.weight", "1.weight").attrs["axis_names"]
            ('0.weight', '1.weight')
        """
        origin = parameters_of(model)
        specs = (name_a,) if name_b is None else (name_a, name_b)
        entries = [parse_entry(spec, origin) for spec in specs]
        if len(entries) == 2 and entries[0] == entries[1]:
            raise CrumpleError(f"{name_a!r} and {name_b!r} are the same entry; name two")
        directions = []
        for name, index in entries:
            origin[name][index] = 0
            direction = {n: torch.zeros_like(p) for n, p in origin.items()}
            direction[name][index] = 1
            directions.append(direction)
        labels = tuple(spec.strip() for spec in specs)
        return cls(origin, tuple(directions), {"kind": "axes", "axis_names": labels})

    def at(self, *coords: Tensor | float) -> Params:
        """The weights at the given coordinates (works under ``torch.func.vmap``).

        Parameters a direction does not touch stay the origin's tensors, so under nested
        vmap everything computed from them is shared across that axis.

        Example:
            >>> net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
            >>> w = Plane.axes(net, "0.weight", "1.weight").at(0.5, -2.0)
            >>> float(w["0.weight"]), float(w["1.weight"])
            (0.5, -2.0)
        """
        if len(coords) != self.ndim:
            raise CrumpleError(f"a {self.ndim}-D plane needs {self.ndim} coordinates")
        params = {}
        for name, value in self.origin.items():
            for c, direction, touched in zip(coords, self.directions, self.touched):
                if name in touched:
                    value = value + c * direction[name]
            params[name] = value
        return params

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """A copy with floating-point tensors moved to ``device`` and cast to ``dtype``.

        Example:
            >>> plane = Plane.axes(torch.nn.Linear(1, 1), "weight")
            >>> plane.to(dtype=torch.float64).origin["bias"].dtype
            torch.float64
        """

        def move(params: Params) -> Params:
            return {n: cast(t, device, dtype) for n, t in params.items()}

        return Plane(move(self.origin), tuple(move(d) for d in self.directions), dict(self.attrs))
