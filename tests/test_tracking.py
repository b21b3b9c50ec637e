"""Curvature tracked while a model trains (``Recorder(curvature=Tracking(...))``): each
measured value against the dense Hessian at the recorded snapshot, in float64."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from torch.func import functional_call

import crumple as cr
from crumple.errors import CrumpleError, CrumpleTypeError
from crumple.hessian import Tracking, stability_threshold
from crumple.hessian.lanczos import top_eigenpair
from crumple.history import read_rows
from crumple.names import CURVATURE_ROWS

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

D = torch.float64


# ---------------------------------------------------------------- helpers


def mlp(seed=0, width=6):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 1)).double()


class BNNet(nn.Module):
    """A small CNN with BatchNorm (its running statistics move in training)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 4 * 4, 1)

    def forward(self, x):
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


def data(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=D), torch.randn(n, 1, generator=g, dtype=D)


def images(n=16, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=D), torch.randn(n, 1, generator=g, dtype=D)


def trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def flat(model):
    parts = [p.detach().reshape(-1) for p in model.parameters() if p.requires_grad]
    return torch.cat(parts).clone()


def dense_hessian(model, loss_fn, x, y, weights=None, buffers=None):
    """The dense Hessian of ``loss_fn(model(x), y)`` in eval mode, by the flat trainable
    weights (``weights``/``buffers``: a snapshot's; default the model's)."""
    names = trainable(model)
    weights = {n: p.detach() for n, p in model.named_parameters()} if weights is None else weights
    buffers = {n: b.detach() for n, b in model.named_buffers()} if buffers is None else buffers
    shapes = [weights[n].shape for n in names]
    fixed = {n: t for n, t in weights.items() if n not in names}

    def loss(vector):
        parts, start = {}, 0
        for n, shape in zip(names, shapes):
            parts[n] = vector[start : start + shape.numel()].reshape(shape)
            start += shape.numel()
        return loss_fn(functional_call(model, {**parts, **fixed, **buffers}, (x,)), y)

    start = torch.cat([weights[n].reshape(-1).to(D) for n in names])
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return torch.autograd.functional.hessian(loss, start)
    finally:
        for m, mode in training.items():
            m.training = mode


def as64(tensors):
    return {n: t.to(D) if t.is_floating_point() else t for n, t in tensors.items()}


def top(matrix):
    return float(torch.linalg.eigvalsh(matrix)[-1])


def sgd_loop(model, x, y, tracking, steps, lr=0.05, every=1, to=None, optimizer=None):
    """Train ``steps`` full-batch steps with a Recorder measuring ``tracking``; the flat
    weights after each step (step 0: the initial ones) as kept by hand."""
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr)
    rec = cr.Recorder(model, every=every, to=to, curvature=tracking)
    weights = [flat(model)]
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        weights.append(flat(model))
        rec.record(loss=loss)
    return rec, weights


def mismatches(got, want, rtol, atol=0.0):
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    bad = ~np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    return [(int(k), float(got[k]), float(want[k])) for k in np.flatnonzero(bad)]


def rows_equal(a, b):
    """Rows equal bit for bit (nan equal to nan): the differing entries."""
    diff = []
    if len(a) != len(b):
        return [("rows", len(a), len(b))]
    for k, (r, s) in enumerate(zip(a, b)):
        for key in sorted(set(r) | set(s)):
            u, v = r.get(key), s.get(key)
            same = u == v or (
                isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v)
            )
            if not same:
                diff.append((k, key, u, v))
    return diff


# ---------------------------------------------------------------- 1. lambda_max, dense


def test_lambda_max_of_an_mlp_is_the_dense_top_eigenvalue_at_each_snapshot():
    model, (x, y) = mlp(), data()
    tracking = Tracking(F.mse_loss, (x, y), every=1)
    rec, _ = sgd_loop(model, x, y, tracking, steps=5, lr=0.3)
    s = rec.sharpness()
    assert s.step.values.tolist() == rec.trajectory.steps == [0, 1, 2, 3, 4, 5]
    want = []
    for k in range(len(rec.trajectory)):
        w = rec.trajectory.snapshot(k)
        want.append(top(dense_hessian(model, F.mse_loss, x, y, w, {})))
    bad = mismatches(s.lambda_max.values, want, rtol=1e-6)
    assert not bad, f"(step, tracked, dense) differ: {bad}"
    assert np.all(s.lambda_max_residual.values <= 1e-6), s.lambda_max_residual.values
    # the Hessian moved: a test of the warm start, not of a constant
    assert abs(want[-1] - want[0]) > 1e-3 * abs(want[0]), want


