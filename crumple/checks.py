"""What every public entry point checks before any work: the model, the loss and metrics,
the plane's fit to the model, and the memory a grid's results will take."""

from __future__ import annotations

import numbers
import os
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from crumple.errors import CrumpleError, CrumpleTypeError
from crumple.grid import Grid
from crumple.names import RESERVED
from crumple.plane import Plane

MEMORY_SHARE = 0.5  # of the machine's memory that a grid's result arrays may take


def check_model(model: Any) -> nn.Module:
    """``model`` if it is a ``torch.nn.Module``, else a clear refusal.

    Example:
        >>> check_model(len)
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleTypeError: model must be a torch.nn.Module, got builtin_function_or_method len; wrap a function in a Module whose forward calls it
    """  # noqa: E501
    if not isinstance(model, nn.Module):
        name = getattr(model, "__name__", "")
        raise CrumpleTypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__} {name}".rstrip()
            + "; wrap a function in a Module whose forward calls it"
        )
    return model


def named_functions(
    loss_fn: Callable | str, metrics: Mapping[str, Callable] | None = None
) -> dict[str, Callable | str]:
    """``{"loss": loss_fn, **metrics}``, each a function (the loss may be ``"model"``: the
    loss the model computes); a metric may not be called "loss".

    Example:
        >>> list(named_functions(abs, {"acc": abs}))
        ['loss', 'acc']
    """
    if metrics is not None and not isinstance(metrics, Mapping):
        raise CrumpleTypeError(
            f"metrics must be a dict of name -> fn(pred, y), got {type(metrics).__name__}; "
            "e.g. metrics={'accuracy': accuracy}"
        )
    if metrics and "loss" in metrics:
        raise CrumpleError(
            "metrics holds a function named 'loss', which would replace the loss; give the "
            "loss as loss_fn and name the metric otherwise (e.g. 'loss2')"
        )
    for name in metrics or {}:
        check_name(name, "the metric named")
    fns = {"loss": loss_fn, **(metrics or {})}
    for name, fn in fns.items():
        if name == "loss" and isinstance(fn, str) and fn == "model":
            continue  # the loss the model computes (crumple.losses)
        if not callable(fn):
            raise CrumpleTypeError(
                f"{name} must be a function fn(pred, y) -> batch mean, got {fn!r}"
                + ("; or 'model' for the loss the model computes" if name == "loss" else "")
            )
    return fns


def check_name(name: Any, what: str) -> str:
    """``name`` if a metric, a path or an extra's variable may take it (``what`` says which,
    e.g. ``"the metric named"``, ``"--metric"``), else a refusal: it must be a non-empty
    string that is none of crumple's own names (:data:`crumple.names.RESERVED`) and that a
    run folder can store as one name (no ``/`` or ``\\``, no leading ``.``, no control
    character, not ``zarr.json``).

    Example:
        >>> check_name("accuracy", "the metric named")
        'accuracy'
        >>> check_name("../x", "the path named")
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: the path named '../x' holds a path separator; ...
    """
    if not isinstance(name, str):
        raise CrumpleTypeError(
            f"{what} {name!r} is not a string ({type(name).__name__}); name it with one"
        )
    if name in RESERVED:
        why = "is one of crumple's own names"
    elif not name:
        why = "is empty"
    elif "/" in name or "\\" in name:
        why = "holds a path separator"
    elif name.startswith("."):
        why = "starts with '.'"
    elif name == "zarr.json":
        why = "is the name of the run folder's own metadata files"
    elif any(unicodedata.category(c) == "Cc" for c in name):
        why = "holds a control character"
    else:
        return name
    fixed = "".join("_" if c in "/\\." or unicodedata.category(c) == "Cc" else c for c in name)
    fixed = fixed.strip("_")
    fixed = fixed if fixed and fixed not in RESERVED else f"my_{fixed or 'name'}"
    raise CrumpleError(
        f"{what} {name!r} {why}; a name may not be empty, start with '.', hold '/', '\\' or "
        f"control characters, or be one of crumple's own names ({', '.join(RESERVED)}): "
        f"rename it, e.g. {fixed!r}"
    )


