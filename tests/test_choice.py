"""The auto choice: it looks at the model first, times only when a real question is left,
keeps the timed values, and makes PyTorch print nothing for a strategy it does not use."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.evaluation import STRATEGIES
from crumple.examples import seed, zoo

GRID = cr.Grid(np.linspace(-1, 1, 4), np.linspace(-1, 1, 4))


def surface(case, **options):
    model, loss_fn, data = case
    return cr.surface(model, loss_fn, data, cr.Plane.random(model, seed=0), GRID, **options)


@pytest.mark.slow
def test_recurrent_and_attention_models_loop_without_timing_or_warnings(monkeypatch):
    timed = []
    vmap = STRATEGIES["vmap"].__call__
    monkeypatch.setattr(STRATEGIES["vmap"], "__call__", lambda s, p: timed.append(p) or vmap(s, p))
    cases = {
        "lstm": zoo.lstm(n=20, batch_size=10),
        "transformer": zoo.transformer(n=20, batch_size=10),
    }
    for name, case in cases.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = surface(case)
        assert ds.attrs["strategy"] == "loop", name
        assert 0 < ds.attrs["choice_seconds"] < ds.attrs["seconds"]
        assert "not vmap" in ds.attrs["strategy_reason"], ds.attrs["strategy_reason"]
        assert [str(w.message)[:80] for w in caught] == [], name
    assert timed == []


def test_wide_input_layers_make_the_loop_expanded_and_the_choice_is_timed():
    ds = surface(zoo.mlp(features=200, width=16, n=64, batch_size=32, dtype=torch.float64))
    assert "timed per point" in ds.attrs["strategy_reason"]
    assert "expanded" in ds.attrs["strategy_reason"]
    assert ds.attrs["choice_seconds"] >= 0


def test_the_timed_values_are_kept_and_equal_the_reference():
    model = seed.SeedNet().double()
    _, (x, y) = seed.split(*seed.make_data(400))
    data = (x.double(), y.double())
    plane = cr.Plane.axes(model, *seed.AXES)
    grid = cr.Grid(np.linspace(-2, 2, 20), np.linspace(-2, 2, 20))
    ds = cr.surface(model, F.mse_loss, data, plane, grid)
    assert ds.attrs["strategy"] == "vmap", ds.attrs["strategy_reason"]  # many points a call
    slow = cr.reference.surface(model, F.mse_loss, data, plane, grid)
    np.testing.assert_allclose(ds.loss.values, slow.loss.values, rtol=1e-12)
