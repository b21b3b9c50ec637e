"""Grid.auto: the loss at each edge of each axis is within 10% of the asked rise over the
centre, on the article's network and on an MLP on digits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

import crumple as cr
from crumple.examples import seed
from tests.cases import assert_untouched, digits, snapshot


def article():
    (_, test) = seed.split(*seed.make_data(2_000))
    torch.manual_seed(0)
    model = seed.SeedNet()
    return model, F.mse_loss, test, cr.Plane.random(model, seed=0, normalize=None, ignore=None)


def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    return model, F.cross_entropy, digits(200), cr.Plane.random(model, seed=0)


@pytest.mark.parametrize("case", [article, mlp], ids=["article", "mlp"])
@pytest.mark.parametrize("rise", [1.5, 3.0])
def test_the_edges_are_where_the_loss_has_risen_by_the_factor(case, rise):
    model, loss_fn, data, plane = case()
    before = snapshot(model)
    grid = cr.Grid.auto(model, loss_fn, data, plane, rise=rise, num=5)
    assert_untouched(model, before)
    assert "reaches" in grid.chosen and "not reached" not in grid.chosen
    centre = float(cr.line(model, loss_fn, data, plane, np.array([0.0])).loss[0])
    for k, axis in enumerate(grid.axes):
        along = cr.Plane(plane.origin, (plane.directions[k],), {})
        edges = cr.line(model, loss_fn, data, along, np.array([axis[0], axis[-1]]))
        ratios = edges.loss.values / centre
        assert np.all(np.abs(ratios - rise) <= 0.1 * rise), (k, ratios)
        assert axis[0] < 0 < axis[-1]


def test_bad_rise_is_refused():
    model, loss_fn, data, plane = mlp()
    with pytest.raises(cr.CrumpleError, match="rise must be a number > 1"):
        cr.Grid.auto(model, loss_fn, data, plane, rise=0.5)


@pytest.mark.slow
def test_the_grid_widens_to_hold_a_path_and_the_surface_says_what_was_chosen():
    model, loss_fn, data, plane = mlp()
    plain = cr.Grid.auto(model, loss_fn, data, plane, rise=1.5, num=5)
    far = float(plain.axes[0][-1]) * 3
    path = xr.Dataset({"alpha": ("step", [0.0, far]), "beta": ("step", [0.0, -0.01])})
    grid = cr.Grid.auto(model, loss_fn, data, plane, rise=1.5, num=5, cover={"SGD": path})
    assert grid.axes[0][-1] > far and grid.axes[0][0] == plain.axes[0][0]
    np.testing.assert_array_equal(grid.axes[1], plain.axes[1])  # the path fits on beta
    assert grid.chosen.split("; widened to hold the path: ")[1].startswith("alpha to")
    assert "beta to" not in grid.chosen
    ds = cr.surface(model, loss_fn, data, plane, grid)
    assert ds.attrs["grid_chosen"] == grid.chosen
    assert cr.plot.facts(ds)["grid range"] == grid.chosen


@pytest.mark.parametrize(
    "cover",
    ["path", 3, {"p": np.zeros(3)}, xr.Dataset({"alpha": ("step", [0.0])})],
    ids=["text", "number", "array", "no beta"],
)
def test_a_cover_that_is_no_path_is_refused_before_any_evaluation(cover, monkeypatch):
    model, loss_fn, data, plane = mlp()
    monkeypatch.setattr("crumple.auto_range.auto_extents", None)  # never reached
    with pytest.raises(cr.CrumpleError, match="cover must hold paths from crumple.project"):
        cr.Grid.auto(model, loss_fn, data, plane, cover=cover)


class CountedBatches:
    """An iterable of batches that counts how often it is read."""

    def __init__(self, x, y, batch_size):
        self.batches = [
            (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)
        ]
        self.reads = 0

    def __iter__(self):
        self.reads += 1
        return iter(self.batches)


def test_one_prepared_evaluation_serves_every_line_of_the_search(monkeypatch):
    """The data is read once and one evaluator is built for all of Grid.auto's line
    evaluations (before, each of up to 38 line calls re-read the data and re-ran the probes);
    the edges agree with cr.line's loss there."""
    from crumple import landscape

    built = []
    real_build = landscape.build
    monkeypatch.setattr(landscape, "build", lambda *a, **k: built.append(1) or real_build(*a, **k))
    model, loss_fn, (x, y), plane = mlp()
    data = CountedBatches(x, y, 64)
    grid = cr.Grid.auto(model, loss_fn, data, plane, rise=2.0, num=5)
    assert (data.reads, len(built)) == (1, 1), (data.reads, len(built))
    centre = float(cr.line(model, loss_fn, (x, y), plane, np.array([0.0])).loss[0])
    along = cr.Plane(plane.origin, plane.directions[:1], {})
    edges = cr.line(model, loss_fn, (x, y), along, grid.axes[0][[0, -1]]).loss.values
    np.testing.assert_allclose(edges / centre, 2.0, rtol=0.1)
