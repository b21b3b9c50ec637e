"""Sharpness measures against their closed forms on an exact quadratic at its minimum, and
on an MLP on scikit-learn's digits: feasible perturbations whose loss is the one reported,
at least that of random feasible points, monotone in the radius, the model untouched."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import crumple as cr
from tests.cases import MLP, assert_untouched, digits, snapshot

INF = float("inf")


@pytest.fixture(scope="module")
def quadratic():
    """loss(w, b) = mean((X w + b - y)^2) with y = X w0 + b0 + e, the columns of X
    orthogonal to each other and to the ones, e orthogonal to all: the minimum is (w0, b0),
    L0 = |e|^2 / n and H = diag(1, 4, 9, 25, 2) exactly (the bias last)."""
    g = torch.Generator().manual_seed(0)
    n, d = 40, 4
    ones = torch.ones(n, 1, dtype=torch.float64)
    q, _ = torch.linalg.qr(
        torch.cat([ones, torch.randn(n, d + 1, dtype=torch.float64, generator=g)], 1)
    )
    X = q[:, 1 : d + 1] * torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=torch.float64) * math.sqrt(n / 2)
    e = q[:, d + 1 :] * 0.7
    model = nn.Linear(d, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -0.5, 0.8, -0.2]]))
        model.bias.fill_(0.4)
        y = model(X) + e
    w = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    lam = torch.tensor([1.0, 4.0, 9.0, 25.0, 2.0], dtype=torch.float64)
    return model, (X, y), w, lam, float((e**2).mean())


def flat(params):
    return torch.cat([params["weight"].reshape(-1), params["bias"]])


def test_epsilon_sharpness_at_a_quadratic_minimum_is_the_corner(quadratic):
    model, data, w, lam, L0 = quadratic
    before = snapshot(model)
    for epsilon in (1e-3, 1e-2):
        s = cr.hessian.epsilon_sharpness(model, F.mse_loss, data, epsilon)
        r = epsilon * (w.abs() + 1)
        exact = float(0.5 * (lam * r**2).sum())
        assert s.increase == pytest.approx(exact, rel=1e-8)
        assert s.loss == pytest.approx(L0, rel=1e-12)
        assert s.value == pytest.approx(100 * exact / (1 + L0), rel=1e-8)
        np.testing.assert_allclose(flat(s.perturbation).abs(), r, rtol=1e-12)  # a corner
        assert 1 <= s.steps <= 20 and s.epsilon == epsilon
    assert_untouched(model, before)


@pytest.mark.parametrize("eta", [0.0, 0.01])
def test_adaptive_linf_sharpness_at_a_quadratic_minimum_is_the_corner(quadratic, eta):
    model, data, w, lam, _ = quadratic
    s = cr.hessian.adaptive_sharpness(model, F.mse_loss, data, 0.05, INF, eta=eta)
    r = 0.05 * (w.abs() + eta)
    assert s.value == pytest.approx(float(0.5 * (lam * r**2).sum()), rel=1e-8)
    np.testing.assert_allclose(flat(s.perturbation).abs(), r, rtol=1e-12)
    assert (s.rho, s.p, s.eta) == (0.05, INF, eta)


def test_adaptive_l2_sharpness_at_a_quadratic_minimum_is_the_top_eigenvalue(quadratic):
    """max over ||delta / |w| ||_2 <= rho of delta^T H delta / 2 = rho^2 lambda_max(T H T) / 2
    with T = diag(|w|), along that eigenvector."""
    model, data, w, lam, _ = quadratic
    T = torch.diag(w.abs())
    values, vectors = torch.linalg.eigh(T @ torch.diag(lam) @ T)
    for rho in (0.1, 1.0):
        s = cr.hessian.adaptive_sharpness(model, F.mse_loss, data, rho, 2, steps=200)
        assert s.value == pytest.approx(0.5 * rho**2 * float(values[-1]), rel=1e-8)
        u = flat(s.perturbation) / w.abs()
        assert float(u.norm()) == pytest.approx(rho, rel=1e-12)
        assert abs(float(u @ vectors[:, -1])) == pytest.approx(rho, rel=1e-6)
        assert s.steps < 200  # it stopped where the step no longer moved


def test_sharpness_side_by_side_on_the_quadratic(quadratic):
    model, data, w, lam, L0 = quadratic
    s = cr.hessian.sharpness(model, F.mse_loss, data, epsilon=1e-3, rho=0.01, p=INF, probes=4)
    assert s.eigenvalue == pytest.approx(25.0, rel=1e-10)
    assert s.trace == pytest.approx(41.0, rel=1e-12) and s.trace_stderr < 1e-10  # z^T H z = tr H
    assert s.epsilon.increase == pytest.approx(
        float(0.5 * (lam * (1e-3 * (w.abs() + 1)) ** 2).sum())
    )
    assert s.adaptive.value == pytest.approx(float(0.5 * (lam * (0.01 * w.abs()) ** 2).sum()))
    row = s.as_dict()
    assert all(isinstance(v, float) for v in row.values())
    assert row["loss"] == pytest.approx(L0) and row["lambda_max"] == s.eigenvalue
    assert (row["epsilon"], row["rho"], row["p"], row["eta"]) == (1e-3, 0.01, INF, 0.0)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = MLP().double().eval()
    x, y = digits(150)
    return model, [(x[:90], y[:90]), (x[90:], y[90:])], (x, y)  # uneven batches


def mean_loss(model, x, y, delta=None):
    """The mean cross-entropy at the model's weights plus ``delta``, computed directly."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    for n, d in (delta or {}).items():
        params[n] = params[n] + d
    with torch.no_grad():
        return float(F.cross_entropy(functional_call(model, params, (x,)), y))


