"""Per-point quantities computed beside the functions' values (the curvature map is one).

An extra is a small picklable spec: its ``key`` (in the run's fingerprint), the ``names``
and ``long_names`` of the variables it adds, its JSON-able ``options`` (fingerprinted, so a
resumed run was made with the same), and ``bind(task, settings)``, which gives the callable
that evaluates a block of points for an evaluator's prepared task and settings and says
what it found (``facts()``, for ``ds.attrs``). The engine, the run driver, the result's
schema and Dask workers see only this protocol, so a new quantity is one class and none of
them changes.

Example:
    >>> import torch
    >>> class Norm:  # the weights' norm at each point
    ...     key, names, long_names = "norm", ("norm",), {"norm": "weight norm"}
    ...     def options(self): return {}
    ...     def bind(self, task, settings): return NormAt()
    >>> class NormAt:
    ...     def __call__(self, points):
    ...         out = torch.empty(points.shape, dtype=torch.float64)
    ...         for index, args in points.each():
    ...             w = points.params_at(*args)
    ...             out[index] = sum(float(t.square().sum()) for t in w.values()) ** 0.5
    ...         return {"norm": out}
    ...     def facts(self): return {}
    >>> isinstance(Norm(), Extra)
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from crumple.checks import check_name
from crumple.errors import CrumpleError


@runtime_checkable
class Bound(Protocol):
    """An extra bound to a prepared task: values at a block of points, and what it found."""

    def __call__(self, points) -> dict[str, Tensor]: ...

    def facts(self) -> dict[str, Any]: ...


@runtime_checkable
class Extra(Protocol):
    """A per-point quantity: a picklable spec that binds to an evaluator's task."""

    key: str
    names: tuple[str, ...]
    long_names: Mapping[str, str]

    def options(self) -> dict[str, Any]: ...

    def bind(self, task, settings) -> Bound: ...


def long_names(extras: Sequence[Extra]) -> dict[str, str]:
    """The long name of every variable the extras add."""
    return {name: long for extra in extras for name, long in extra.long_names.items()}


def check_variables(functions: Iterable[str], extras: Sequence[Extra]) -> None:
    """Refuse an extra's variable name that a run cannot store
    (:func:`crumple.checks.check_name`) or that a function (the loss, a metric) or another
    extra already gives.

    Example:
        >>> class Twin:
        ...     key, names, long_names = "twin", ("accuracy",), {}
        >>> check_variables(["loss", "accuracy"], [Twin()])
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: the twin extra's variable 'accuracy' is also ...
    """
    given = {name: "a function's (the loss or a metric)" for name in functions}
    for extra in extras:
        for name in extra.names:
            what = f"the {extra.key} extra's variable"
            check_name(name, what)
            if name in given:
                raise CrumpleError(
                    f"{what} {name!r} is also {given[name]} variable; rename the metric, or "
                    "leave one of the two out"
                )
            given[name] = f"the {extra.key} extra's"
