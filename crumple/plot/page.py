"""Self-contained HTML pages: plotly.js embedded (gzip-compressed, unpacked by the browser's
own DecompressionStream), the figures as JSON, no network needed to open them."""

from __future__ import annotations

import base64
import functools
import gzip
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from crumple.files import written

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ background: #111; color: #ddd; font-family: system-ui, sans-serif; margin: 1.5rem; }}
h1, .facts, .note {{ overflow-wrap: anywhere; }}
h1 {{ font-weight: 500; margin: 0 0 .5rem; }}
.facts {{ color: #aaa; margin: 0 0 .5rem; }}
.facts span {{ margin-right: 1.5rem; display: inline-block; max-width: 100%; }}
.note {{ color: #e6c069; margin: 0 0 .5rem; }}
.panels {{ display: grid; gap: 1rem;
  grid-template-columns: repeat(auto-fit, minmax(min(100%, 560px), 1fr)); }}
.panel {{ min-width: 0; height: {height}px; }}
#status {{ color: #e66; }}
@media (max-width: 600px) {{
  body {{ margin: .75rem; }}
  h1 {{ font-size: 1.4rem; }}
  .panel {{ height: min({height}px, 125vw); }}
}}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="facts">{facts}</p>
{notes}
<p id="status"></p>
<div class="panels">
{panels}
</div>
<script id="plotly-gz" type="application/octet-stream">{plotly}</script>
<script id="figures" type="application/json">{figures}</script>
<script>
(async () => {{
  const status = document.getElementById("status");
  try {{
    const packed = atob(document.getElementById("plotly-gz").textContent.trim());
    const bytes = Uint8Array.from(packed, (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    (0, eval)(await new Response(stream).text());
  }} catch (e) {{
    status.textContent = "This browser cannot unpack the embedded plotly.js (" + e + "); " +
      "open the page in a current Chrome, Firefox, Safari or Edge.";
    return;
  }}
  const figures = JSON.parse(document.getElementById("figures").textContent);
  // on a narrow screen (a phone), colour bars are slimmer and a 3-D view taller than wide
  // is seen from further away, so that its sides and axis titles stay inside the panel
  const fitNarrow = async (div) => {{
    if (div.clientWidth >= {narrow}) return;
    const bars = div.data.flatMap((t, k) => (t.colorbar ? [k] : []));
    const slim = {{"colorbar.title.side": "right", "colorbar.thickness": 10}};
    if (bars.length) await Plotly.restyle(div, slim, bars);
    const eye = div.layout.scene && div.layout.scene.camera && div.layout.scene.camera.eye;
    if (!eye) return;
    const k = 1.2 * Math.max(1, div._fullLayout._size.h / div._fullLayout._size.w);
    const far = {{x: eye.x * k, y: eye.y * k, z: eye.z * k}};
    await Plotly.relayout(div, {{"scene.camera.eye": far}});
  }};
  const divs = [];
  for (const [k, fig] of figures.entries()) {{
    const div = document.getElementById("figure-" + k);
    await Plotly.newPlot(div, fig.data, fig.layout, {{displaylogo: false, responsive: true}});
    if (fig.frames) await Plotly.addFrames(div, fig.frames);
    await fitNarrow(div);
    divs.push(div);
  }}
  // the contour view drives a cursor in the 3-D view
  const scene = divs.find((d) => d.data.some((t) => t.meta === "cursor"));
  const flat = divs.find((d) => d.data.length && d.data[0].type === "contour");
  if (scene && flat) {{
    const cursor = scene.data.findIndex((t) => t.meta === "cursor");
    flat.on("plotly_hover", (ev) => {{
      const surface = scene._fullData[0];  // arrays decoded
      const p = ev.points[0];
      const i = Array.from(surface.y).indexOf(p.y), j = Array.from(surface.x).indexOf(p.x);
      if (i < 0 || j < 0) return;
      Plotly.restyle(scene, {{x: [[p.x]], y: [[p.y]], z: [[surface.z[i][j]]]}}, [cursor]);
    }});
  }}
  // the path animation's step (slider or play) moves the step marker of the other figures
  const markOf = (d) => d.data.findIndex((t) => t.meta === "step-mark");
  for (const source of divs.filter((d) => (d.layout.sliders || []).length)) {{
    const marked = divs.filter((d) => d !== source && markOf(d) >= 0);
    if (!marked.length) continue;
    const mark = (step) => {{
      const s = Number(step);
      if (step === undefined || step === null || !Number.isFinite(s)) return;
      for (const d of marked) Plotly.restyle(d, {{x: [[s, s]]}}, [markOf(d)]);
    }};
    source.on("plotly_sliderchange", (ev) => mark(ev.step && ev.step.label));
    source.on("plotly_animatingframe", (ev) => mark(ev.name));
  }}
  document.body.dataset.ready = "yes";
}})();
</script>
</body>
</html>
"""


NARROW = 500  # pixels: a figure narrower than this is laid out for a phone's screen

# what a JSON text may not hold inside an HTML <script>: "<" (a "</script>" ends the
# script early, a "<!--<script>" makes the browser read past its end), and ">", "&",
# U+2028 and U+2029 with it, written as JSON escapes, which read back the same
_SCRIPT_ESCAPES = str.maketrans({c: f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"})


def script_json(value: object) -> str:
    """``value`` as JSON that an HTML ``<script>`` holds whole, whatever its texts say.

    Example:
        >>> print(script_json({"name": "</script><!--<script>"}))
        {"name":"\\u003c/script\\u003e\\u003c!--\\u003cscript\\u003e"}
    """
    return json.dumps(value, separators=(",", ":")).translate(_SCRIPT_ESCAPES)


@functools.cache
def _packed_plotly() -> str:
    return base64.b64encode(gzip.compress(get_plotlyjs().encode(), 9, mtime=0)).decode()


def page(
    figures: Sequence[go.Figure],
    *,
    title: str = "crumple",
    facts: Mapping[str, object] | None = None,
    notes: Sequence[str] = (),
    height: int = 620,
) -> str:
    """One HTML page showing ``figures`` in a grid, with plotly.js embedded once.

    Example:
        >>> import plotly.graph_objects as go
        >>> "<script src=" in page([go.Figure()])
        False
    """
    panels = "\n".join(
        f'<div class="panel"><div id="figure-{k}" style="height:100%"></div></div>'
        for k in range(len(figures))
    )
    specs = [json.loads(pio.to_json(fig, validate=False)) for fig in figures]
    facts_html = "".join(
        f"<span>{html.escape(str(k))}: <b>{html.escape(str(v))}</b></span>"
        for k, v in (facts or {}).items()
    )
    notes_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    return _TEMPLATE.format(
        title=html.escape(title),
        facts=facts_html,
        notes=notes_html,
        panels=panels,
        height=height,
        narrow=NARROW,
        plotly=_packed_plotly(),
        figures=script_json(specs),
    )


def write_page(path: str | Path, figures: Sequence[go.Figure], **kwargs) -> Path:
    """Write :func:`page` to ``path`` (folders are created), whole or not at all
    (:func:`crumple.files.written`), and return the path.

    Example:
        >>> import tempfile, plotly.graph_objects as go
        >>> folder = tempfile.mkdtemp()
        >>> write_page(f"{folder}/sub/page.html", [go.Figure()]).name
        'page.html'
    """
    path = Path(path)
    text = page(figures, **kwargs)
    with written(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path
