"""Figures, tested by their traces; pages by their content (the browser test renders them)."""

import re

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import xarray as xr

import crumple as cr
from crumple import planes
from crumple.analysis import critical_points


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


def path_on_nodes(ds, nodes, off=None):
    n = len(nodes)
    loss = [float(ds.loss[i, j]) for i, j in nodes]
    off = np.zeros(n) if off is None else np.asarray(off, dtype=float)
    return xr.Dataset(
        {
            "alpha": ("step", [float(ds.alpha[i]) for i, _ in nodes]),
            "beta": ("step", [float(ds.beta[j]) for _, j in nodes]),
            "loss": ("step", np.array(loss) + off),  # off the plane: the true loss differs
            "loss_on_plane": ("step", loss),
            "off_plane": ("step", off),
        },
        coords={"step": np.arange(n)},
    )


def traces(fig, kind=None, name=None):
    return [
        t
        for t in fig.data
        if (kind is None or t.type == kind) and (name is None or (t.name or "").startswith(name))
    ]


def surface_value_drawn_at(trace: go.Surface, x: float, y: float) -> float:
    """What plotly draws at (x, y): z[row][col] sits at (x[col], y[row])."""
    col = list(trace.x).index(x)
    row = list(trace.y).index(y)
    return trace.z[row][col]


def test_path_points_sit_on_the_drawn_surface():
    ds = asymmetric_surface()
    path = path_on_nodes(ds, [(0, 0), (1, 2), (3, 1), (2, 2)])
    fig = cr.plot.surface(ds, paths={"SGD": path})
    surf = traces(fig, "surface")[0]
    line = traces(fig, "scatter3d", "SGD")[0]
    for x, y, z in zip(line.x, line.y, line.z):
        assert surface_value_drawn_at(surf, x, y) == z
    # a transposed drawing would put alpha=2, beta=10 (210) where alpha=10 would be
    assert surface_value_drawn_at(surf, 2.0, 10.0) == 210.0
    assert not traces(fig, name="SGD (projection)")  # in the plane: no projection drawn


def test_off_plane_paths_are_drawn_at_true_loss_with_a_faint_projection():
    ds = asymmetric_surface()
    path = path_on_nodes(ds, [(0, 0), (1, 1), (2, 2)], off=[0.0, 5.0, 7.0])
    fig = cr.plot.surface(ds, paths={"SGD": path})
    true = traces(fig, "scatter3d", "SGD")[0]
    projection = traces(fig, "scatter3d", "SGD (projection)")[0]
    assert list(true.z) == list(path.loss.values)
    assert list(projection.z) == list(path.loss_on_plane.values)
    assert projection.opacity < 1 and projection.line.dash == "dash"
    assert "off the plane by 5" in true.text[1] and "off the plane" not in true.text[0]
    # the flat view draws both as well, and the loss curves show both
    curves = cr.plot.losses({"SGD": path})
    assert [t.name for t in curves.data] == ["SGD", "SGD (on plane)"]


def test_article_styling_labels_start_and_end():
    ds = asymmetric_surface()
    fig = cr.plot.surface(ds, paths={"SGD": path_on_nodes(ds, [(0, 0), (1, 1), (2, 1)])})
    line = traces(fig, "scatter3d", "SGD")[0]
    assert line.line.color == "red" and line.line.width == 2
    assert line.marker.color == "yellow"
    assert list(line.marker.symbol) == ["diamond", "circle", "square"]
    assert list(line.marker.size) == [7, 4, 7]
    assert fig.layout.title.text == "Loss Surface"
    assert (
        fig.layout.template.layout.paper_bgcolor
        == pio.templates["plotly_dark"].layout.paper_bgcolor
    )
    scene = fig.layout.scene
    assert (scene.aspectratio.x, scene.aspectratio.y, scene.aspectratio.z) == (1, 1, 0.5)
    assert scene.xaxis.title.text == "Layer_1.weight"
    assert scene.yaxis.title.text == "Layer_2.weight"
    assert scene.zaxis.title.text == "mse_loss"


def test_several_paths_get_a_legend_entry_and_a_colour_each():
    ds = asymmetric_surface()
    paths = {name: path_on_nodes(ds, [(0, 0), (k, 1)]) for k, name in enumerate("abc")}
    for fig in (cr.plot.surface(ds, paths=paths), cr.plot.contour(ds, paths=paths)):
        lines = [t for t in fig.data if t.name in paths]
        assert [t.name for t in lines] == ["a", "b", "c"]
        assert len({t.line.color for t in lines}) == 3


