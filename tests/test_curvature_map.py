"""cr.surface(..., curvature=True): the extreme Hessian eigenvalues at each grid point,
against the dense Hessian at that point's weights, stored and resumed with the loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

import crumple as cr
from tests.cases import assert_untouched, digits, snapshot


def quadratic():
    """loss(w) = mean((X w - y)^2): H = 2 X^T X / n at every w."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 8, dtype=torch.float64, generator=g)
    y = torch.randn(60, 1, dtype=torch.float64, generator=g)
    torch.manual_seed(0)
    return nn.Linear(8, 1, bias=False).double(), (X, y), torch.linalg.eigvalsh(2 * X.T @ X / 60)


@pytest.mark.parametrize("dense_size", [0, 10_000])  # Lanczos, and dense for small blocks
def test_on_a_quadratic_every_point_has_the_constant_eigenvalues(dense_size, monkeypatch):
    monkeypatch.setattr(cr.hessian.spectrum, "DENSE_SIZE", dense_size)
    model, data, exact = quadratic()
    plane = cr.Plane.hessian(model, F.mse_loss, data)
    grid = cr.Grid(np.linspace(-1, 1, 4), np.linspace(-2, 2, 3))
    ds = cr.surface(model, F.mse_loss, data, plane, grid, curvature=True)
    lo, hi = float(exact[0]), float(exact[-1])
    np.testing.assert_allclose(ds.lambda_max.values, hi, rtol=1e-8)
    np.testing.assert_allclose(ds.lambda_min.values, lo, rtol=1e-8)
    np.testing.assert_allclose(ds.lambda_ratio.values, lo / hi, rtol=1e-7)
    assert ds.lambda_max.attrs["long_name"] == "largest Hessian eigenvalue"
    assert ds.attrs["curvature_failures"] == 0


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.Tanh(), nn.Linear(5, 10)).double()


def dense_extremes(model, weights, x, y):
    names = list(weights)
    shapes = [weights[n].shape for n in names]

    def loss(flat):
        params, start = {}, 0
        for n, s in zip(names, shapes):
            params[n] = flat[start : start + s.numel()].view(s)
            start += s.numel()
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    flat = torch.cat([weights[n].reshape(-1) for n in names])
    values = torch.linalg.eigvalsh(hessian(loss)(flat))
    return float(values[-1]), float(values[0])


@pytest.mark.slow
def test_each_point_equals_the_dense_hessian_there(monkeypatch):
    monkeypatch.setattr(cr.hessian.spectrum, "DENSE_SIZE", 0)  # Lanczos on 385 weights
    model = mlp()
    x, y = digits(80)
    data = [(x[:50], y[:50]), (x[50:], y[50:])]
    before = snapshot(model)
    plane = cr.Plane.random(model, seed=0)
    grid = cr.Grid(np.linspace(-0.5, 0.5, 3), np.linspace(-0.5, 0.5, 2))
    ds = cr.surface(model, F.cross_entropy, data, plane, grid, curvature={"tol": 1e-10})
    assert_untouched(model, before)
    for i, a in enumerate(grid.axes[0]):
        for j, b in enumerate(grid.axes[1]):
            top, bottom = dense_extremes(model, plane.at(float(a), float(b)), x, y)
            assert ds.lambda_max.values[i, j] == pytest.approx(top, rel=1e-8)
            assert ds.lambda_min.values[i, j] == pytest.approx(bottom, rel=1e-6, abs=1e-8 * top)


def test_the_map_is_stored_and_resumed(tmp_path):
    model, data, _ = quadratic()
    plane = cr.Plane.random(model, seed=1)
    grid = cr.Grid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 4))
    run = tmp_path / "run"
    first = cr.surface(
        model, F.mse_loss, data, plane, grid, curvature=True, store=run, chunk_size=4
    )
    again = cr.surface(model, F.mse_loss, data, plane, grid, curvature=True, store=run)
    assert again.attrs["tiles_computed"] == 0
    for name in ("loss", "lambda_max", "lambda_min", "lambda_ratio"):
        np.testing.assert_array_equal(again[name].values, first[name].values)
    with pytest.raises(cr.CrumpleError, match="made with other curvature"):
        cr.surface(model, F.mse_loss, data, plane, grid, store=run)


def test_bad_curvature_options_are_refused():
    model, data, _ = quadratic()
    plane = cr.Plane.random(model, seed=1)
    grid = cr.Grid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))
    with pytest.raises(cr.CrumpleError, match="curvature must be True, False or"):
        cr.surface(model, F.mse_loss, data, plane, grid, curvature="yes")
    with pytest.raises(cr.CrumpleError, match="curvature must be True, False or"):
        cr.surface(model, F.mse_loss, data, plane, grid, curvature={"tol": 2.0})
    with pytest.raises(cr.CrumpleError, match="not supported"):
        cr.surface(model, F.mse_loss, data, plane, grid, curvature=True, recalibrate=data)