@pytest.mark.parametrize("model_dtype", [torch.float64, torch.float32])
def test_lambda_max_with_batchnorm_uses_the_running_statistics_of_its_step(model_dtype):
    # a float32 model measured in float64: the operator holds copies of the buffers, so
    # it must take the ones of each step (float64: they may alias the model's own)
    torch.manual_seed(3)
    model = BNNet().to(model_dtype)
    x, y = images()
    tracking = Tracking(F.mse_loss, (x, y), every=2, dtype=D)
    rec, _ = sgd_loop(model, x.to(model_dtype), y.to(model_dtype), tracking, steps=4, lr=0.1)
    assert model.training  # the loop trains in train mode; the measurements used eval mode
    t, s = rec.trajectory, rec.sharpness()
    assert s.step.values.tolist() == [0, 2, 4]
    dense, stale = [], []
    for step in s.step.values.tolist():
        k = t.steps.index(step)
        buffers = t.snapshot_buffers(k)
        assert int(buffers["bn.num_batches_tracked"]) == step
        weights = as64(t.snapshot(k))
        dense.append(top(dense_hessian(model, F.mse_loss, x, y, weights, as64(buffers))))
        first = as64(t.snapshot_buffers(0))
        stale.append(top(dense_hessian(model, F.mse_loss, x, y, weights, first)))
    bad = mismatches(s.lambda_max.values, dense, rtol=1e-6)
    assert not bad, f"(row, tracked, dense with that step's buffers) differ: {bad}"
    # the buffers matter: those of step 0 give another value at step 4
    assert abs(stale[-1] - dense[-1]) > 1e-4 * abs(dense[-1]), (stale, dense)


# ---------------------------------------------------------------- 2. directional


@pytest.mark.parametrize("every", [1, 3])
def test_directional_is_the_curvature_along_the_last_update(every):
    model, (x, y) = mlp(seed=4), data()
    tracking = Tracking(F.mse_loss, (x, y), every=every)
    rec, weights = sgd_loop(model, x, y, tracking, steps=6, lr=0.2)
    s = rec.sharpness()
    steps = s.step.values.tolist()
    assert steps == list(range(0, 7, every))
    assert math.isnan(float(s.directional.sel(step=0)))
    got, want = [], []
    for step in steps[1:]:
        d = weights[step] - weights[step - 1]
        k = rec.trajectory.steps.index(step)
        h = dense_hessian(model, F.mse_loss, x, y, rec.trajectory.snapshot(k), {})
        got.append(float(s.directional.sel(step=step)))
        want.append(float(d @ h @ d / (d @ d)))
    bad = mismatches(got, want, rtol=1e-8, atol=1e-12)
    assert not bad, f"(row, tracked, d^T H d / d^T d) differ: {bad}"


# ---------------------------------------------------------------- 3. warm start


def test_warm_and_cold_starts_agree_and_the_warm_one_takes_fewer_products():
    x, y = data()
    runs = {}
    for warm in (True, False):
        tracking = Tracking(F.mse_loss, (x, y), every=1, warm=warm, directional=False)
        rec, _ = sgd_loop(mlp(seed=5, width=8), x, y, tracking, steps=6, lr=0.05)
        runs[warm] = rec.sharpness()
    bad = mismatches(runs[True].lambda_max.values, runs[False].lambda_max.values, rtol=1e-6)
    assert not bad, f"(step, warm, cold) differ: {bad}"
    warm, cold = (int(runs[w].products.values.sum()) for w in (True, False))
    assert warm < cold, (runs[True].products.values, runs[False].products.values)
    # step 0 starts cold in both
    assert runs[True].products.values[0] == runs[False].products.values[0]


