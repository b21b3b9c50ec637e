"""cr.spread: the loss along ten random directions of a 310-parameter float64 MLP on 64
digits, stored, read back, drawn as a band, and refused where it cannot mean anything."""

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

import crumple as cr
from crumple.cli import main
from crumple.errors import CrumpleError
from crumple.plot.bands import spread_facts
from crumple.spread import summary
from tests import cli_fixtures
from tests.cases import assert_close, assert_untouched, snapshot
from tests.test_browser import browser, opened  # noqa: F401  (the fixture)

ALPHA = np.linspace(-1.0, 1.0, 11)
MODEL = "tests.cli_fixtures:make_tiny64"
DATA = "tests.cli_fixtures:digits_pair"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model():
    return cli_fixtures.make_tiny64()


@pytest.fixture(scope="module")
def data():
    return cli_fixtures.digits_pair()


@pytest.fixture(scope="module")
def planes(model):
    return cr.Plane.random(model, seed=range(10), ndim=1)


@pytest.fixture(scope="module")
def ten(model, data, planes):
    return cr.spread(model, F.cross_entropy, data, planes, ALPHA, progress=False)


@pytest.fixture(scope="module")
def stored(ten, tmp_path_factory):
    folder = tmp_path_factory.mktemp("spread")
    cr.store.save_spread(folder, ten)
    return cr.store.open_spread(folder)


def test_ten_directions_are_stored_and_read_back_equal(ten, stored):
    assert ten.loss.dims == ("direction", "alpha") and ten.loss.shape == (10, 11)
    assert ten.seed.values.tolist() == list(range(10)) == ten.attrs["seeds"]
    assert ten.attrs["plane_normalization"] == "filter" and ten.attrs["std_ddof"] == 1
    assert np.isfinite(ten.loss.values).all()
    xr.testing.assert_identical(stored, ten)
    assert stored.attrs == ten.attrs


def test_each_direction_is_cr_line_on_its_plane(model, data, planes, ten):
    for k, plane in enumerate(planes):
        one = cr.line(model, F.cross_entropy, data, plane, ALPHA, progress=False)
        assert_close(ten.loss[k], one.loss, 1e-12, f"direction {k}")
    slow = cr.reference.line(model, F.cross_entropy, data, planes[7], ALPHA, dtype=torch.float64)
    assert_close(ten.loss[7], slow.loss, 1e-10, "direction 7 against the reference loop")
    # all directions pass through the model's weights: one loss at alpha = 0
    assert np.ptp(ten.loss.sel(alpha=0.0).values) < 1e-12  # (batched points: not bitwise)


def test_seeds_give_distinct_directions_and_equal_seeds_equal_ones(model, planes):
    names = list(planes[0].origin)
    flat = [torch.cat([p.directions[0][n].flatten() for n in names]) for p in planes]
    for i in range(10):
        for j in range(i + 1, 10):
            assert not torch.equal(flat[i], flat[j]), (i, j)
    again = cr.Plane.random(model, seed=[3, 8], ndim=1)
    for plane, k in zip(again, (3, 8)):
        assert all(torch.equal(plane.directions[0][n], planes[k].directions[0][n]) for n in names)
    one = cr.Plane.random(model, seed=3)  # an int keeps returning one (2-D) plane
    assert isinstance(one, cr.Plane) and one.ndim == 2
    assert all(torch.equal(one.directions[0][n], planes[3].directions[0][n]) for n in names)
    assert planes[0].origin is planes[9].origin  # one copy of the weights for all
    assert [p.attrs["seed"] for p in cr.Plane.random(model, seed=np.arange(2, 4))] == [2, 3]


def test_mean_and_spread_match_numpy_on_the_stored_curves(stored):
    curves = stored.loss.values
    assert_close(stored.loss_mean, curves.mean(axis=0), 1e-15, "mean")
    assert_close(stored.loss_std, curves.std(axis=0, ddof=1), 1e-15, "std")
    assert_close(stored.loss_min, curves.min(axis=0), 0, "min")
    assert_close(stored.loss_max, curves.max(axis=0), 0, "max")
    xr.testing.assert_identical(summary(stored)["loss_std"], stored.loss_std)


