"""The curvature history on a run's page: the figure draws the dataset as it is (the top
eigenvalue, the threshold, the loss on its own axis, the step marker at the last step), the
page holds the panel and its facts, a dataset without ``lambda_max`` over ``step`` is
refused saying what to pass, and in a real Chromium the 3-D view's own slider moves the
step marker of the curvature panel."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import crumple as cr
from crumple.errors import CrumpleError
from crumple.plot.report import report
from crumple.plot.sharpness import curvature_history, history_facts
from tests.test_browser import browser, opened  # noqa: F401  (the fixture)


def history(n: int = 7, every: int = 10) -> xr.Dataset:
    """A curvature history as ``Recorder.sharpness()`` gives it for Adam with a learning
    rate halved half-way: the threshold changes along training, the loss is unknown at
    step 0 and the curvature along the update starts at nan."""
    steps = np.arange(n) * every
    lam = np.linspace(11.0, 40.0, n)
    threshold = np.where(steps < steps[n // 2], 40.0, 80.0)
    ds = xr.Dataset(
        {
            "lambda_max": ("step", lam, {"long_name": "top Hessian eigenvalue"}),
            "preconditioned": ("step", lam * 3, {"long_name": "top eigenvalue of P^-1 H"}),
            "directional": ("step", np.r_[np.nan, lam[1:] / 4], {"long_name": "along"}),
            "threshold": ("step", threshold, {"long_name": "stability threshold"}),
            "loss": (
                "step",
                np.r_[np.nan, np.geomspace(0.5, 0.05, n - 1)],
                {"long_name": "training loss"},
            ),
        },
        coords={"step": steps},
        attrs={
            "threshold_formula": "(2 + 2 beta1) / ((1 - beta1) lr) of P^-1 H",
            "optimizer": "Adam",
            "every": every,
        },
    )
    return ds


def named(fig, name):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def step_mark(fig):
    found = [t for t in fig.data if t.meta == "step-mark"]
    assert len(found) == 1, [t.meta for t in fig.data]
    return found[0]


def test_the_figure_draws_the_dataset_as_it_is():
    ds = history()
    fig = curvature_history(ds)
    top = named(fig, "λ_max")
    np.testing.assert_array_equal(top.x, ds.step.values)
    np.testing.assert_array_equal(top.y, ds.lambda_max.values)
    np.testing.assert_array_equal(named(fig, "λ_max of P⁻¹H").y, ds.preconditioned.values)
    along = named(fig, "along the update")
    np.testing.assert_array_equal(along.y, ds.directional.values)  # nan at step 0 kept
    assert along.line.dash == "dot" and along.line.width < top.line.width
    threshold = named(fig, f"threshold {ds.attrs['threshold_formula']}")
    np.testing.assert_array_equal(threshold.x, ds.step.values)
    np.testing.assert_array_equal(threshold.y, ds.threshold.values)  # it follows the lr
    assert threshold.line.dash == "dash"
    loss = named(fig, "training loss")
    np.testing.assert_array_equal(loss.y, ds.loss.values)
    assert loss.yaxis == "y2" and all(t.yaxis in (None, "y") for t in fig.data if t is not loss)
    axis = fig.layout.yaxis2
    assert (axis.overlaying, axis.side, axis.type) == ("y", "right", "log")
    assert axis.title.text == "training loss"
    mark = step_mark(fig)
    assert list(mark.x) == [60, 60] and mark.hoverinfo == "skip" and mark.showlegend is False
    curvatures = np.r_[ds.lambda_max, ds.preconditioned, ds.directional[1:], ds.threshold]
    assert list(mark.y) == [curvatures.min(), curvatures.max()]
    assert fig.layout.xaxis.title.text == "step"


def test_a_history_of_plain_sgd_has_the_threshold_2_over_lr_and_no_loss_axis_unknown():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1).double()
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    loss_fn = torch.nn.functional.mse_loss
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    tracking = cr.hessian.Tracking(loss_fn, (x, y), every=2, optimizer=opt)
    rec = cr.Recorder(net, curvature=tracking)
    for _ in range(4):
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
        rec.record()  # no loss handed over: nothing to draw on a second axis
    ds = rec.sharpness()
    fig = cr.plot.sharpness(ds)
    np.testing.assert_array_equal(named(fig, "λ_max").y, ds.lambda_max.values)
    np.testing.assert_allclose(named(fig, "threshold 2 / lr").y, [20.0, 20.0, 20.0])
    assert "training loss" not in [t.name for t in fig.data] and "yaxis2" not in fig.layout
    assert list(step_mark(fig).x) == [4, 4]
    said = history_facts(ds)["lambda_max"]
    assert said.startswith(f"{ds.lambda_max.values[0]:.3g} at step 0, ")
    assert said.endswith("; threshold 20 (2 / lr)")


def test_the_threshold_of_adam_is_said_with_the_eigenvalue_it_bounds():
    said = history_facts(history())
    assert said["lambda_max"] == "11 at step 0, 40 at step 60 (median of the last third 35.2)"
    assert said["preconditioned"] == (
        "33 at step 0, 120 at step 60 (median of the last third 106); threshold 80 at the last "
        "step ((2 + 2 beta1) / ((1 - beta1) lr) of P^-1 H; 40 .. 80 along training)"
    )


def page_figures(text: str) -> list[dict]:
    found = re.search(r'<script id="figures" type="application/json">(.*?)</script>', text, re.S)
    return json.loads(found.group(1))


def test_the_page_holds_the_panel_after_the_loss_curves_and_the_facts(tmp_path):
    a = np.linspace(-1, 1, 5)
    ds = xr.Dataset(
        {"loss": (("alpha", "beta"), a[:, None] ** 2 + a[None, :])}, coords={"alpha": a, "beta": a}
    )
    path = xr.Dataset(
        {"alpha": ("step", [0.5, 0.0]), "beta": ("step", [0.5, 0.0]), "loss": ("step", [1.0, 0.0])},
        coords={"step": [0, 60]},
    )
    sharp = history()
    text = report(tmp_path / "page.html", ds, {"GD": path}, sharpness=sharp).read_text()
    figures = page_figures(text)
    titles = [str((f["layout"].get("title") or {}).get("text", "")) for f in figures]
    k = titles.index("Curvature along training")
    assert titles[k - 1] == "Loss along the paths"
    assert [t["x"] for t in figures[k]["data"] if t.get("meta") == "step-mark"] == [[60, 60]]
    facts = history_facts(sharp)
    for name, said in facts.items():
        assert f"<span>{name}: <b>{said.replace('>', '&gt;')}</b></span>" in text
    # without the history: neither panel nor facts
    text = report(tmp_path / "bare.html", ds, {"GD": path}).read_text()
    assert "Curvature along training" not in text and "lambda_max:" not in text


@pytest.mark.parametrize(
    "bad",
    [xr.Dataset(), xr.Dataset({"lambda_max": ("rank", [1.0])}), {"lambda_max": [1.0]}],
    ids=["empty", "by rank", "a dict"],
)
def test_a_dataset_without_lambda_max_over_step_is_refused_saying_what_to_pass(bad, tmp_path):
    with pytest.raises(CrumpleError, match=r"lambda_max over step.*recorder\.sharpness\(\)"):
        curvature_history(bad)
    a = np.linspace(-1, 1, 3)
    ds = xr.Dataset({"loss": (("alpha", "beta"), np.zeros((3, 3)))}, coords={"alpha": a, "beta": a})
    with pytest.raises(CrumpleError, match="open_sharpness"):
        report(tmp_path / "page.html", ds, sharpness=bad)
    assert not (tmp_path / "page.html").exists()


@pytest.fixture(scope="module")
def eos_page(tmp_path_factory):
    from crumple.examples import eos

    folder = tmp_path_factory.mktemp("eos")
    return eos.run(folder, lr=0.05, steps=300, grid_size=9, every=20).page


MARK = """() => {
  const d = [...document.querySelectorAll(".panel > div")].find(
    (d) => d.data.some((t) => t.meta === "step-mark"));
  return Array.from(d._fullData.find((t) => t.meta === "step-mark").x);
}"""
SLIDER = """() => {
  const s = document.getElementById("figure-0")._fullLayout.sliders[0];
  return [s.active, s.steps.length, s.steps[s.active].label];
}"""


@pytest.mark.browser
@pytest.mark.slow
def test_the_3d_slider_moves_the_curvature_step_marker(browser, eos_page):  # noqa: F811
    page, errors = opened(browser, eos_page)
    threshold = page.evaluate("""() => {
      const d = [...document.querySelectorAll(".panel > div")].find(
        (d) => d.data.some((t) => t.meta === "step-mark"));
      return [d.layout.title.text, Array.from(d._fullData.find(
        (t) => t.name.startsWith("threshold")).y), d._fullData.map((t) => t.name)];
    }""")
    title, values, names = threshold
    assert title == "Curvature along training", names
    assert values and np.allclose(values, 2 / 0.05), values  # drawn at 2 / eta = 40
    assert "threshold 2 / lr" in names and "λ_max" in names and "training loss" in names
    assert page.evaluate(MARK) == [300, 300]  # the last step, as the 3-D view starts
    # the user drags the 3-D view's own slider to a fifth of its rail
    rail = page.locator("#figure-0 .slider-rail-rect").bounding_box()
    page.mouse.click(rail["x"] + 0.2 * rail["width"], rail["y"] + rail["height"] / 2)
    page.wait_for_function(
        f"() => {{ const [a, n, label] = ({SLIDER})(); const x = ({MARK})();"
        " return a < n - 1 && x[0] === Number(label) && x[1] === Number(label); }",
        timeout=0,
    )
    active, count, label = page.evaluate(SLIDER)
    assert 0 < active < count - 1 and page.evaluate(MARK) == [int(label)] * 2
    # plotly's own animation to a frame (as the play button steps through them)
    frame = page.evaluate(
        "() => document.getElementById('figure-0')._transitionData._frames[3].name"
    )
    page.evaluate(
        "(name) => Plotly.animate('figure-0', [name], {mode: 'immediate',"
        " frame: {duration: 0, redraw: true}, transition: {duration: 0}})",
        frame,
    )
    page.wait_for_function(f"() => ({MARK})()[0] === {int(frame)}", timeout=0)
    assert page.evaluate(MARK) == [int(frame)] * 2
    assert errors == []
    page.close()


@pytest.mark.browser
@pytest.mark.slow
def test_the_curvature_panel_fits_a_phone(browser, eos_page):  # noqa: F811
    page = browser.new_page(viewport={"width": 390, "height": 900})
    page.goto(Path(eos_page).as_uri())
    page.wait_for_function("document.body.dataset.ready === 'yes'", timeout=0)
    got = page.evaluate("""() => {
      const d = [...document.querySelectorAll(".panel > div")].find(
        (d) => d.data.some((t) => t.meta === "step-mark"));
      const box = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.right]; };
      const axis = d.querySelector(".y2title");
      return {scroll: document.documentElement.scrollWidth, width: innerWidth,
              panel: box(d), svg: box(d.querySelector(".main-svg")),
              loss: axis ? box(axis) : null};
    }""")
    assert got["scroll"] <= got["width"] == 390, got  # no horizontal scroll
    for left, right in (got["panel"], got["svg"], got["loss"]):
        assert 0 <= left < right <= 390, got  # the loss axis title inside the window
    page.close()
