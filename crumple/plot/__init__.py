"""plotly figures of landscapes and paths, and self-contained HTML pages.

Every function returns a ``plotly.graph_objects.Figure`` (or HTML text) and never calls
``.show()``.
"""

from crumple.plot.figures import fit, surface
from crumple.plot.page import page, write_page

__all__ = ["surface", "fit", "page", "write_page"]
