"""Curvature against the dense Hessian (torch.func.hessian + eigvalsh) in float64, on small
models where it fits: an MLP and a CNN with BatchNorm on scikit-learn's digits."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

import crumple as cr
from tests.cases import assert_untouched, digits, snapshot


def small_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10)).double()


def small_cnn():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(12, 10),
    ).double()  # fmt: skip
    x, _ = digits(64)
    with torch.no_grad():
        net.train()(x)  # running statistics of its own
    return net.eval()


def dense(model, x, y):
    """The exact mean loss's Hessian over the trainable parameters, as a matrix."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())

    def loss(flat):
        params, start = {}, 0
        for n, s in zip(names, shapes):
            params[n] = flat[start : start + s.numel()].view(s)
            start += s.numel()
        return F.cross_entropy(functional_call(model, (params, buffers), (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return hessian(loss)(flat)


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def case(request):
    model = small_mlp() if request.param == "mlp" else small_cnn()
    x, y = digits(96)
    data = [(x[:40], y[:40]), (x[40:], y[40:])]  # uneven batches: the mean weighs them
    H = dense(model, x, y)
    values, vectors = torch.linalg.eigh(H)
    return model, data, H, values, vectors


def test_hessian_vector_products_equal_the_dense_hessian(case):
    model, data, H, _, _ = case
    op = cr.hessian.Hessian(model, F.cross_entropy, data)
    v = torch.randn(len(op), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(op @ v, H @ v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_extreme_eigenpairs_equal_the_dense_ones(case, which, monkeypatch):
    monkeypatch.setattr(cr.hessian.spectrum, "DENSE_SIZE", 0)  # Lanczos on the whole model
    model, data, _, values, vectors = case
    before = snapshot(model)
    top = cr.hessian.eigen(model, F.cross_entropy, data, k=5, which=which)
    assert_untouched(model, before)
    idx = (
        torch.arange(len(values) - 1, len(values) - 6, -1)
        if which == "largest"
        else torch.arange(5)
    )
    expected = values[idx].numpy()
    rel = np.abs(top.eigenvalues - expected) / np.abs(expected).max()
    assert rel.max() < 1e-8, (top.eigenvalues, expected)
    assert top.residuals.max() < 1e-6
    gaps = np.abs(np.diff(values.numpy()))
    for j, k in enumerate(idx.tolist()):
        if min(gaps[max(k - 1, 0)], gaps[min(k, len(gaps) - 1)]) < 1e-6 * abs(values).max():
            continue  # a repeated eigenvalue: its eigenvector is not unique
        ours = torch.cat([t.reshape(-1) for t in top.eigenvectors[j].values()])
        theirs = vectors[:, k]
        assert min((ours - theirs).norm(), (ours + theirs).norm()) < 1e-6


def test_trace_is_within_three_standard_errors_of_the_exact_trace(case):
    model, data, H, _, _ = case
    exact = float(torch.trace(H))
    for seed in range(3):
        t = cr.hessian.trace(model, F.cross_entropy, data, probes=30, seed=seed)
        assert abs(t.estimate - exact) < 3 * t.stderr + 1e-9, (t, exact)
        assert t.probes == 30


def test_bad_arguments_are_refused_clearly():
    model = small_mlp()
    data = digits(16)
    n = sum(p.numel() for p in model.parameters())
    with pytest.raises(cr.CrumpleError, match="k must be a whole number from 1"):
        cr.hessian.eigen(model, F.cross_entropy, data, k=n + 1)
    with pytest.raises(cr.CrumpleError, match="which must be"):
        cr.hessian.eigen(model, F.cross_entropy, data, which="top")
    frozen = small_mlp().requires_grad_(False)
    with pytest.raises(cr.CrumpleError, match="no parameter that requires grad"):
        cr.hessian.trace(frozen, F.cross_entropy, data)
    with pytest.raises(cr.CrumpleError, match="probes must be"):
        cr.hessian.trace(model, F.cross_entropy, data, probes=1)


def test_on_a_quadratic_the_hessian_plane_surface_is_the_quadratic_form():
    """loss(w) = mean((X w - y)^2) with y = X w0 + e, e orthogonal to X's columns: the
    minimum is w0, L0 = |e|^2 / n, H = 2 X^T X / n, so along unit eigenvectors
    loss = L0 + (lambda_1 a^2 + lambda_2 b^2) / 2 exactly."""
    g = torch.Generator().manual_seed(0)
    n, d = 40, 6
    X = torch.randn(n, d, dtype=torch.float64, generator=g)
    q, _ = torch.linalg.qr(torch.cat([X, torch.randn(n, 1, dtype=torch.float64, generator=g)], 1))
    e = q[:, -1:] * 0.7  # orthogonal to the columns of X
    model = nn.Linear(d, 1, bias=False).double()
    y = X @ model.weight.detach().T + e
    data = (X, y)
    plane = cr.Plane.hessian(model, F.mse_loss, data, k=(0, 1))
    lam = plane.attrs["eigenvalues"]
    exact = torch.linalg.eigvalsh(2 * X.T @ X / n).flip(0)[:2].tolist()
    np.testing.assert_allclose(lam, exact, rtol=1e-10)
    assert plane.attrs["axis_names"][0].startswith("v1 (lambda = ")
    grid = cr.Grid(np.linspace(-1, 1, 5), np.linspace(-2, 2, 5))
    ds = cr.surface(model, F.mse_loss, data, plane, grid)
    a, b = np.meshgrid(grid.axes[0], grid.axes[1], indexing="ij")
    L0 = float((e**2).mean())
    np.testing.assert_allclose(
        ds.loss.values, L0 + 0.5 * (lam[0] * a**2 + lam[1] * b**2), rtol=1e-9
    )


@pytest.mark.slow
def test_density_integrates_to_one_and_its_moments_are_the_traces(case):
    model, data, H, _, _ = case
    n = H.shape[0]
    esd = cr.hessian.density(model, F.cross_entropy, data, probes=20, steps=30)
    assert np.trapezoid(esd.density.values, esd.eigenvalue.values) == pytest.approx(1, abs=1e-3)
    for k, exact in ((1, float(torch.trace(H)) / n), (2, float(torch.trace(H @ H)) / n)):
        per_probe = (esd.weights * esd.nodes**k).sum("node").values  # v^T H^k v, v unit
        stderr = per_probe.std(ddof=1) / np.sqrt(len(per_probe))
        assert abs(per_probe.mean() - exact) < 4 * stderr + 1e-9 * abs(exact), (k, exact)


def test_products_of_several_vectors_equal_one_at_a_time(case):
    model, data, H, _, _ = case
    op = cr.hessian.Hessian(model, F.cross_entropy, data)
    V = torch.randn(len(op), 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(op @ V, H @ V, rtol=1e-9, atol=1e-12)  # 1, then 1 + 8 timed, then 2
    np.testing.assert_allclose(op @ V[:, :3], H @ V[:, :3], rtol=1e-9, atol=1e-12)
    assert op.products == 15


@pytest.mark.parametrize("by", ["layer", "module", "parameter", "groups"])
def test_per_block_results_are_those_of_the_dense_diagonal_blocks(case, by):
    model, data, H, _, _ = case
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    starts = dict(zip(names, np.cumsum([0, *sizes[:-1]])))
    if by == "groups":
        by = {"first": [names[0]], "last": [names[-2], names[-1]]}
    found = cr.hessian.eigen(model, F.cross_entropy, data, k=3, which="both", by=by)
    traces = cr.hessian.trace(model, F.cross_entropy, data, probes=20, by=by, method="hutch++")
    expected_blocks = cr.hessian.blocks(names, by)
    assert list(found) == list(traces) == list(expected_blocks)
    for block, members in expected_blocks.items():
        index = np.concatenate(
            [np.arange(starts[n], starts[n] + p) for n, p in zip(names, sizes) if n in members]
        )
        sub = H[np.ix_(index, index)]
        exact = torch.linalg.eigvalsh(sub).numpy()
        count = min(6, len(exact))
        want = np.sort(np.r_[exact[::-1][: count // 2], exact[: count - count // 2]])[::-1]
        got = found[block].eigenvalues
        assert np.allclose(got, want, rtol=0, atol=1e-8 * max(abs(exact).max(), 1e-12)), block
        assert abs(traces[block].estimate - float(sub.trace())) <= 3 * traces[block].stderr + 1e-8


@pytest.mark.parametrize("dense_size", [0, pytest.param(10_000, marks=pytest.mark.slow)])
def test_both_ends_by_lanczos_and_densely(case, dense_size, monkeypatch):
    monkeypatch.setattr(cr.hessian.spectrum, "DENSE_SIZE", dense_size)
    model, data, _, values, _ = case
    found = cr.hessian.eigen(model, F.cross_entropy, data, k=2, which="both")
    v = values.numpy()
    expected = np.r_[v[-1], v[-2], v[1], v[0]]
    np.testing.assert_allclose(
        found.eigenvalues, expected, rtol=0, atol=1e-8 * float(values.abs().max())
    )


def test_hutch_plus_plus_is_within_three_standard_errors(case):
    model, data, H, _, _ = case
    exact = float(torch.trace(H))
    for seed in range(3):
        t = cr.hessian.trace(model, F.cross_entropy, data, probes=30, seed=seed, method="hutch++")
        assert abs(t.estimate - exact) < 3 * t.stderr + 1e-9, (t, exact)
        assert t.method == "hutch++" and t.probes == 30


def test_a_loss_that_is_not_twice_differentiable_is_refused():
    model, data = small_mlp(), digits(16)
    before = snapshot(model)
    with pytest.raises(cr.CrumpleError, match="not twice differentiable"):
        cr.hessian.trace(model, lambda p, y: torch.cdist(p, p).mean(), data)
    with pytest.raises(cr.CrumpleError, match="does not depend on the trainable parameters"):
        cr.hessian.eigen(model, lambda p, y: F.cross_entropy(p.detach(), y), data)
    with pytest.raises(cr.CrumpleError, match="by must be one of"):
        cr.hessian.trace(model, F.cross_entropy, data, by="row")
    with pytest.raises(cr.CrumpleError, match="names no trainable parameter"):
        cr.hessian.trace(model, F.cross_entropy, data, by={"a": ["fc"]})
    with pytest.raises(cr.CrumpleError, match="group 'a' is empty"):
        cr.hessian.trace(model, F.cross_entropy, data, by={"a": []})
    with pytest.raises(cr.CrumpleError, match="width must be a positive number"):
        cr.hessian.density(model, F.cross_entropy, data, width=-1.0)
    with pytest.raises(cr.CrumpleError, match="tol must be a float between 0 and 1"):
        cr.hessian.eigen(model, F.cross_entropy, data, tol=0.0)
    with pytest.raises(cr.CrumpleError, match="takes no which="):
        cr.Plane.hessian(model, F.cross_entropy, data, which="smallest")
    assert_untouched(model, before)
    found = cr.hessian.eigen(model, F.cross_entropy, data, k=np.int64(2), dtype="float64")
    assert len(found.eigenvalues) == 2


def test_attention_takes_its_differentiable_kernel():
    """The fused attention kernels have no second derivative; the math one is used."""
    from crumple.examples import zoo

    model, loss_fn, data = zoo.transformer(
        d_model=8, nhead=2, layers=1, dim_feedforward=16, n=24, batch_size=10, dtype=torch.float64
    )
    before = snapshot(model)
    top = cr.hessian.eigen(model, loss_fn, data, k=1, tol=1e-10)
    assert top.residuals[0] < 1e-8
    assert_untouched(model, before)


class Counted:
    """An iterable of batches that counts the times it is read (a DataLoader's epochs)."""

    def __init__(self, batches):
        self.batches, self.reads = batches, 0

    def __iter__(self):
        self.reads += 1
        return iter(self.batches)


@pytest.fixture
def constructions(monkeypatch):
    """The keyword arguments of each Hessian built from here on."""
    built, init = [], cr.hessian.Hessian.__init__

    def counted(self, *args, **kwargs):
        built.append(kwargs)
        init(self, *args, **kwargs)

    monkeypatch.setattr(cr.hessian.Hessian, "__init__", counted)
    return built


@pytest.fixture
def steady_clock(monkeypatch):
    """A clock that makes the operator's timed choice of vmapped products the same on
    every run, so that two runs multiply the same vectors in the same groups."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(
        cr.hessian.operator, "time", SimpleNamespace(perf_counter=lambda: next(ticks))
    )


def test_an_operator_built_once_serves_eigen_trace_and_density(constructions):
    model = small_mlp()
    x, y = digits(96)
    data = Counted([(x[:40], y[:40]), (x[40:], y[40:])])
    H = cr.hessian.Hessian(model, F.cross_entropy, data)
    assert (len(constructions), data.reads) == (1, 1) and H.keep_graphs
    cr.hessian.eigen(H, k=2, which="both")
    kept = H._pulls  # each batch's pullback, kept by the first product
    cr.hessian.trace(H, probes=10)
    cr.hessian.density(H, probes=2, steps=5)
    cr.hessian.trace(H, probes=4, by="layer")  # blocks are views of the same operator
    assert (len(constructions), data.reads) == (1, 1)  # held data
    assert kept is not None and H._pulls is kept  # the same pullbacks served them all


def test_max_memory_reaches_the_operator(constructions, monkeypatch):
    model = small_mlp()
    x, y = digits(96)
    batches = [(x[:40], y[:40]), (x[40:], y[40:])]
    size = sum(t.numel() * t.element_size() for b in batches for t in b)
    held = cr.hessian.Hessian(model, F.cross_entropy, batches)
    assert held.max_memory == 2 * 2**30 and not held.data.streamed and held.keep_graphs
    tight = cr.hessian.Hessian(model, F.cross_entropy, batches, max_memory=2 * size + 16)
    assert not tight.data.streamed and not tight.keep_graphs  # the graphs take more
    data = Counted(batches)
    streamed = cr.hessian.Hessian(model, F.cross_entropy, data, max_memory=1024)
    assert streamed.data.streamed and not streamed.keep_graphs
    passes, products = [], cr.hessian.Hessian._products
    monkeypatch.setattr(
        cr.hessian.Hessian,
        "_products",
        lambda h, rows: passes.append(h is streamed) or products(h, rows),
    )
    before = data.reads
    v = torch.randn(len(held), 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for op in (tight, streamed):
        np.testing.assert_allclose(op @ v, held @ v, rtol=1e-12, atol=1e-15)
    assert data.reads - before == sum(passes) > 0  # streamed: one read per pass, no more
    cr.hessian.trace(model, F.cross_entropy, batches, probes=2, max_memory=2 * size + 16)
    assert constructions[-1]["max_memory"] == 2 * size + 16


def test_operator_first_equals_model_first_bit_for_bit(steady_clock):
    model = small_mlp()
    x, y = digits(96)
    data = [(x[:40], y[:40]), (x[40:], y[40:])]

    def operator():
        return cr.hessian.Hessian(model, F.cross_entropy, data)

    for call, kwargs, field in (
        (cr.hessian.eigen, {"k": 2, "which": "both"}, "eigenvalues"),
        (cr.hessian.trace, {"probes": 20, "method": "hutch++"}, "estimate"),
        (cr.hessian.density, {"probes": 2, "steps": 10}, "density"),
    ):
        first = getattr(call(operator(), **kwargs), field)
        second = getattr(call(model, F.cross_entropy, data, **kwargs), field)
        assert np.array_equal(first, second), call.__name__
        per_block = call(operator(), by="layer", **kwargs)
        again = call(model, F.cross_entropy, data, by="layer", **kwargs)
        for block in again:
            assert np.array_equal(getattr(per_block[block], field), getattr(again[block], field))
    shared = operator()
    for call, kwargs, field in (
        (cr.hessian.eigen, {"k": 2}, "eigenvalues"),
        (cr.hessian.trace, {"probes": 20}, "estimate"),
        (cr.hessian.density, {"probes": 2, "steps": 10}, "density"),
    ):
        alone = getattr(call(model, F.cross_entropy, data, **kwargs), field)
        np.testing.assert_allclose(getattr(call(shared, **kwargs), field), alone, rtol=1e-12)
    top = cr.hessian.eigen(shared, k=1)
    assert top.products == cr.hessian.eigen(operator(), k=1).products  # this call's own
    plane = cr.hessian.hessian_plane(shared)
    same = cr.Plane.hessian(model, F.cross_entropy, data)
    assert plane.attrs == same.attrs
    for ours, theirs in zip((plane.origin, *plane.directions), (same.origin, *same.directions)):
        assert all(torch.equal(ours[n], theirs[n]) for n in theirs)


def test_an_operator_mixed_with_what_builds_one_is_refused():
    model = small_mlp()
    data = digits(16)
    H = cr.hessian.Hessian(model, F.cross_entropy, data)
    with pytest.raises(TypeError, match=r"loss_fn=.*cannot come beside it; call eigen\(H, k="):
        cr.hessian.eigen(H, F.cross_entropy, data)
    with pytest.raises(cr.CrumpleError, match=r"loss_fn=3 cannot come beside it"):
        cr.hessian.eigen(H, 3)  # k given where loss_fn goes
    with pytest.raises(TypeError, match=r"dtype='float32' builds an operator.*Hessian\(model"):
        cr.hessian.trace(H, dtype="float32")
    with pytest.raises(TypeError, match=r"max_memory=1024 builds an operator"):
        cr.hessian.density(H, max_memory=1024)
    with pytest.raises(TypeError, match=r"device='cpu' builds an operator"):
        cr.hessian.sharpness(H, device="cpu")
    with pytest.raises(TypeError, match=r"loss_fn and data missing: pass a Hessian built once"):
        cr.hessian.eigen(model, k=2)
    with pytest.raises(TypeError, match=r"data missing.*call epsilon_sharpness\(H, epsilon="):
        cr.hessian.epsilon_sharpness(model, F.cross_entropy)
