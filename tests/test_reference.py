"""crumple.reference has the fast path's signatures and numbers; check=N catches a strategy
that is wrong."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.evaluation import STRATEGIES, register
from crumple.evaluation.strategies import Loop
from crumple.examples import zoo
from tests.cases import assert_close


@pytest.fixture()
def broken(monkeypatch):
    """A strategy that is off by one part in a million at one point of each call."""

    class Broken(Loop):
        name = "broken"

        def __call__(self, points):
            out = super().__call__(points)
            out["loss"].view(-1)[-1] *= 1 + 1e-6
            return out

    monkeypatch.setitem(STRATEGIES, "broken", Broken)
    register(Broken)
    return "broken"


def case():
    return zoo.mlp(features=20, width=8, n=30, batch_size=7, dtype=torch.float64)


def test_reference_surface_and_line_have_the_fast_paths_layout():
    model, loss_fn, data = case()
    plane = cr.Plane.random(model, seed=0)
    grid = cr.Grid(np.linspace(-1, 1, 4), np.linspace(0, 1, 3))
    fast = cr.surface(model, loss_fn, data, plane, grid, metrics={"acc": zoo_accuracy})
    slow = cr.reference.surface(model, loss_fn, data, plane, grid, metrics={"acc": zoo_accuracy})
    assert fast.loss.dims == slow.loss.dims and set(fast.data_vars) == set(slow.data_vars)
    for name in fast.data_vars:
        assert_close(fast[name].values, slow[name].values, rtol=1e-9, label=name)
    line = cr.reference.line(model, loss_fn, data, plane, grid.axes[0])
    assert_close(
        cr.line(model, loss_fn, data, plane, grid.axes[0]).loss.values, line.loss.values, 1e-9
    )


def test_check_records_the_difference_and_catches_a_broken_strategy(broken):
    model, loss_fn, data = case()
    plane = cr.Plane.random(model, seed=0)
    grid = cr.Grid(np.linspace(-1, 1, 3), np.linspace(0, 1, 3))
    ok = cr.surface(model, loss_fn, data, plane, grid, strategy="loop", check=9)
    assert ok.attrs["check_points"] == 9 and ok.attrs["check_max_rel_diff"] < 1e-12
    quiet = cr.surface(model, loss_fn, data, plane, grid, strategy=broken)  # unchecked
    assert not np.array_equal(quiet.loss.values, ok.loss.values)
    with pytest.raises(cr.CrumpleError, match="broken strategy differs from the reference"):
        cr.surface(model, loss_fn, data, plane, grid, strategy=broken, check=9)


def test_check_refuses_a_bad_count():
    model, loss_fn, data = case()
    with pytest.raises(cr.CrumpleError, match="check must be a number of points"):
        cr.line(model, loss_fn, data, cr.Plane.random(model, ndim=1), [0.0], check=-1)


def zoo_accuracy(pred, y):
    return (pred.argmax(-1) == y).to(pred.dtype).mean()


def test_reference_points_take_any_weights():
    net = torch.nn.Linear(1, 1, bias=False)
    data = (torch.ones(3, 1), torch.zeros(3, 1))
    w = [{"weight": torch.full((1, 1), v)} for v in (1.0, 2.0)]
    assert cr.reference.points(net, {"loss": F.mse_loss}, data, w) == {"loss": [1.0, 4.0]}
