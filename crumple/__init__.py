"""crumple: loss landscapes of PyTorch models in weight space, with the optimizer's path.

Example:
    >>> import crumple as cr
    >>> sorted(cr.__all__)[:3]
    ['CrumpleError', 'Grid', 'Plane']
"""

from crumple import plot, reference
from crumple.errors import CrumpleError
from crumple.grid import Grid
from crumple.plane import Plane
from crumple.store import open_run
from crumple.store import open_run as open  # noqa: A001
from crumple.surface import line, surface
from crumple.trajectory import Recorder, Trajectory, project
from crumple.version import __version__

__all__ = [
    # building blocks
    "Plane",
    "Grid",
    # evaluation
    "surface",
    "line",
    "reference",
    # trajectories
    "Recorder",
    "Trajectory",
    "project",
    # runs on disk
    "open",
    "open_run",
    # figures
    "plot",
    # errors
    "CrumpleError",
    "__version__",
]