# ---------------------------------------------------------------- 4. optimizers


def test_adam_preconditioned_top_eigenvalue_and_threshold():
    model, (x, y) = mlp(seed=6), data()
    lr = 0.01
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    tracking = Tracking(F.mse_loss, (x, y), every=1, optimizer=opt)
    rec = cr.Recorder(model, curvature=tracking)
    want = [math.nan]  # no preconditioner before the first step
    for _ in range(4):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        rec.record(loss=loss)
        h = dense_hessian(model, F.mse_loss, x, y)
        scale = []
        for p in model.parameters():
            state = opt.state[p]
            t = float(state["step"])
            v_hat = state["exp_avg_sq"] / (1 - 0.999**t)
            scale.append(((1 - 0.9**t) * (v_hat.sqrt() + 1e-8)).rsqrt().reshape(-1))
        scale = torch.cat(scale)
        want.append(top(scale[:, None] * h * scale[None, :]))
    s = rec.sharpness()
    bad = mismatches(s.preconditioned.values, want, rtol=1e-6)
    assert not bad, f"(step, tracked, dense P^-1/2 H P^-1/2) differ: {bad}"
    assert s.threshold.values == pytest.approx([38 / lr] * 5, rel=1e-12)
    assert s.attrs["optimizer"] == "Adam"


SGD_CASES = [
    ({"lr": 0.1}, 2 / 0.1),
    ({"lr": 0.1, "momentum": 0.9}, (2 + 1.8) / 0.1),
    ({"lr": 0.1, "momentum": 0.9, "dampening": 0.5}, (2 + 1.8) / (0.5 * 0.1)),
    ({"lr": 0.1, "momentum": 0.9, "nesterov": True}, (2 + 1.8) / ((1 + 1.8) * 0.1)),
    ({"lr": 0.2, "weight_decay": 0.01}, 2 / 0.2 - 0.01),
    ({"lr": 0.1, "momentum": 0.5, "weight_decay": 0.1}, (2 + 1.0) / 0.1 - 0.1),
]


@pytest.mark.parametrize(("settings", "expected"), SGD_CASES)
def test_sgd_thresholds_follow_the_hand_formulas(settings, expected):
    torch.manual_seed(0)
    net = nn.Linear(2, 1).double()
    x, y = torch.randn(8, 2, dtype=D), torch.randn(8, 1, dtype=D)
    opt = torch.optim.SGD(net.parameters(), **settings)
    rec = cr.Recorder(net, curvature=Tracking(F.mse_loss, (x, y), every=1, optimizer=opt))
    row = rec.trajectory.curvature[0]
    assert row["threshold"] == pytest.approx(expected, rel=1e-12), (settings, row)
    assert "preconditioned" not in row
    assert stability_threshold(opt)[0] == pytest.approx(expected, rel=1e-12)


def test_threshold_follows_the_learning_rate_now_and_nan_for_mixed_groups():
    net, (x, y) = mlp(seed=7), data()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    rec = cr.Recorder(net, curvature=Tracking(F.mse_loss, (x, y), every=1, optimizer=opt))
    opt.param_groups[0]["lr"] = 0.05  # a scheduler's step
    rec.record(loss=1.0)
    assert [r["threshold"] for r in rec.trajectory.curvature] == pytest.approx([20.0, 40.0])
    mixed = torch.optim.SGD(
        [{"params": net[0].parameters(), "lr": 0.1}, {"params": net[2].parameters(), "lr": 0.2}]
    )
    assert math.isnan(stability_threshold(mixed)[0])


# ---------------------------------------------------------------- 5. trace


def test_trace_estimate_is_within_a_few_standard_errors_of_the_dense_trace():
    model, (x, y) = mlp(seed=8), data()
    rec = cr.Recorder(model, curvature=Tracking(F.mse_loss, (x, y), every=1, trace=300))
    row = rec.trajectory.curvature[0]
    exact = float(torch.trace(dense_hessian(model, F.mse_loss, x, y)))
    assert row["trace_stderr"] > 0
    assert abs(row["trace"] - exact) < 4 * row["trace_stderr"], (row, exact)
    assert row["trace_stderr"] < 0.2 * abs(exact), (row, exact)  # large N: a tight estimate
    assert row["products"] >= 300


