"""Pages laid out for a phone (390 px) and a desktop (1400 px), with the models marked: the
model at the origin and a, b, c of a plane between models at their coordinates (their
losses checked against the models evaluated by hand), the paths' ends, and a grid minimum
on the grid's edge flagged. The browser tests open one page per width in headless Chromium."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

import crumple as cr
from crumple.analysis import EDGE_NOTE
from crumple.plot.figures import CAMERA_EYE
from crumple.plot.page import NARROW
from crumple.plot.report import facts, report
from crumple.specs import accuracy
from tests.cases import MLP, digits
from tests.test_browser import browser  # noqa: F401  (the fixture)

WIDTHS = (1400, 390)


def models_trace(fig):
    found = [t for t in fig.data if t.meta == "models"]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def hover_value(text: str) -> float:
    return float(text.rsplit(" ", 1)[1])


def trained(seed: int, data) -> MLP:
    """A small MLP after a few full-batch SGD steps from its own start."""
    torch.manual_seed(seed)
    net = MLP().double()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(5 + seed):
        opt.zero_grad()
        F.cross_entropy(net(data[0]), data[1]).backward()
        opt.step()
    return net


def by_hand(net, data) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(net(data[0]), data[1]))


def test_the_models_of_a_between_plane_are_marked_at_their_own_losses():
    data = digits(200)
    nets = [trained(seed, data) for seed in range(3)]
    plane = cr.Plane.between(*nets)
    grid = cr.Grid(np.linspace(-0.5, 1.5, 5), np.linspace(-0.5, 1.5, 5))
    ds = cr.surface(nets[0], F.cross_entropy, data, plane, grid, progress=False)
    for fig in (cr.plot.surface(ds), cr.plot.contour(ds)):
        marks = models_trace(fig)
        assert marks.name == "models a, b, c" and list(marks.text) == ["a", "b", "c"]
        assert list(zip(marks.x, marks.y)) == [(0, 0), (1, 0), (0, 1)]
        for net, text in zip(nets, marks.hovertext):
            assert "nearest" not in text
            assert hover_value(text) == pytest.approx(by_hand(net, data), rel=1e-4), text
    # a grid that holds c's coordinate only between its points, and b's not at all
    coarse = cr.Grid(np.linspace(-0.4, 0.9, 4), np.linspace(-0.3, 1.2, 4))
    ds = cr.surface(nets[0], F.cross_entropy, data, plane, coarse, progress=False)
    marks = models_trace(cr.plot.contour(ds))
    assert marks.name == "models a, b, c (b outside the grid)"
    assert list(marks.text) == ["a", "c"]
    assert all("at the nearest grid point" in t for t in marks.hovertext)


def test_the_model_is_marked_at_the_origin_and_the_path_ends_named():
    data = digits(200)
    net = trained(0, data)
    plane = cr.Plane.random(net, seed=0)
    grid = cr.Grid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5))
    ds = cr.surface(net, F.cross_entropy, data, plane, grid, progress=False)
    path = xr.Dataset(
        {"alpha": ("step", [0.5, 0.2, 0.0]), "beta": ("step", [0.5, 0.1, 0.0])}
        | {"loss": ("step", [2.0, 1.0, 0.5])},
        coords={"step": [0, 5, 10]},
    )
    # a path named like the marks is animated, the marks are not
    fig = cr.plot.animate(ds, {"model": path})
    marks = models_trace(fig)
    assert list(marks.text) == ["model"] and (marks.x, marks.y) == ((0.0,), (0.0,))
    assert hover_value(marks.hovertext[0]) == pytest.approx(by_hand(net, data), rel=1e-4)
    index = [k for k, t in enumerate(fig.data) if t.name == "model" and t.meta is None]
    assert all(list(f.traces) == index for f in fig.frames)
    drawn = fig.data[index[0]]
    assert list(drawn.marker.symbol) == ["diamond", "circle", "square"]
    assert drawn.text[0].startswith("start, step 0") and drawn.text[-1].startswith("end, step 10")
    # a grid away from the origin says the model lies outside it
    away = ds.assign_coords(alpha=ds.alpha + 5)
    marks = models_trace(cr.plot.surface(away))
    assert marks.name == "model outside the grid" and len(marks.x) == 0
    # a plane of two weights has no model at its origin: nothing marked
    axes = ds.assign_attrs(plane_kind="axes")
    assert all(t.meta != "models" for t in cr.plot.contour(axes).data)


def test_a_minimum_on_the_grid_edge_is_flagged_and_one_inside_is_not():
    a = np.linspace(-1, 1, 9)
    bowl = xr.Dataset(
        {"loss": (("alpha", "beta"), a[:, None] ** 2 + a[None, :] ** 2)},
        coords={"alpha": a, "beta": a},
        attrs={"plane_kind": "random"},
    )
    tilted = bowl.assign(loss=bowl.loss + 3 * bowl.alpha)  # falls on beyond alpha = -1
    assert EDGE_NOTE not in facts(bowl)["grid minimum"]
    assert facts(tilted)["grid minimum"] == f"-2, {EDGE_NOTE}"  # at alpha = -1, beta = 0
    for ds, flagged in ((bowl, False), (tilted, True)):
        flat = cr.plot.contour(ds)
        scene = cr.plot.surface(ds)
        texts = [flat.layout.annotations[0].text, scene.layout.scene.annotations[0].text]
        assert all(("widen the grid" in t) == flagged for t in texts), texts


def test_the_static_figure_marks_the_models_and_flags_the_edge(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    from crumple.plot.static import save_static

    a = np.linspace(-1, 1, 9)
    loss = a[:, None] ** 2 + a[None, :] ** 2 + 3 * a[:, None]  # lowest at alpha = -1
    ds = xr.Dataset(
        {"loss": (("alpha", "beta"), loss)},
        coords={"alpha": a, "beta": a},
        attrs={"plane_kind": "between"},
    )
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # texts kept as text
        texts = re.findall(
            r"<text[^>]*>([^<]*)</text>", save_static(ds, tmp_path / "s.svg").read_text()
        )
    assert "on the grid's edge: widen the grid" in texts
    assert {"a", "b", "c"} <= set(texts), texts  # the models named where they sit


def test_the_3d_view_is_seen_from_far_enough_and_the_slider_clears_the_buttons():
    a = np.linspace(-1, 1, 5)
    ds = xr.Dataset({"loss": (("alpha", "beta"), np.add.outer(a, a) ** 2)})
    ds = ds.assign_coords(alpha=a, beta=a)
    path = xr.Dataset(
        {"alpha": ("step", [0.5, 0.0]), "beta": ("step", [0.5, 0.0]), "loss": ("step", [1, 0])},
        coords={"step": [0, 1]},
    )
    fig = cr.plot.animate(ds, {"p": path})
    eye = fig.layout.scene.camera.eye
    assert np.hypot(eye.x, eye.y) > np.hypot(1.25, 1.25)  # plotly's default, which clips
    (slider,), (buttons,) = fig.layout.sliders, fig.layout.updatemenus
    # the slider stands over the buttons, its whole width free
    assert slider.x == buttons.x == 0 and slider.len == 1 and slider.pad.b >= 35


# --- in the browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    """A page of a random plane through a trained MLP with a path and an accuracy metric."""
    data = digits(200)
    torch.manual_seed(0)
    net = MLP().double()
    rec = cr.Recorder(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(6):
        opt.zero_grad()
        loss = F.cross_entropy(net(data[0]), data[1])
        loss.backward()
        opt.step()
        rec.record(loss=loss.item())
    plane = cr.Plane.pca(rec.trajectory)
    path = cr.project(rec.trajectory, plane, net, F.cross_entropy, data)
    reach = 1.2 * float(np.abs(np.concatenate([path.alpha, path.beta])).max())
    grid = cr.Grid(np.linspace(-reach, reach, 9), np.linspace(-reach, reach, 9))
    metrics = {"accuracy": accuracy}
    ds = cr.surface(net, F.cross_entropy, data, plane, grid, metrics=metrics, progress=False)
    file = tmp_path_factory.mktemp("layout") / "landscape.html"
    return report(file, ds, {"SGD": path}, title="a page on a phone and a desktop")


MEASURE = """() => {
  const box = (e) => {
    const r = e.getBoundingClientRect();
    return [r.left, r.right, r.top, r.bottom];
  };
  const divs = Array.from(document.querySelectorAll('[id^="figure-"]'));
  const scene = document.getElementById('figure-0');
  const size = scene._fullLayout._size;
  return {
    scroll: document.documentElement.scrollWidth, width: innerWidth,
    panels: divs.map(box),
    svgs: divs.map((d) => box(d.querySelector('.main-svg'))),
    titles: divs.map((d) => (d.layout.title && d.layout.title.text) || ''),
    models: divs.map((d) => d._fullData.filter((t) => t.meta === 'models').map((t) => t.x.length)),
    ends: divs.slice(0, 2).map((d) => d._fullData.find((t) => t.name === 'SGD').marker.symbol),
    buttons: Array.from(scene.querySelectorAll('.updatemenu-button')).map(box),
    ticks: Array.from(scene.querySelectorAll('.slider-tick-rect, .slider-label')).map(box),
    eye: scene._fullLayout.scene.camera.eye, aspect: size.h / size.w,
  };
}"""


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_the_page_fits_the_screen_with_the_models_and_ends_marked(browser, page_file, width):  # noqa: F811
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(Path(page_file).as_uri())
    page.wait_for_function("document.body.dataset.ready === 'yes'", timeout=120_000)
    got = page.evaluate(MEASURE)
    assert got["scroll"] <= got["width"] == width  # no horizontal scroll
    for left, right, _, _ in got["panels"] + got["svgs"]:
        assert 0 <= left < right <= width, got["panels"]
    if width < NARROW:  # one panel a row
        assert len({box[0] for box in got["panels"]}) == 1, got["panels"]
    # the metric has its own panel, the model is marked on both views of the loss
    assert any("accuracy" in t for t in got["titles"]), got["titles"]
    assert got["models"][:2] == [[1], [1]], got["models"]
    for symbols in got["ends"]:
        assert symbols[0] == "diamond" and symbols[-1] == "square", symbols
    # no tick or label of the slider under the play and pause buttons
    assert len(got["buttons"]) == 2 and len(got["ticks"]) > 2, got
    for left, right, top, bottom in got["ticks"]:
        for b_left, b_right, b_top, b_bottom in got["buttons"]:
            apart = right <= b_left or b_right <= left or bottom <= b_top or b_bottom <= top
            assert apart, ((left, right, top, bottom), got["buttons"])
    # on a phone, a 3-D view taller than wide is seen from further away, in proportion
    eye = np.hypot(got["eye"]["x"], got["eye"]["y"]) / np.hypot(CAMERA_EYE["x"], CAMERA_EYE["y"])
    if width < NARROW:
        assert got["aspect"] > 1.2 and eye >= got["aspect"], (eye, got["aspect"])
    else:
        assert eye == pytest.approx(1.0), eye
    assert errors == []
    page.close()


def test_no_width_in_the_page_is_wider_than_a_phone(tmp_path):
    a = np.linspace(-1, 1, 5)
    ds = xr.Dataset({"loss": (("alpha", "beta"), np.add.outer(a, a) ** 2)})
    ds = ds.assign_coords(alpha=a, beta=a)
    text = report(tmp_path / "page.html", ds).read_text(encoding="utf-8")
    style = re.search(r"<style>(.*?)</style>", text, re.S)[1]
    assert "minmax(min(100%, 560px), 1fr)" in style
    widths = [int(w) for w in re.findall(r"(?<![\w-])width:\s*(\d+)px", style)]
    assert all(w <= 390 for w in widths), widths
    figures = json.loads(re.search(r'<script id="figures"[^>]*>(.*?)</script>', text, re.S)[1])
    assert all("width" not in f["layout"] for f in figures)  # plotly sizes them to the panel
