"""Every registered strategy against the reference loop in float64, on the model types
researchers study (crumple.examples.zoo), and the plain loop's promise: nothing intercepted."""

import numpy as np
import pytest
import torch

import crumple as cr
from crumple.evaluation import STRATEGIES
from crumple.evaluation.kernels import Kernels
from crumple.examples import zoo
from tests.cases import assert_close, assert_untouched, snapshot

F64 = {"dtype": torch.float64}
CASES = {
    "resnet": lambda: zoo.resnet(widths=(4, 8), n=40, batch_size=16, **F64),
    "transformer": lambda: zoo.transformer(n=40, batch_size=16, **F64),
    "lstm": lambda: zoo.lstm(n=40, batch_size=16, **F64),
    "tied_lm": lambda: zoo.tied_lm(vocab=16, d_model=8, seq_len=6, n=20, batch_size=8, **F64),
    "mlp": lambda: zoo.mlp(features=130, width=16, n=40, batch_size=16, **F64),
    "cnn": lambda: zoo.cnn(channels=(2, 3), size=6, n=40, batch_size=16, **F64),
}
GRID = cr.Grid(np.linspace(-1, 1, 3), np.linspace(-0.5, 1.0, 4))


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    return request.param, CASES[request.param]()


@pytest.fixture(scope="module")
def expected(case):
    name, (model, loss_fn, data) = case
    plane = cr.Plane.random(model, seed=0)
    return plane, cr.reference.surface(model, loss_fn, data, plane, GRID)


@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("strategy", ["auto", *STRATEGIES])
def test_every_strategy_equals_the_reference(case, expected, strategy):
    name, (model, loss_fn, data) = case
    plane, slow = expected
    before = snapshot(model)
    with pytest.warns() if strategy == "vmap" and name in ("lstm", "tied_lm") else _none():
        ds = cr.surface(model, loss_fn, data, plane, GRID, strategy=strategy)
    assert_untouched(model, before)
    assert_close(ds.loss.values, slow.loss.values, rtol=1e-9, label=f"{name} {strategy}")
    assert ds.attrs["batching"] == "rebatch"


def test_line_and_check_on_a_tied_model():
    """A model whose output layer is its embedding (one parameter under two names)."""
    model, loss_fn, data = CASES["tied_lm"]()
    assert model.head.weight is model.embed.weight
    plane = cr.Plane.random(model, seed=2, ignore=None)
    alpha = np.linspace(-1, 1, 5)
    ds = cr.line(model, loss_fn, data, plane, alpha, strategy="loop", check=2)
    slow = cr.reference.line(model, loss_fn, data, plane, alpha)
    assert_close(ds.loss.values, slow.loss.values, rtol=1e-9, label="tied line")
    assert ds.attrs["check_points"] == 2 and ds.attrs["check_max_rel_diff"] < 1e-9


def test_batch_dependent_model_is_evaluated_on_the_users_batches():
    model, loss_fn, data = zoo.batch_dependent(width=8, n=40, batch_size=16, **F64)
    plane = cr.Plane.random(model, seed=1)
    slow = cr.reference.surface(model, loss_fn, data, plane, GRID)  # the user's own loop
    for strategy in ["auto", *STRATEGIES]:
        ds = cr.surface(model, loss_fn, data, plane, GRID, strategy=strategy)
        assert ds.attrs["batching"] == "user", strategy
        assert_close(ds.loss.values, slow.loss.values, rtol=1e-12, label=strategy)
    rebatched = cr.surface(model, loss_fn, data, plane, GRID, batching="rebatch")
    gap = np.max(np.abs(rebatched.loss.values - slow.loss.values) / slow.loss.values)
    assert gap > 1e-6  # what re-batching would have cost: the reason the probe exists


def test_the_plain_loop_intercepts_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(Kernels, "__enter__", lambda self: calls.append(self))
    model, loss_fn, data = CASES["mlp"]()
    plane = cr.Plane.random(model, seed=0)
    ds = cr.surface(model, loss_fn, data, plane, GRID, strategy="loop")
    assert ds.attrs["strategy"] == "loop" and calls == []


class _none:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