# ---------------------------------------------------------------- 6. on disk


def test_rows_streamed_to_the_folder_equal_those_of_an_identical_run_in_memory(tmp_path):
    x, y = data()
    folder = tmp_path / "run"
    runs = {}
    for to in (None, folder):
        model = mlp(seed=9)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        tracking = Tracking(F.mse_loss, (x, y), every=2, optimizer=opt)
        runs[to] = sgd_loop(model, x, y, tracking, steps=5, every=3, to=to, optimizer=opt)[0]
    memory, disk = runs[None], runs[folder]
    on_file = [row for _, row in read_rows(folder / CURVATURE_ROWS)]
    assert [r["step"] for r in on_file] == [0, 2, 4]
    diff = rows_equal(on_file, memory.trajectory.curvature)
    assert not diff, f"(row, key, file, memory) differ: {diff}"
    diff = rows_equal(disk.trajectory.curvature, memory.trajectory.curvature)
    assert not diff, f"(row, key, disk run, memory run) differ: {diff}"
    loaded = cr.Trajectory.load(folder)
    assert loaded.steps == memory.trajectory.steps == [0, 3]
    xr.testing.assert_equal(loaded.sharpness(), memory.sharpness())
    xr.testing.assert_equal(disk.sharpness(), memory.sharpness())


def test_a_half_written_last_curvature_row_is_left_out_and_a_damaged_one_named(tmp_path):
    model, (x, y) = mlp(seed=10), data()
    folder = tmp_path / "run"
    sgd_loop(model, x, y, Tracking(F.mse_loss, (x, y), every=1), steps=3, to=folder)
    file = folder / CURVATURE_ROWS
    whole = file.read_text()
    lines = whole.splitlines(keepends=True)
    assert len(lines) == 4
    file.write_text(whole + lines[-1].replace("3", "4", 1)[:25])  # a run stopped mid-line
    with pytest.warns(UserWarning, match="half-written"):
        loaded = cr.Trajectory.load(folder)
    assert [r["step"] for r in loaded.curvature] == [0, 1, 2, 3]
    file.write_text(lines[0] + '{"step": 1, "loss": 0.5, "lambda_max": "x"}\n' + "".join(lines[2:]))
    with pytest.raises(CrumpleError, match=rf"{CURVATURE_ROWS}'?, line 2"):
        cr.Trajectory.load(folder)
    file.write_text(lines[0] + lines[1][:20] + "\n" + "".join(lines[2:]))  # cut, then more
    with pytest.raises(CrumpleError, match=rf"{CURVATURE_ROWS}'?, line 2"):
        cr.Trajectory.load(folder)


# ---------------------------------------------------------------- 7. training batch


