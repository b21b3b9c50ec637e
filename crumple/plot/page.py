"""Self-contained HTML pages: plotly.js embedded once, no network needed to open them."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ background: #111; color: #ddd; font-family: system-ui, sans-serif; margin: 1.5rem; }}
h1 {{ font-weight: 500; margin: 0 0 .5rem; }}
.facts {{ color: #aaa; margin: 0 0 1rem; }}
.facts span {{ margin-right: 1.5rem; white-space: nowrap; }}
.panels {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 1rem; }}
.panel {{ min-width: 0; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="facts">{facts}</p>
<div class="panels">
{panels}
</div>
<script>
// each figure was drawn as soon as it was parsed, before the panels beside it existed
window.addEventListener("load", () =>
  document.querySelectorAll(".plotly-graph-div").forEach((div) => Plotly.Plots.resize(div)));
</script>
</body>
</html>
"""


def page(
    figures: Sequence[go.Figure],
    *,
    title: str = "crumple",
    facts: Mapping[str, object] | None = None,
    heights: Sequence[int] | None = None,
) -> str:
    """One HTML page showing ``figures`` side by side, with plotly.js embedded once.

    Example:
        >>> import plotly.graph_objects as go
        >>> "<script src=" in page([go.Figure()])
        False
    """
    heights = heights or [700] * len(figures)
    panels = []
    for k, (fig, height) in enumerate(zip(figures, heights)):
        div = pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=k == 0,
            include_mathjax=False,
            default_height=f"{height}px",
            config={"displaylogo": False, "responsive": True},
        )
        panels.append(f'<div class="panel">{div}</div>')
    facts_html = "".join(
        f"<span>{html.escape(str(k))}: <b>{html.escape(str(v))}</b></span>"
        for k, v in (facts or {}).items()
    )
    return _TEMPLATE.format(title=html.escape(title), facts=facts_html, panels="\n".join(panels))


def write_page(path: str | Path, figures: Sequence[go.Figure], **kwargs) -> Path:
    """Write :func:`page` to ``path`` (folders are created) and return the path.

    Example:
        >>> import tempfile, plotly.graph_objects as go
        >>> folder = tempfile.mkdtemp()
        >>> write_page(f"{folder}/sub/page.html", [go.Figure()]).name
        'page.html'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(figures, **kwargs), encoding="utf-8")
    return path
