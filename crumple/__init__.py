"""crumple: loss landscapes of PyTorch models in weight space, with the optimizer's path.

The public names are imported when first used (PEP 562), so ``import crumple`` and
``crumple --help`` do not import torch, xarray or plotly until something needs them.

Example:
    >>> import crumple as cr
    >>> sorted(cr.__all__)[:3]
    ['CrumpleError', 'Curve', 'Grid']
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from crumple.errors import CrumpleError
from crumple.version import __version__

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from crumple import hessian, plot, reference
    from crumple.alignment import align
    from crumple.connectivity import connect, path_loss
    from crumple.curve import Curve
    from crumple.grid import Grid
    from crumple.landscape import project
    from crumple.plane import Plane
    from crumple.run.store import open_run
    from crumple.run.store import open_run as open  # noqa: A001
    from crumple.spread import spread
    from crumple.surface import line, surface
    from crumple.trajectory import Recorder, Trajectory

__all__ = [
    # building blocks
    "Plane",
    "Grid",
    # evaluation
    "surface",
    "line",
    "spread",
    "reference",
    # curvature
    "hessian",
    # trajectories
    "Recorder",
    "Trajectory",
    "project",
    # two models
    "align",
    "Curve",
    "path_loss",
    "connect",
    # runs on disk
    "open",
    "open_run",
    # figures
    "plot",
    # errors
    "CrumpleError",
    "__version__",
]

# each lazy public name: the module that defines it, and its name there (None: the module)
_LAZY: dict[str, tuple[str, str | None]] = {
    "Plane": ("crumple.plane", "Plane"),
    "Grid": ("crumple.grid", "Grid"),
    "surface": ("crumple.surface", "surface"),
    "line": ("crumple.surface", "line"),
    "spread": ("crumple.spread", "spread"),
    "reference": ("crumple.reference", None),
    "hessian": ("crumple.hessian", None),
    "Recorder": ("crumple.trajectory", "Recorder"),
    "Trajectory": ("crumple.trajectory", "Trajectory"),
    "project": ("crumple.landscape", "project"),
    "align": ("crumple.alignment", "align"),
    "Curve": ("crumple.curve", "Curve"),
    "path_loss": ("crumple.connectivity", "path_loss"),
    "connect": ("crumple.connectivity", "connect"),
    "open": ("crumple.run.store", "open_run"),
    "open_run": ("crumple.run.store", "open_run"),
    "plot": ("crumple.plot", None),
    "store": ("crumple.run.store", None),  # cr.store.save_spread, open_hessian
}


def __getattr__(name: str) -> Any:
    """A public name, imported on first use; any other submodule (``crumple.run.store``) too, as
    when this package imported them all."""
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = importlib.import_module(module)
        value = value if attr is None else getattr(value, attr)
    elif name.startswith("_"):
        raise AttributeError(f"module 'crumple' has no attribute {name!r}")
    else:
        try:
            value = importlib.import_module(f"crumple.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"crumple.{name}":
                raise
            raise AttributeError(f"module 'crumple' has no attribute {name!r}") from None
    setattr(sys.modules[__name__], name, value)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package's module type: ``crumple.surface`` is the function ``surface``, even after
    the submodule of that name is imported (the import system binds a submodule as an
    attribute of its package); the module stays in ``sys.modules["crumple.surface"]``."""

    def __setattr__(self, name: str, value: Any) -> None:
        module, attr = _LAZY.get(name, ("", None))
        if isinstance(value, types.ModuleType) and value.__name__ == module and attr:
            value = getattr(value, attr)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