def test_curvature_on_the_training_batch_is_that_of_the_batch():
    model = mlp(seed=11)
    x, y = data(n=40)
    batches = [(x[k : k + 10], y[k : k + 10]) for k in range(0, 40, 10)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = cr.Recorder(model, curvature=Tracking(F.mse_loss, every=1))
    want = {}
    for step, (xb, yb) in enumerate(batches, 1):
        opt.zero_grad()
        loss = F.mse_loss(model(xb), yb)
        loss.backward()
        opt.step()
        rec.record(loss=loss, batch=(xb, yb))
        want[step] = top(dense_hessian(model, F.mse_loss, xb, yb))
        whole = top(dense_hessian(model, F.mse_loss, x, y))
        assert abs(whole - want[step]) > 1e-6 * abs(whole)  # the batch is not all the data
    s = rec.sharpness()
    steps = s.step.values.tolist()
    assert set(want) <= set(steps) <= {0, *want}, steps  # step 0 has no batch to measure on
    got = [float(s.lambda_max.sel(step=k)) for k in want]
    bad = mismatches(got, list(want.values()), rtol=1e-6)
    assert not bad, f"(row, tracked, dense on the batch) differ: {bad}"
    assert s.attrs["data"] == "the training batch"


def test_a_due_step_recorded_without_its_batch_is_refused():
    rec = cr.Recorder(mlp(seed=12), curvature=Tracking(F.mse_loss, every=2))
    rec.record(loss=1.0)  # step 1: not due, no batch needed
    with pytest.raises(CrumpleError, match=r"batch="):
        rec.record(loss=1.0)  # step 2: due


# ---------------------------------------------------------------- 8. refusals


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"every": 0}, CrumpleError, "every must be a whole number >= 1"),
        ({"every": 2.0}, CrumpleError, "every must be a whole number"),
        ({"trace": 1}, CrumpleError, "at least 2 probes, got 1"),
        ({"trace": -3}, CrumpleError, "trace must be a whole number"),
        ({"tol": 2.0}, CrumpleError, "tol must be a float between 0 and 1, got 2.0"),
        ({"tol": 0.0}, CrumpleError, "tol must be a float between 0 and 1"),
        ({"most": 0}, CrumpleError, "most must be a whole number >= 1"),
        ({"warm": 1}, CrumpleTypeError, "warm must be True or False"),
        ({"optimizer": "sgd"}, CrumpleTypeError, "optimizer must be a torch.optim.Optimizer"),
    ],
)
def test_bad_settings_are_refused_when_made(options, error, match):
    with pytest.raises(error, match=match):
        Tracking(F.mse_loss, data(), **options)


@pytest.mark.parametrize("loss_fn", [3, "mse", None])
def test_a_loss_that_is_not_a_function_is_refused(loss_fn):
    with pytest.raises(CrumpleError, match="loss"):
        Tracking(loss_fn, data())


def cdist_loss(pred, y):
    return torch.cdist(pred, y).mean()


def test_a_loss_without_second_derivative_is_refused_when_the_recorder_is_made(tmp_path):
    model, (x, y) = mlp(seed=13), data()
    folder = tmp_path / "run"
    with pytest.raises(CrumpleError, match="not twice differentiable.*cdist"):
        cr.Recorder(model, to=folder, curvature=Tracking(cdist_loss, (x, y)))
    assert not folder.exists()  # refused before anything was written


class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1).double()

    def forward(self, x):
        return self.lin(x).detach()


def test_a_detached_loss_is_refused_when_the_recorder_is_made():
    with pytest.raises(CrumpleError, match="does not depend on the trainable parameters"):
        cr.Recorder(Detached(), curvature=Tracking(F.mse_loss, data()))


# ---------------------------------------------------------------- 9. untouched


class Busy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 5)
        self.bn = nn.BatchNorm1d(5)
        self.drop = nn.Dropout(0.5)
        self.frozen = nn.Linear(5, 5)
        self.out = nn.Linear(5, 1)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.out(self.frozen(self.drop(torch.tanh(self.bn(self.lin(x))))))


def state_of(model):
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
    }


def untouched(before, after):
    """The entries that differ (bit for bit) between two :func:`state_of`."""
    diff = []
    for part in ("params", "buffers", "grads"):
        for n in before[part]:
            a, b = before[part][n], after[part][n]
            same = (a is None and b is None) or (
                a is not None and b is not None and a.dtype == b.dtype and torch.equal(a, b)
            )
            if not same:
                diff.append(f"{part}:{n}")
    for part in ("training", "requires_grad"):
        diff += [f"{part}:{n}" for n in before[part] if before[part][n] != after[part][n]]
    return diff


def test_measurements_leave_the_model_untouched():
    torch.manual_seed(14)
    model = Busy().double().train()
    x, y = data(n=20)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    tracking = Tracking(F.mse_loss, (x, y), every=1, trace=4, optimizer=opt)
    before, rng = state_of(model), torch.get_rng_state()
    rec = cr.Recorder(model, curvature=tracking)  # measures step 0
    assert len(rec.trajectory.curvature) == 1
    diff = untouched(before, state_of(model))
    assert not diff, f"changed by the measurement at step 0: {diff}"
    assert torch.equal(rng, torch.get_rng_state()), "the global RNG moved"
    opt.zero_grad()
    loss = F.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    before, rng = state_of(model), torch.get_rng_state()
    assert before["grads"]["lin.weight"] is not None
    rec.record(loss=loss)  # measures step 1, with Adam's preconditioner
    assert not math.isnan(rec.trajectory.curvature[-1]["preconditioned"])
    diff = untouched(before, state_of(model))
    assert not diff, f"changed by the measurement at step 1: {diff}"
    assert torch.equal(rng, torch.get_rng_state()), "the global RNG moved"


