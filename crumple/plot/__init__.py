"""plotly figures of landscapes and paths, self-contained HTML pages, and static export.

Every figure function returns a ``plotly.graph_objects.Figure`` and never calls ``.show()``;
labels come from the datasets' ``long_name`` attributes.
"""

from crumple.plot.bands import spread
from crumple.plot.figures import animate, contour, fit, line, losses, surface
from crumple.plot.mesh_files import save_mesh
from crumple.plot.meshes import mesh
from crumple.plot.page import page, write_page
from crumple.plot.report import facts, report
from crumple.plot.sharpness import curvature_history
from crumple.plot.spectra import hessian_report, spectrum
from crumple.plot.static import save_static

sharpness = curvature_history  # cr.plot.sharpness(ds): the figure (the module is plot.sharpness)

__all__ = [
    "surface",
    "contour",
    "line",
    "spread",
    "losses",
    "animate",
    "fit",
    "page",
    "write_page",
    "report",
    "facts",
    "spectrum",
    "sharpness",
    "hessian_report",
    "save_static",
    "mesh",
    "save_mesh",
]