def flatten(model, params):
    return torch.cat([params[n].reshape(-1) for n, _ in model.named_parameters()])


def unflatten(model, vector):
    out, start = {}, 0
    for n, q in model.named_parameters():
        out[n] = vector[start : start + q.numel()].view_as(q)
        start += q.numel()
    return out


def random_points(model, scale, radius, p, count=4):
    """Random feasible perturbations ``delta = scale(w) * u``, ``||u||_p <= radius``: for a
    box, uniform points and random corners; for a ball, points on its sphere."""
    g = torch.Generator().manual_seed(1)  # not the ascent's seed
    w = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
    for j in range(count):
        u = torch.randn(len(w), dtype=w.dtype, generator=g)
        if p == INF:
            u = u.sign() if j % 2 else torch.rand(len(w), dtype=w.dtype, generator=g) * 2 - 1
            u = u * radius
        else:
            u = u * radius / u.norm()
        yield unflatten(model, scale(w) * u)


def measure(kind, model, data, radius):
    """The measure, its increase of the loss, the normalisation ``c(w)`` and the norm."""
    if kind == "epsilon":
        s = cr.hessian.epsilon_sharpness(model, F.cross_entropy, data, radius, steps=8)
        return s, s.increase, lambda w: w.abs() + 1, INF
    p = 2 if kind == "adaptive-l2" else INF
    s = cr.hessian.adaptive_sharpness(model, F.cross_entropy, data, radius, p, steps=8)
    return s, s.value, torch.abs, p


RADII = {
    "epsilon": (1e-3, 4e-3, 1.6e-2),
    "adaptive-l2": (0.1, 0.4, 1.6),
    "adaptive-linf": (1e-3, 4e-3, 1.6e-2),
}


@pytest.mark.parametrize("kind", RADII)
def test_on_an_mlp_the_ascent_is_feasible_consistent_and_beats_random_points(mlp, kind):
    model, data, (x, y) = mlp
    before = snapshot(model)
    L0 = mean_loss(model, x, y)
    w = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
    increases = []
    for radius in RADII[kind]:
        s, increase, scale, p = measure(kind, model, data, radius)
        assert s.loss == pytest.approx(L0, rel=1e-12)
        # the loss at the perturbation found, computed directly, is the one reported
        assert mean_loss(model, x, y, s.perturbation) - L0 == pytest.approx(increase, rel=1e-9)
        u = flatten(model, s.perturbation) / scale(w)
        assert float(u.norm(p)) <= radius * (1 + 1e-12), "outside the set"
        for delta in random_points(model, scale, radius, p):
            assert increase >= mean_loss(model, x, y, delta) - L0
        assert increase > 0 and 1 <= s.steps <= 8
        increases.append(increase)
    assert increases[0] < increases[1] < increases[2], increases
    assert_untouched(model, before)


def test_only_trainable_parameters_are_perturbed(mlp):
    model, data, (x, y) = mlp
    frozen = MLP().double().eval()
    frozen.load_state_dict(model.state_dict())
    frozen.net[1].requires_grad_(False)
    before = snapshot(frozen)
    for s in (
        cr.hessian.epsilon_sharpness(frozen, F.cross_entropy, data, 1e-2),
        cr.hessian.adaptive_sharpness(frozen, F.cross_entropy, data, 0.5),
    ):
        assert set(s.perturbation) == {"net.4.weight", "net.4.bias"}
        assert (s.value > 0) and mean_loss(frozen, x, y, s.perturbation) > s.loss
    assert_untouched(frozen, before)