def traces(fig) -> dict[str, list]:
    out: dict[str, list] = {}
    for t in fig.data:
        out.setdefault(t.name, []).append(np.asarray(t.y, dtype=float))
    return out


def test_the_figure_holds_the_stored_values(stored):
    fig = cr.plot.spread(stored)
    drawn = traces(fig)
    mean, std = stored.loss_mean.values, stored.loss_std.values
    assert_close(drawn["mean ± 1 std (10 directions): low"][0], mean - std, 1e-15, "std low")
    assert_close(drawn["mean ± 1 std (10 directions)"][0], mean + std, 1e-15, "std high")
    assert_close(drawn["min–max of 10 directions: low"][0], stored.loss_min, 0, "min")
    assert_close(drawn["min–max of 10 directions"][0], stored.loss_max, 0, "max")
    assert_close(drawn["mean of 10 directions"][0], mean, 0, "mean")
    assert_close(np.array(drawn["each direction (10)"]), stored.loss.values, 0, "curves")
    bands = [t for t in fig.data if t.fill == "tonexty"]
    assert [t.name for t in bands] == ["min–max of 10 directions", "mean ± 1 std (10 directions)"]
    shown = [t.name for t in fig.data if t.showlegend is not False]
    assert shown == [b.name for b in bands] + ["each direction (10)", "mean of 10 directions"]
    low, high = fig.layout.yaxis.range  # every ordinary curve whole
    assert low < stored.loss.values.min() and high > stored.loss.values.max()
    assert "run off" not in fig.layout.title.text
    only_std = cr.plot.spread(stored, band="std", curves=False)
    assert [t.name for t in only_std.data if t.fill] == ["mean ± 1 std (10 directions)"]


def test_one_diverging_direction_does_not_set_the_y_range(stored):
    wild = stored.copy(deep=True)
    wild.loss[4, -1] = 1e30
    wild.loss[5, -1] = np.inf
    fig = cr.plot.spread(wild)
    low, high = fig.layout.yaxis.range
    assert float(stored.loss.max()) < high < 1.1 * float(stored.loss.max())
    assert (
        "2 of 110 values above" in fig.layout.title.text
        and "run off the top" in fig.layout.title.text
    )
    log = cr.plot.spread(stored, log=True)
    assert log.layout.yaxis.type == "log" and log.layout.yaxis.range[1] < 1  # log10 units


def test_a_spread_of_surfaces(model, data):
    planes = cr.Plane.random(model, seed=[5, 6, 7])
    grid = cr.Grid(np.linspace(-1, 1, 3), [-1.0, -0.2, 0.6])
    ds = cr.spread(model, F.cross_entropy, data, planes, grid, progress=False)
    assert ds.loss.dims == ("direction", "alpha", "beta") and ds.loss_std.dims == ("alpha", "beta")
    one = cr.surface(model, F.cross_entropy, data, planes[1], grid, progress=False)
    assert_close(ds.loss[1], one.loss, 1e-12, "seed 6")
    fig = cr.plot.spread(ds)
    assert "cut at beta = -0.2" in fig.layout.title.text
    assert_close(traces(fig)["mean of 3 directions"][0], ds.loss_mean.isel(beta=1), 0, "cut")


def test_options_reach_every_line_and_the_model_is_unchanged(model, data, planes):
    before = snapshot(model)
    ds = cr.spread(
        model, F.cross_entropy, data, planes[:3], ALPHA, dtype="float32", strategy="loop",
        metrics={"accuracy": lambda p, y: (p.argmax(-1) == y).to(p.dtype).mean()},
        check=2, progress=False,
    )  # fmt: skip
    assert_untouched(model, before)
    assert (ds.attrs["dtype"], ds.attrs["strategy"]) == ("float32", "loop")
    assert ds.attrs["check_points"] == 6 and ds.attrs["check_max_rel_diff"] < 1e-4
    assert ds.accuracy.dims == ("direction", "alpha") and "accuracy_mean" in ds
    assert ds.loss.dtype == np.float64  # stored as float64 whatever the arithmetic


