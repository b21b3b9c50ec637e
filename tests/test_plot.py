"""Figures, tested by their traces."""

import re

import numpy as np
import plotly.graph_objects as go
import pytest
import xarray as xr

import crumple as cr


def asymmetric_surface():
    alpha = np.array([-1.0, 0.0, 1.0, 2.0])
    beta = np.array([10.0, 20.0, 30.0])
    loss = alpha[:, None] * 100 + beta[None, :]  # loss[i, j] at (alpha[i], beta[j])
    return xr.Dataset(
        {"loss": (("alpha", "beta"), loss, {"long_name": "mse_loss"})},
        coords={
            "alpha": ("alpha", alpha, {"long_name": "Layer_1.weight"}),
            "beta": ("beta", beta, {"long_name": "Layer_2.weight"}),
        },
    )


def path_on_nodes(ds, nodes):
    return xr.Dataset(
        {
            "alpha": ("step", [float(ds.alpha[i]) for i, _ in nodes]),
            "beta": ("step", [float(ds.beta[j]) for _, j in nodes]),
            "loss": ("step", [float(ds.loss[i, j]) for i, j in nodes]),
        },
        coords={"step": np.arange(len(nodes))},
    )


def surface_value_drawn_at(trace: go.Surface, x: float, y: float) -> float:
    """What plotly draws at (x, y): z[row][col] sits at (x[col], y[row])."""
    col = list(trace.x).index(x)
    row = list(trace.y).index(y)
    return trace.z[row][col]


def test_path_points_sit_on_the_drawn_surface():
    ds = asymmetric_surface()
    path = path_on_nodes(ds, [(0, 0), (1, 2), (3, 1), (2, 2)])
    fig = cr.plot.surface(ds, paths={"SGD": path})
    surf, line = fig.data
    assert isinstance(surf, go.Surface) and isinstance(line, go.Scatter3d)
    for x, y, z in zip(line.x, line.y, line.z):
        assert surface_value_drawn_at(surf, x, y) == z
    # a transposed drawing would put alpha=2, beta=10 (210) where alpha=10 would be
    assert surface_value_drawn_at(surf, 2.0, 10.0) == 210.0


def test_article_styling_and_labels():
    ds = asymmetric_surface()
    fig = cr.plot.surface(ds, paths={"SGD": path_on_nodes(ds, [(0, 0), (1, 1)])})
    line = fig.data[1]
    assert line.line.color == "red" and line.line.width == 2
    assert line.marker.color == "yellow" and line.marker.size == 4
    assert line.name == "SGD"
    assert fig.layout.title.text == "Loss Surface"
    assert (
        fig.layout.template.layout.paper_bgcolor
        == go.layout.Template(
            __import__("plotly.io", fromlist=["templates"]).templates["plotly_dark"]
        ).layout.paper_bgcolor
    )
    scene = fig.layout.scene
    assert (scene.aspectratio.x, scene.aspectratio.y, scene.aspectratio.z) == (1, 1, 0.5)
    assert scene.xaxis.title.text == "Layer_1.weight"
    assert scene.yaxis.title.text == "Layer_2.weight"
    assert scene.zaxis.title.text == "mse_loss"


def test_several_paths_get_distinct_colours():
    ds = asymmetric_surface()
    paths = {name: path_on_nodes(ds, [(0, 0), (k, 1)]) for k, name in enumerate("abc")}
    fig = cr.plot.surface(ds, paths=paths)
    lines = [t for t in fig.data if isinstance(t, go.Scatter3d)]
    assert [t.name for t in lines] == ["a", "b", "c"]
    assert len({t.line.color for t in lines}) == 3


def test_page_is_self_contained():
    ds = asymmetric_surface()
    figs = [
        cr.plot.surface(ds),
        cr.plot.fit(np.arange(3), np.arange(3), np.arange(3), np.arange(3)),
    ]
    html = cr.plot.page(figs, title="t <x>", facts={"grid": "4 x 3"})
    # nothing is loaded from elsewhere (plotly.js itself names URLs only for geo maps)
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|<iframe|<img", html)
    assert html.count('class="plotly-graph-div"') == 2
    assert "t &lt;x&gt;" in html and "4 x 3" in html
    # plotly.js embedded exactly once
    assert html.count('define("plotly"') + html.count("window.Plotly") >= 1
    assert len(html) > 1_000_000


@pytest.mark.parametrize("template", ["plotly_dark", "plotly_white"])
def test_template_is_honoured(template):
    fig = cr.plot.surface(asymmetric_surface(), template=template)
    assert fig.layout.template is not None