def bumps():
    a = np.linspace(-2, 2, 41)
    f = (a[:, None] ** 2 - 1) ** 2 + (a[None, :] ** 2 - 1) ** 2
    return xr.Dataset({"loss": (("alpha", "beta"), f)}, coords={"alpha": a, "beta": a}), a


def test_critical_points_of_a_known_surface_are_exactly_those():
    ds, a = bumps()
    found = critical_points(ds)
    at = lambda points: sorted((round(a[i], 9), round(a[j], 9)) for i, j in points)  # noqa: E731
    assert at(found.minima) == [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    assert at(found.maxima) == [(0, 0)]
    assert at(found.saddles) == [(-1, 0), (0, -1), (0, 1), (1, 0)]
    assert found.global_min is not None and ds.loss.values[found.global_min] == 0
    # a tilt leaves one global minimum, labelled on both views
    tilted = ds.assign(loss=ds.loss + 0.01 * ds.alpha + 0.02 * ds.beta)
    g = critical_points(tilted).global_min
    assert (round(a[g[0]], 9), round(a[g[1]], 9)) == (-1, -1)
    fig = cr.plot.surface(tilted)
    assert [t.name for t in traces(fig, "scatter3d", "local")] == [
        "local minima (4)",
        "local maxima (1)",
    ]
    assert traces(fig, "scatter3d", "saddle")[0].name == "saddle points (4)"
    assert fig.layout.scene.annotations[0].text.startswith("grid minimum")
    flat = cr.plot.contour(tilted)
    assert flat.layout.annotations[0].text.startswith("grid minimum")
    assert len(traces(flat, "scatter", "local minima")[0].x) == 4


def test_divergent_values_are_clipped_and_marked_not_flattening_the_rest():
    ds, _ = bumps()
    loss = ds.loss.values.copy()
    loss[3, 4], loss[10, 10], loss[20, 30] = np.inf, np.nan, 1e12
    bad = ds.assign(loss=(("alpha", "beta"), loss))
    fig = cr.plot.surface(bad)
    surf = traces(fig, "surface")[0]
    z = np.array(surf.z, dtype=float)
    assert np.isnan(z[10, 10]) and np.isfinite(np.delete(z.ravel(), 10 * 41 + 10)).all()
    cap = np.nanmax(z)
    assert cap == ds.loss.values.max() == surf.cmax  # the 1e12 did not set the scale
    marked = traces(fig, "scatter3d", "clipped")[0]
    assert len(marked.x) == 2 and marked.showlegend  # inf and 1e12; nan is a gap, not a mark
    assert sorted(marked.text) == ["1e+12", "inf"]
    assert np.allclose(np.array(surf.z, dtype=float)[4, 3], cap)  # z[row=beta][col=alpha]
    assert (
        "2 of 1681 values above 18 drawn at 18 (1 inf); 1 nan left as gaps" in fig.layout.title.text
    )
    # a fixed cap and a log scale
    capped = traces(cr.plot.surface(bad, zmax=5.0), "surface")[0]
    assert np.nanmax(np.array(capped.z, dtype=float)) == 5.0 == capped.cmax
    logged = cr.plot.surface(ds.assign(loss=ds.loss + 1), log=True)
    assert logged.layout.scene.zaxis.title.text.startswith("log10")
    assert np.isclose(np.array(traces(logged, "surface")[0].z, dtype=float).min(), 0.0)


def test_large_grids_are_downsampled_for_display_only():
    a = np.linspace(-1, 1, 400)
    ds = xr.Dataset(
        {"loss": (("alpha", "beta"), a[:, None] ** 2 + a[None, :] ** 2)},
        coords={"alpha": a, "beta": a},
    )
    fig = cr.plot.surface(ds)
    surf = traces(fig, "surface")[0]
    assert len(surf.x) == 200 and len(surf.y) == 200
    assert "every 2nd grid line" in fig.layout.title.text
    assert ds.loss.shape == (400, 400)  # the data itself is untouched
    html = cr.plot.page([fig], notes=[cr.plot.figures.display_grid(ds)[1]])
    assert "the data holds all" in html


def test_animation_frames_grow_the_paths():
    ds = asymmetric_surface()
    paths = {
        "a": path_on_nodes(ds, [(0, 0), (1, 1), (2, 2)]),
        "b": path_on_nodes(ds, [(3, 0), (2, 1)]),
    }
    fig = cr.plot.animate(ds, paths)
    assert len(fig.frames) == 3
    indices = [i for i, t in enumerate(fig.data) if t.name in paths]
    for n, frame in enumerate(fig.frames, start=1):
        assert list(frame.traces) == indices
        assert [len(t.x) for t in frame.data] == [n, min(n, 2)]
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["play", "pause"]
    assert len(fig.layout.sliders[0].steps) == 3
    # the slider reads the steps the loop recorded, not the snapshots' positions
    recorded = {name: p.assign_coords(step=p.step * 5) for name, p in paths.items()}
    fig = cr.plot.animate(ds, recorded)
    assert [s.label for s in fig.layout.sliders[0].steps] == ["0", "5", "10"]


def test_line_and_contour_read_labels_from_attributes():
    d = xr.Dataset(
        {"loss": ("alpha", [1.0, 0.0, 1.0], {"long_name": "cross_entropy"})},
        coords={"alpha": ("alpha", [-1, 0, 1], {"long_name": "PC1 (90.0%)"})},
    )
    fig = cr.plot.line({"first": d, "second": d})
    assert [t.name for t in fig.data] == ["first", "second"]
    assert fig.layout.xaxis.title.text == "PC1 (90.0%)"
    assert fig.layout.yaxis.title.text == "cross_entropy"
    flat = cr.plot.contour(asymmetric_surface())
    assert flat.layout.xaxis.title.text == "Layer_1.weight"


def test_contour_axes_share_one_scale_where_the_plane_registry_says_so():
    ds = asymmetric_surface()
    drawn = {}
    for kind in ("random", "axes", "between", "pca", "custom"):
        ds.attrs["plane_kind"] = kind
        drawn[kind] = cr.plot.contour(ds).layout.yaxis.scaleanchor
    assert drawn == {"random": "x", "axes": "x", "between": None, "pca": None, "custom": None}
    kind = planes.register(planes.PlaneKind("unit", "unit axes", build=None, comparable=True))
    try:
        ds.attrs["plane_kind"] = "unit"
        assert cr.plot.contour(ds).layout.yaxis.scaleanchor == "x"
    finally:
        del planes.KINDS[kind.name]


def test_facts_describe_the_plane_through_the_registry():
    ds = asymmetric_surface()
    ds.attrs |= {
        "plane_kind": "random",
        "plane_normalization": "filter",
        "plane_trainable_only": True,
        "plane_frozen": ["a.weight", "a.bias"],
    }
    assert cr.plot.facts(ds)["plane"] == (
        "random, filter-normalized, trainable parameters only (2 frozen left out)"
    )
    assert cr.plot.facts(asymmetric_surface())["plane"] == "custom"


def test_page_is_self_contained_and_small():
    ds = asymmetric_surface()
    html = cr.plot.page(
        [cr.plot.surface(ds), cr.plot.contour(ds)], title="t <x>", facts={"grid": "4 x 3"}
    )
    # nothing is loaded from elsewhere
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|<iframe|<img", html)
    assert html.count('id="figure-') == 2
    assert "t &lt;x&gt;" in html and "4 x 3" in html
    assert 'id="plotly-gz"' in html  # plotly.js embedded, compressed


def test_report_page_for_80_by_80_with_three_26_step_paths_is_under_5_mb(tmp_path):
    a = np.linspace(-2, 2, 80)
    ds = xr.Dataset(
        {"loss": (("alpha", "beta"), np.sin(3 * a[:, None]) * np.cos(2 * a[None, :]))},
        coords={"alpha": a, "beta": a},
    )
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("SGD", "momentum", "Adam"):
        steps = np.cumsum(rng.normal(0, 0.1, (26, 2)), axis=0)
        paths[name] = xr.Dataset(
            {
                "alpha": ("step", steps[:, 0]),
                "beta": ("step", steps[:, 1]),
                "loss": ("step", rng.random(26)),
                "loss_on_plane": ("step", rng.random(26)),
                "off_plane": ("step", rng.random(26)),
            },
            coords={"step": np.arange(26)},
        )
    page = cr.plot.report(tmp_path / "page.html", ds, paths)
    size = page.stat().st_size
    assert size < 5 * 2**20, f"{size / 2**20:.2f} MB"


def test_static_png_and_pdf(tmp_path):
    ds, _ = bumps()
    path = path_on_nodes(ds, [(5, 5), (10, 12), (20, 20)])
    png = cr.plot.save_static(ds, tmp_path / "fig.png", {"SGD": path})
    pdf = cr.plot.save_static(ds, tmp_path / "fig.pdf", {"SGD": path}, log=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000


@pytest.mark.parametrize("template", ["plotly_dark", "plotly_white"])
def test_template_is_honoured(template):
    fig = cr.plot.surface(asymmetric_surface(), template=template)
    assert fig.layout.template.layout.paper_bgcolor == pio.templates[template].layout.paper_bgcolor