# ---------------------------------------------------------------- 10. off


def test_a_recorder_without_curvature_records_what_it_did_before(tmp_path):
    x, y = data()
    runs = {}
    for name, tracking in (("off", None), ("on", Tracking(F.mse_loss, (x, y), every=2))):
        rec, _ = sgd_loop(mlp(seed=15), x, y, tracking, steps=5, every=2, to=tmp_path / name)
        rec.finish()
        runs[name] = rec
    off, on = runs["off"], runs["on"]
    assert off.sharpness() is None
    assert off.trajectory.curvature == []
    assert not (tmp_path / "off" / CURVATURE_ROWS).exists()
    assert on.sharpness() is not None
    assert off.trajectory.steps == on.trajectory.steps == [0, 2, 4, 5]
    np.testing.assert_array_equal(off.trajectory.losses, on.trajectory.losses)
    for k in range(len(off.trajectory)):
        a, b = off.trajectory.snapshot(k), on.trajectory.snapshot(k)
        diff = [n for n in a if not torch.equal(a[n], b[n])]
        assert not diff, f"snapshot {k} differs in {diff}"
    loaded = cr.Trajectory.load(tmp_path / "off")
    assert loaded.sharpness() is None and loaded.steps == [0, 2, 4, 5]


# ---------------------------------------------------------------- 11. Lanczos


def symmetric(eigenvalues, seed):
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=D)) @ q.T


def matrices():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 40, generator=g, dtype=D)
    yield "random", (a + a.T) / 2
    spread = np.linspace(-1, 1, 60).tolist()
    yield "negative dominant", symmetric([-100.0, *spread[1:-1], 3.0], seed=1)
    yield "all negative", symmetric(np.linspace(-50, -1, 30).tolist(), seed=2)
    yield "clustered top", symmetric([5.0, 5.0 - 1e-3, *np.linspace(-4, 4, 48)], seed=3)
    b = torch.randn(200, 200, generator=g, dtype=D)
    yield "larger", (b + b.T) / 2


@pytest.mark.parametrize(("name", "matrix"), list(matrices()))
def test_top_eigenpair_gives_the_largest_algebraic_eigenvalue(name, matrix):
    n = len(matrix)
    exact = float(torch.linalg.eigvalsh(matrix)[-1])
    start = torch.randn(n, generator=torch.Generator().manual_seed(7), dtype=D)
    got = top_eigenpair(lambda v: matrix @ v, start, 1e-12, n)
    assert got.value == pytest.approx(exact, rel=1e-10, abs=1e-10), (name, got.value, exact)
    assert got.residual <= 1e-12, (name, got.residual)
    assert float(got.vector.norm()) == pytest.approx(1.0, abs=1e-12)
    actual = float((matrix @ got.vector - got.value * got.vector).norm()) / abs(got.value)
    assert actual <= 1e-9, (name, actual)
    again = top_eigenpair(lambda v: matrix @ v, got.vector, 1e-8, n)
    assert again.products == 1, (name, again.products)
    assert again.value == pytest.approx(exact, rel=1e-10)


def test_top_eigenpair_of_the_zero_matrix_and_of_a_zero_start():
    zero = torch.zeros(5, 5, dtype=D)
    got = top_eigenpair(lambda v: zero @ v, torch.randn(5, dtype=D), 1e-10, 5)
    assert got.value == 0.0 and got.residual == 0.0 and got.products == 1
    a = symmetric([2.0, 1.0, -3.0], seed=4)
    got = top_eigenpair(lambda v: a @ v, torch.zeros(3, dtype=D), 1e-10, 3)
    assert got.value == pytest.approx(2.0, abs=1e-10)


