"""Plane kinds: the builders that need a model, a recorded path or data, in one registry.

Each kind is one :class:`PlaneKind` in :data:`KINDS`: its name, a one-line summary, how it
is built from :class:`Sources` (the model, more models, a trajectory, the loss and data, the
options), the command-line options it needs and accepts, and whether its coordinates
compare across runs. ``crumple surface --plane`` takes its choices and option checks from
here, the figures whether both axes share one scale, the page its words for the plane.

- ``registry.py``: the types and look-ups (``register``, ``get``, ``options``, ``build``,
  ``comparable``, ``describe``).
- ``builders.py``: the builders behind ``Plane.axes``, ``.random``, ``.between``, ``.pca``.
- ``kinds.py``: the kinds crumple ships, one ``register`` call each. A new kind is a
  builder and one entry there (the Hessian eigenvector plane, which needs the loss and the
  data, is one: its builder is :func:`crumple.hessian.hessian_plane`).

Why apart from :mod:`crumple.plane`: that module is geometry only (origin, directions,
``at``, ``save``/``load``) and imports nothing of crumple but errors and params. The
builders make planes, so they import :class:`~crumple.plane.Plane`; ``Plane.random`` and the
other classmethods import their builder inside the method. So no module imports the other
when it loads (no cycle), ``import crumple.plane`` stays small, and a builder may import what
it needs (the evaluation code, for a Hessian) without ``plane.py`` knowing. One file would
hold the three parts in 560 lines; the package keeps each under 250.

Example:
    >>> from crumple import planes
    >>> list(planes.KINDS)
    ['random', 'axes', 'between', 'pca', 'hessian', 'aligned']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crumple.planes import kinds  # noqa: F401  (registers the kinds)
from crumple.planes.registry import (
    COMMON,
    KINDS,
    Option,
    PlaneKind,
    Sources,
    build,
    comparable,
    describe,
    get,
    options,
    register,
)

if TYPE_CHECKING:
    from crumple.hessian.spectrum import hessian_plane
    from crumple.planes.builders import (
        axes_plane,
        between_plane,
        pca_plane,
        random_plane,
        random_planes,
    )

__all__ = [
    # the registry
    "KINDS",
    "PlaneKind",
    "Option",
    "Sources",
    "COMMON",
    "register",
    "get",
    "options",
    "build",
    "comparable",
    "describe",
    # the builders behind Plane.axes, .random (one seed, or several), .between, .pca
    "axes_plane",
    "random_plane",
    "random_planes",
    "between_plane",
    "pca_plane",
    "hessian_plane",
]


def __getattr__(name: str) -> Any:
    """The builders, imported on first use: the registry and its options load without torch
    (``crumple surface --help`` reads them)."""
    if name in ("axes_plane", "random_plane", "random_planes", "between_plane", "pca_plane"):
        from crumple.planes import builders

        return getattr(builders, name)
    if name == "hessian_plane":  # its builder lives with the Hessian it computes
        from crumple.hessian.spectrum import hessian_plane

        return hessian_plane
    raise AttributeError(f"module 'crumple.planes' has no attribute {name!r}")