def test_sharpness_gives_what_eigen_trace_and_each_measure_give(mlp):
    model, data, _ = mlp
    before = snapshot(model)
    s = cr.hessian.sharpness(model, F.cross_entropy, data, steps=8, probes=6, seed=3)
    assert_untouched(model, before)
    top = cr.hessian.eigen(model, F.cross_entropy, data, k=1, seed=3)
    t = cr.hessian.trace(model, F.cross_entropy, data, probes=6, seed=3)
    assert s.eigenvalue == pytest.approx(float(top.eigenvalues[0]), rel=1e-8)
    assert s.trace == pytest.approx(t.estimate, rel=1e-10)
    assert s.trace_stderr == pytest.approx(t.stderr, rel=1e-8)
    e = cr.hessian.epsilon_sharpness(model, F.cross_entropy, data, 1e-3, steps=8, seed=3)
    a = cr.hessian.adaptive_sharpness(model, F.cross_entropy, data, 0.5, 2, steps=8, seed=3)
    assert s.epsilon.value == pytest.approx(e.value, rel=1e-10)
    assert s.adaptive.value == pytest.approx(a.value, rel=1e-10)
    assert (s.epsilon.epsilon, s.adaptive.rho, s.adaptive.p) == (1e-3, 0.5, 2.0)
    assert set(s.as_dict()) >= {"lambda_max", "trace", "epsilon_sharpness", "adaptive_sharpness"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epsilon": 0}, "epsilon must be a positive number"),
        ({"epsilon": -1e-3}, "epsilon must be a positive number"),
        ({"epsilon": float("nan")}, "epsilon must be a positive number"),
        ({"epsilon": "1e-3"}, "epsilon must be a positive number"),
        ({"rho": 0.0}, "rho must be a positive number"),
        ({"rho": True}, "rho must be a positive number"),
        ({"p": 1}, r"p must be 2 \(a ball\) or float\('inf'\)"),
        ({"p": "inf"}, r"p must be 2 \(a ball\) or float\('inf'\)"),
        ({"steps": 0}, "steps must be a whole number >= 1"),
        ({"steps": 2.5}, "steps must be a whole number >= 1"),
        ({"eta": -0.01}, "eta must be a number >= 0"),
    ],
)
def test_bad_arguments_are_refused_clearly(options, message):
    model = nn.Linear(2, 1).double()
    data = (torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64))
    with pytest.raises(cr.CrumpleError, match=message):
        cr.hessian.sharpness(model, F.mse_loss, data, **options)
    single = {k: v for k, v in options.items() if k in ("epsilon", "steps")}
    if single:
        with pytest.raises(cr.CrumpleError, match=message):
            cr.hessian.epsilon_sharpness(model, F.mse_loss, data, **single)
    single = {k: v for k, v in options.items() if k in ("rho", "p", "eta", "steps")}
    if single:
        with pytest.raises(cr.CrumpleError, match=message):
            cr.hessian.adaptive_sharpness(model, F.mse_loss, data, **single)


def test_sharpness_builds_one_operator_and_takes_a_built_one(mlp, monkeypatch):
    model, data, _ = mlp
    built, init = [], cr.hessian.Hessian.__init__

    def counted(self, *args, **kwargs):
        built.append(kwargs)
        init(self, *args, **kwargs)

    monkeypatch.setattr(cr.hessian.Hessian, "__init__", counted)
    ticks = iter(range(10**6))  # the same timed choice of vmapped products every run
    monkeypatch.setattr(
        cr.hessian.operator, "time", SimpleNamespace(perf_counter=lambda: next(ticks))
    )
    options = {"steps": 4, "probes": 6, "seed": 3}
    s = cr.hessian.sharpness(model, F.cross_entropy, data, max_memory=2**28, **options)
    assert len(built) == 1 and built[0]["max_memory"] == 2**28  # one for all four measures
    H = cr.hessian.Hessian(model, F.cross_entropy, data)
    again = cr.hessian.sharpness(H, **options)
    assert len(built) == 2  # none beyond the one given
    assert again.as_dict() == s.as_dict()  # bit for bit
    assert all(
        torch.equal(again.epsilon.perturbation[n], t) for n, t in s.epsilon.perturbation.items()
    )
    e = cr.hessian.epsilon_sharpness(model, F.cross_entropy, data, 1e-3, steps=4)
    assert cr.hessian.epsilon_sharpness(H, epsilon=1e-3, steps=4).value == e.value
    a = cr.hessian.adaptive_sharpness(model, F.cross_entropy, data, 0.5, INF, steps=4)
    assert cr.hessian.adaptive_sharpness(H, rho=0.5, p=INF, steps=4).value == a.value
    assert len(built) == 4
    with pytest.raises(TypeError, match=r"loss_fn=0.5 cannot come beside it"):
        cr.hessian.adaptive_sharpness(H, 0.5)  # rho where loss_fn goes
    with pytest.raises(TypeError, match=r"dtype='float64' builds an operator"):
        cr.hessian.sharpness(H, dtype="float64")