def check_plane_and_grid(plane: Any, grid: Any = None) -> None:
    """Refuse a ``plane`` that is not a :class:`Plane`, a ``grid`` that is not a ``Grid``."""
    if not isinstance(plane, Plane):
        raise CrumpleTypeError(
            f"plane must be a crumple.Plane, got {type(plane).__name__}; build one with "
            "Plane.random(model), Plane.axes(model, ...), Plane.between(...) or Plane.pca(...)"
        )
    if grid is not None and not isinstance(grid, Grid):
        raise CrumpleTypeError(
            f"grid must be a crumple.Grid, got {type(grid).__name__}; e.g. "
            "cr.Grid(np.linspace(-1, 1, 21), np.linspace(-1, 1, 21))"
        )


def check_fits(model: nn.Module, plane: Plane) -> None:
    """Refuse a plane whose parameters are not the model's (names and shapes)."""
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    plane_shapes = {n: tuple(t.shape) for n, t in plane.origin.items()}
    if shapes != plane_shapes:
        missing = sorted(shapes.keys() - plane_shapes.keys())
        extra = sorted(plane_shapes.keys() - shapes.keys())
        resized = sorted(
            n for n in shapes.keys() & plane_shapes.keys() if shapes[n] != plane_shapes[n]
        )
        raise CrumpleError(
            "the plane was not made for this model: "
            f"missing {missing}, unknown {extra}, different shapes {resized}; "
            "build the plane from the same model (e.g. Plane.axes(model, ...))"
        )
    points = {"origin (the model's weights)": plane.origin}
    points |= {f"direction {k + 1}": d for k, d in enumerate(plane.directions)}
    for label, point in points.items():
        bad = [n for n, t in point.items() if t.is_floating_point() and not t.isfinite().all()]
        if bad:
            raise CrumpleError(
                f"the plane's {label} holds nan or inf in {bad[:8]}: every point of the surface "
                "would be nan; load finite weights (a model or checkpoint saved before training "
                "diverged)"
            )


def check_result_size(points: int, names: int) -> None:
    """Refuse a grid whose float64 results (one array per function, plus the store's copy)
    would take more than ``MEMORY_SHARE`` of the machine's memory.

    Example:
        >>> check_result_size(10**10, 1)
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: a grid of 10,000,000,000 points needs 149 GiB ...
    """
    needed = 2 * 8 * points * names
    available = machine_memory()
    if available and needed > MEMORY_SHARE * available:
        raise CrumpleError(
            f"a grid of {points:,} points needs {needed / 2**30:.3g} GiB for its results "
            f"({names} function(s), float64), more than half of this machine's "
            f"{available / 2**30:.3g} GiB; use fewer points (a coarser or smaller grid)"
        )


def machine_memory() -> int | None:
    """Bytes of physical memory, or ``None`` where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def whole_number(
    name: str, value: Any, least: int = 0, most: int | None = None, why: str = ""
) -> int:
    """``value`` as an ``int`` (NumPy integers too) from ``least`` to ``most``, else a clear
    refusal naming ``name`` (and ``why``, what it counts).

    Example:
        >>> import numpy as np
        >>> whole_number("probes", np.int64(3), least=2)
        3
    """
    fits = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not fits or value < least or (most is not None and value > most):
        span = f"from {least} to {most}" if most is not None else f">= {least}"
        raise CrumpleError(f"{name} must be a whole number {span}{why}, got {value!r}")
    return int(value)


def check_numbers(attrs: Mapping[str, Any], names: tuple[str, ...], prefixes=()) -> None:
    """A ``ValueError`` naming the first of ``attrs`` (read back from a store) that should
    hold a number (or ``None``), or a list of numbers, and does not: those in ``names`` and
    those whose name starts with one of ``prefixes``.

    Example:
        >>> check_numbers({"seconds": 1.5, "plane_eigenvalues": [2.0, 1.0]},
        ...               ("seconds", "plane_eigenvalues"))
        >>> check_numbers({"trace": "7.5"}, ("trace",))
        Traceback (most recent call last):
        ...
        ValueError: its attribute 'trace' is '7.5', not a number
    """

    def number(v: Any) -> bool:  # None: not known (a random plane without a seed)
        return v is None or isinstance(v, numbers.Real) and not isinstance(v, bool)

    for key, value in attrs.items():
        listed = isinstance(value, list) and all(map(number, value))
        if (key in names or key.startswith(tuple(prefixes))) and not (number(value) or listed):
            raise ValueError(f"its attribute {key!r} is {value!r:.80}, not a number")