def test_top_eigenpair_stops_at_most_products_with_its_residual():
    a = symmetric(np.linspace(0, 1, 100).tolist(), seed=5)  # a tiny gap: slow to converge
    got = top_eigenpair(lambda v: a @ v, torch.randn(100, dtype=D), 1e-14, 5)
    assert got.products == 5
    actual = float((a @ got.vector - got.value * got.vector).norm()) / abs(got.value)
    assert got.residual == pytest.approx(actual, rel=1e-6), (got.residual, actual)
    assert got.residual > 1e-14


def test_tracking_warns_when_most_is_too_few_and_records_the_residual():
    model, (x, y) = mlp(seed=16, width=10), data()
    with pytest.warns(UserWarning, match="did not reach the residual"):
        rec = cr.Recorder(model, curvature=Tracking(F.mse_loss, (x, y), most=2, tol=1e-10))
    row = rec.trajectory.curvature[0]
    assert row["lambda_max_residual"] > 1e-10
    assert row["products"] >= 2


def test_directional_is_nan_where_the_step_before_was_not_kept():
    # record(step=...) jumps: the weights kept at step 1 are not those one step before 4
    model, (x, y) = mlp(seed=17), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    rec = cr.Recorder(model, curvature=Tracking(F.mse_loss, (x, y), every=2))
    for step in (1, 4, 5, 6):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        rec.record(loss=1.0, step=step)
    s = rec.sharpness()
    assert s.step.values.tolist() == [0, 4, 6]
    directional = s.directional.values
    assert np.isnan(directional[:2]).all() and np.isfinite(directional[2]), directional


# --- what a sweep of new users found -------------------------------------------------------


def test_an_optimizer_of_another_model_is_refused():
    net = torch.nn.Linear(3, 1).double()
    other = torch.nn.Linear(3, 1)
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    track = Tracking(F.mse_loss, (x, y), optimizer=torch.optim.SGD(other.parameters(), lr=1.0))
    with pytest.raises(CrumpleError, match="trains none of the model's parameters"):
        cr.Recorder(net, curvature=track)


def test_eval_mode_is_noted_for_batchnorm_and_live_dropout_only():
    x, y = torch.randn(16, 4), torch.randn(16, 2)

    def attrs(*modules):
        net = torch.nn.Sequential(torch.nn.Linear(4, 2), *modules)
        return cr.Recorder(net, curvature=Tracking(F.mse_loss, (x, y))).sharpness().attrs

    assert "eval_mode" not in attrs(torch.nn.Dropout(0.0))
    assert "Dropout" in attrs(torch.nn.Dropout(0.3))["eval_mode"]
    noted = attrs(torch.nn.BatchNorm1d(2))["eval_mode"]
    assert "BatchNorm1d" in noted and "batch's statistics" in noted and "Adam" not in noted


def test_row_keys_that_are_not_curvature_never_become_variables(tmp_path):
    rows = '{"step": 0, "loss": 1.0, "lambda_max": 2.0, "../../x": 1.0, "a/b": 3.0}\n'
    (tmp_path / "curvature.jsonl").write_text(rows)
    from crumple.history import read_curvature, sharpness

    ds = sharpness(read_curvature(tmp_path))
    assert sorted(ds.data_vars) == ["lambda_max", "loss"]
    (tmp_path / "curvature.jsonl").write_text('{"step": 100000000000000000000000, "loss": 1}\n')
    with pytest.raises(CrumpleError, match="line 1: the step .* is not a whole number from 0"):
        read_curvature(tmp_path)


def test_a_threshold_at_a_learning_rate_of_zero_is_said_to_be_so():
    from crumple.plot.sharpness import history_facts

    ds = cr.Trajectory(
        curvature=[
            {"step": s, "loss": 1.0, "lambda_max": 2.0, "threshold": t}
            for s, t in ((0, 4.0), (1, 8.0), (2, math.inf))
        ]
    ).sharpness()
    said = history_facts(ds)["lambda_max"]
    assert "threshold inf (the learning rate is 0) at the last step" in said, said