def other_model():
    net = cli_fixtures.make_tiny64()
    with torch.no_grad():
        net[1].bias.add_(0.1)
    return net


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, p: cr.Plane.random(m, seed=[]), "seed=[] is an empty list"),
        (lambda m, p: cr.Plane.random(m, seed=[1, 2, 1]), "repeats 1: equal seeds"),
        (lambda m, p: cr.Plane.random(m, seed=[0, 1.5]), "holds 1.5, not an integer"),
        (lambda m, p: cr.Plane.random(m, seed="0-9"), "is not an integer or a list"),
        (lambda m, p: cr.Plane.random(m, seed=2.0), "is not an integer or a list"),
        (lambda m, p: cr.spread(m, F.cross_entropy, None, p[0], ALPHA), "is one Plane"),
        (lambda m, p: cr.spread(m, F.cross_entropy, None, p[:1], ALPHA), "holds 1 plane"),
        (lambda m, p: cr.spread(m, F.cross_entropy, None, [], ALPHA), "holds 0 plane"),
        (
            lambda m, p: cr.spread(
                m, F.cross_entropy, None, [cr.Plane.axes(m, "1.bias[0]")] * 2, ALPHA
            ),
            "planes[0] is an 'axes' plane",
        ),
        (
            lambda m, p: cr.spread(m, F.cross_entropy, None, [p[0], p[0]], ALPHA),
            "repeats 0: equal seeds",
        ),
        (
            lambda m, p: cr.spread(
                m,
                F.cross_entropy,
                None,
                [p[0], cr.Plane.random(m, seed=1, ndim=1, normalize="layer")],
                ALPHA,
            ),
            "planes[1] has normalization='layer' but planes[0] has 'filter'",
        ),
        (
            lambda m, p: cr.spread(
                m,
                F.cross_entropy,
                None,
                [p[0], cr.Plane.random(other_model(), seed=1, ndim=1)],
                ALPHA,
            ),
            "planes[1] passes through other weights",
        ),
        (
            lambda m, p: cr.spread(m, F.cross_entropy, None, p, cr.Grid(ALPHA, ALPHA)),
            "but the planes are 1-D",
        ),
        (lambda m, p: cr.spread(m, F.cross_entropy, None, p, ALPHA, store="run"), "no store="),
        (lambda m, p: cr.spread(m, F.cross_entropy, None, "planes", ALPHA), "must be a list"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_input_is_refused_with_the_fix(model, planes, call, message):
    with pytest.raises(CrumpleError, match=re.escape(message)) as e:
        call(model, planes)
    assert "e.g." in str(e.value) or "give" in str(e.value) or "build" in str(e.value)


def test_bad_figure_input_is_refused(stored):
    surface = xr.Dataset({"loss": (("alpha", "beta"), np.zeros((2, 2)))})
    with pytest.raises(CrumpleError, match="not a spread with var='loss' over 'direction'"):
        cr.plot.spread(surface)
    with pytest.raises(CrumpleError, match="band='wide' is not one of"):
        cr.plot.spread(stored, band="wide")
    with pytest.raises(CrumpleError, match="ymax='top' is not a number"):
        cr.plot.spread(stored, ymax="top")
    with pytest.raises(CrumpleError, match="ymax=-5.0 is below the surface's smallest loss"):
        cr.plot.spread(stored, ymax=-5.0)
    with pytest.raises(CrumpleError, match="save_spread needs the dataset of crumple.spread"):
        cr.store.save_spread("unused", surface)


def page_figures(page: str) -> list[dict]:
    found = re.search(r'<script id="figures" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(found.group(1).replace("<\\/", "</"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`crumple surface --spread 4` on the random plane of seed 2."""
    out = tmp_path_factory.mktemp("cli") / "run"
    main(["surface", "--model", MODEL, "--data", DATA, "--grid", "-1:1:5", "--seed", "2",
          "--spread", "4", "--out", str(out)])  # fmt: skip
    return out


def test_the_command_stores_the_spread_and_the_page_draws_it(run, tmp_path, capsys):
    sp = cr.store.open_spread(run)
    surface = cr.open_run(run)["surface"]
    assert (
        sp.attrs["seeds"] == [2, 3, 4, 5]
        and sp.alpha.values.tolist() == surface.alpha.values.tolist()
    )
    # the surface's plane has seed 2: its alpha axis is the spread's first direction
    assert_close(sp.loss[0], surface.loss.sel(beta=0.0), 1e-12, "seed 2")
    names = [
        t.get("name") for f in page_figures((run / "landscape.html").read_text()) for t in f["data"]
    ]
    assert "mean of 4 directions" in names and "mean ± 1 std (4 directions)" in names
    assert "random directions: <b>4 (seeds 2–5)</b>" in (run / "landscape.html").read_text()
    main(["plot", str(run), "--html", str(tmp_path / "again.html")])
    again = [
        t.get("name")
        for f in page_figures((tmp_path / "again.html").read_text())
        for t in f["data"]
    ]
    assert "min–max of 4 directions" in again
    assert spread_facts(sp)["random directions"] == "4 (seeds 2–5)"
    capsys.readouterr()
    main(["info", str(run)])
    assert "spread: spread.zarr, 4 random directions (seeds [2, 3, 4, 5]) over alpha 5" in (
        capsys.readouterr().out
    )


def test_the_command_refuses_a_spread_of_one(capsys):
    with pytest.raises(SystemExit):
        main(["surface", "--model", MODEL, "--data", DATA, "--spread", "1"])
    assert "--spread must be at least 2, got 1" in capsys.readouterr().err


@pytest.mark.browser
@pytest.mark.slow
def test_the_page_draws_the_band_in_chromium(run, browser):  # noqa: F811 (the fixture)
    page, errors = opened(browser, run / "landscape.html")
    drawn = page.evaluate(
        """() => {
          const div = Array.from(document.querySelectorAll('.js-plotly-plot')).find(
            (d) => d.data.some((t) => t.name === 'mean of 4 directions'));
          const fills = Array.from(div.querySelectorAll('.scatterlayer .trace path.js-fill'))
            .map((p) => (p.getAttribute('d') || '').length);
          const lines = Array.from(div.querySelectorAll('.scatterlayer .trace path.js-line'))
            .map((p) => (p.getAttribute('d') || '').length);
          const legend = Array.from(div.querySelectorAll('.legendtext')).map((t) => t.textContent);
          return {fills, lines, legend, names: div._fullData.map((t) => t.name)};
        }"""
    )
    page.close()
    assert errors == []
    assert drawn["names"].count("each direction (4)") == 4
    assert sum(n > 20 for n in drawn["fills"]) == 2, drawn["fills"]  # min-max and +- std
    assert sum(n > 20 for n in drawn["lines"]) >= 5, drawn["lines"]  # 4 curves and the mean
    assert drawn["legend"] == [
        "min–max of 4 directions", "mean ± 1 std (4 directions)", "each direction (4)",
        "mean of 4 directions",
    ]  # fmt: skip


def test_the_command_s_spread_is_evaluated_as_its_surface_is(tmp_path, capsys):
    """With --recalibrate, every direction passes through the surface's origin value."""
    out = tmp_path / "recalibrated"
    images = "tests.cli_fixtures:digit_images"
    main(
        ["surface", "--model", "tests.cli_fixtures:make_cnn", "--data", images]
        + ["--recalibrate", images, "--grid", "-1:1:3", "--spread", "2", "--out", str(out)]
    )
    capsys.readouterr()
    origin = float(cr.open_run(out)["surface"].loss.sel(alpha=0.0, beta=0.0))
    spread = cr.store.open_spread(out).loss.sel(alpha=0.0).values
    assert_close(spread, np.full(2, origin), 1e-9, "the spread at the origin")
