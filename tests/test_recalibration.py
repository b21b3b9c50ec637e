"""BatchNorm recalibration: Recalibration.buffers_at against torch's update_bn on a copy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.optim.swa_utils import update_bn

from crumple.errors import CrumpleError, CrumpleTypeError
from crumple.evaluation.recalibration import Recalibration, batchnorm_layers
from crumple.examples import zoo
from tests.cases import Wide, assert_close, assert_untouched, snapshot

RTOL = 1e-9


class BNMLP(nn.Module):
    """BatchNorm1d on the data (its input is never batched under vmap), two in sequence (the
    second's input depends on the first's batch statistics), and one on (N, C, L) input."""

    def __init__(self) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm1d(6)
        self.inp = nn.Linear(6, 8)
        self.bn1 = nn.BatchNorm1d(8)
        self.mid = nn.Linear(8, 8)
        self.bn2 = nn.BatchNorm1d(8)
        self.bn3 = nn.BatchNorm1d(2)
        self.out = nn.Linear(8, 1)

    def forward(self, x, shift: float = 0.0):
        h = torch.tanh(self.bn1(self.inp(self.bn0(x + shift))))
        h = torch.relu(self.bn2(self.mid(h)))
        return self.out(self.bn3(h.view(-1, 2, 4)).flatten(1))


class Shared(nn.Module):
    """One BatchNorm layer (a SyncBatchNorm, which runs as a plain one without a process
    group) called twice per forward: update_bn counts both calls."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.bn = nn.SyncBatchNorm(4)

    def forward(self, x):
        return self.bn(self.b(torch.relu(self.bn(self.a(x)))))


def _data(name: str, dtype=torch.float64):
    """(model in eval mode, list of input batches, loss function of the output)."""
    if name == "resnet":
        case = zoo.resnet(widths=(4, 8), n=16, batch_size=8, dtype=dtype)
        x, y = case.data.dataset.tensors
        return case.model, list(x.split([6, 5, 4, 1])), lambda out: F.cross_entropy(out, y)
    g = torch.Generator().manual_seed(1)
    model = (BNMLP() if name == "mlp" else Shared()).to(dtype).eval()
    x = torch.randn(30, 6 if name == "mlp" else 4, generator=g, dtype=dtype)
    return model, list(x.split([10, 10, 7, 3])), lambda out: out.square().mean()


def _points(model, n: int, seed: int = 0):
    """The origin and n - 1 random perturbations of it."""
    g = torch.Generator().manual_seed(seed)
    origin = {k: p.detach() for k, p in model.named_parameters()}
    out = [origin]
    for i in range(1, n):
        out.append(
            {
                k: p + 0.3 * i * torch.randn(p.shape, generator=g, dtype=p.dtype)
                for k, p in origin.items()
            }
        )
    return out


def _updated(model, params, xs):
    """The reference: torch's update_bn on a copy carrying ``params``, then eval mode."""
    work = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in work.named_parameters():
            p.copy_(params[k])
    update_bn(xs, work)
    return work.eval()


def _compare(fast: dict, slow: dict, label: str, rtol: float = RTOL) -> float:
    """Assert every buffer agrees; return the largest relative difference."""
    assert fast.keys() == slow.keys(), label
    worst = 0.0
    for k in slow:
        a, b = fast[k].detach().double(), slow[k].detach().double()
        assert_close(a, b, rtol, f"{label} {k}")
        worst = max(worst, float(((a - b).abs() / b.abs().clamp_min(1e-300)).max()))
    return worst


@pytest.mark.parametrize("name", ["resnet", "mlp", "shared"])
def test_buffers_and_loss_match_update_bn(name):
    model, xs, loss = _data(name)
    before = snapshot(model)
    recal = Recalibration(model, [((x,), {}) for x in xs])
    buffers = dict(model.named_buffers())
    for i, params in enumerate(_points(model, 3)):
        slow = _updated(model, params, xs)
        fast = recal.buffers_at(params, buffers)
        _compare(fast, dict(slow.named_buffers()), f"{name} point {i}")
        x = torch.cat(xs)
        with torch.no_grad():
            expected = loss(slow(x))
        got = loss(functional_call(model, (params, fast), (x,)))
        assert_close(got, expected, RTOL, f"{name} loss at point {i}")
        if i:  # the statistics moved with the weights
            assert not torch.allclose(got, loss(functional_call(model, (params, buffers), (x,))))
    assert_untouched(model, before)


@pytest.mark.parametrize("name", ["resnet", "mlp"])
def test_vmap_over_points_and_nested(name):
    model, xs, loss = _data(name)
    before = snapshot(model)
    recal = Recalibration(model, [((x,), {}) for x in xs])
    buffers = dict(model.named_buffers())
    x = torch.cat(xs)
    points = _points(model, 3, seed=2)
    stacked = {k: torch.stack([p[k] for p in points]) for k in points[0]}

    def at(params):
        fresh = recal.buffers_at(params, buffers)
        return fresh, loss(functional_call(model, (params, fresh), (x,)))

    batched, losses = vmap(at)(stacked)
    for i, params in enumerate(points):
        each, each_loss = at(params)
        _compare({k: v[i] for k, v in batched.items()}, each, f"{name} vmap point {i}")
        assert_close(losses[i], each_loss, RTOL, f"{name} vmap loss {i}")

    # A 2 x 2 plane, one vmap level per axis; the second direction moves only some
    # parameters, so the others are not batched along the inner level (nor is the first
    # BatchNorm layer's input, while its bias is).
    origin, d1, d2 = points[0], points[1], points[2]
    moved = set(list(origin)[2:][::2])

    def plane(a, b):
        params = {
            k: o + a * (d1[k] - o) + (b * (d2[k] - o) if k in moved else 0)
            for k, o in origin.items()
        }
        return at(params)

    alphas = torch.tensor([0.25, -0.5], dtype=torch.float64)
    betas = torch.tensor([0.75, 1.5], dtype=torch.float64)
    grid, grid_losses = vmap(vmap(plane, in_dims=(None, 0)), in_dims=(0, None))(alphas, betas)
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            each, each_loss = plane(a, b)
            _compare({k: v[i, j] for k, v in grid.items()}, each, f"{name} grid {i},{j}")
            assert_close(grid_losses[i, j], each_loss, RTOL, f"{name} grid loss {i},{j}")
    assert_untouched(model, before)


def test_only_batchnorm_trains_and_the_model_stays_as_it_was():
    """Dropout stays off (deterministic), kwargs reach the model, a model left in train mode
    keeps its flags and buffers."""
    torch.manual_seed(3)
    model = BNMLP().double().train()
    model.inp = nn.Sequential(model.inp, nn.Dropout(0.5))  # dropout in train mode
    xs = list(torch.randn(20, 6, dtype=torch.float64).split(10))
    before = snapshot(model)
    recal = Recalibration(model, [((x,), {"shift": 0.5}) for x in xs])
    params = _points(model, 2)[1]
    first = recal.buffers_at(params, dict(model.named_buffers()))
    assert_untouched(model, before)

    slow = copy.deepcopy(model).eval()  # the definition, by hand, with BatchNorm alone training
    with torch.no_grad():
        for k, p in slow.named_parameters():
            p.copy_(params[k])
        for layer in batchnorm_layers(slow).values():
            layer.reset_running_stats()
            layer.momentum = None
            layer.train()
        for x in xs:
            slow(x, shift=0.5)
    _compare(first, dict(slow.named_buffers()), "bn-only training")
    again = recal.buffers_at(params, dict(model.named_buffers()))
    assert all(torch.equal(first[k], again[k]) for k in first)


class _WithUnused(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.unused = nn.BatchNorm1d(3)  # no forward reaches it

    def forward(self, x):
        return self.body(x)


def test_float32_and_a_layer_no_batch_reaches():
    body, xs, _ = _data("resnet", torch.float32)
    model = _WithUnused(body).eval()
    recal = Recalibration(model, [((x,), {}) for x in xs])
    params = _points(model, 2)[1]
    fast = recal.buffers_at(params, dict(model.named_buffers()))
    assert fast["body.1.running_mean"].dtype == torch.float32
    assert fast["unused.running_var"].tolist() == [1.0] * 3
    assert int(fast["unused.num_batches_tracked"]) == 0
    slow = dict(_updated(model, params, xs).named_buffers())
    _compare(fast, slow, "float32", rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda():
    model, xs, _ = _data("mlp")
    cuda = copy.deepcopy(model).cuda()
    recal = Recalibration(cuda, [((x.cuda(),), {}) for x in xs])
    params = _points(model, 2)[1]
    fast = recal.buffers_at({k: v.cuda() for k, v in params.items()}, dict(cuda.named_buffers()))
    assert all(v.is_cuda for v in fast.values())
    slow = dict(_updated(model, params, xs).named_buffers())
    _compare({k: v.cpu() for k, v in fast.items()}, slow, "cuda", rtol=1e-9)


def test_batchnorm_layers():
    model = nn.Sequential(
        nn.Conv1d(1, 2, 1),
        nn.BatchNorm1d(2),
        nn.Conv2d(2, 2, 1),
        nn.BatchNorm2d(2),
        nn.BatchNorm3d(2, track_running_stats=False),
        nn.SyncBatchNorm(2),
        nn.InstanceNorm1d(2),
    )
    assert list(batchnorm_layers(model)) == ["1", "3", "5"]
    root = nn.BatchNorm1d(2).double()
    assert list(batchnorm_layers(root)) == [""]
    x = torch.randn(5, 2, dtype=torch.float64)
    out = Recalibration(root, [((x,), {})]).buffers_at({}, dict(root.named_buffers()))
    assert_close(out["running_mean"], x.mean(0), RTOL, "root mean")
    assert_close(out["running_var"], x.var(0), RTOL, "root var")


def test_errors():
    x = torch.randn(4, 8)
    with pytest.raises(CrumpleError, match="recalibrate has nothing to do: .*no BatchNorm"):
        Recalibration(nn.Linear(8, 1), [((x,), {})])
    untracked = nn.Sequential(nn.Linear(8, 2), nn.BatchNorm1d(2, track_running_stats=False))
    with pytest.raises(CrumpleError, match=r"nothing to do: .*\['1'\].*track_running_stats"):
        Recalibration(untracked, [((x,), {})])
    model = Wide().double().eval()
    with pytest.raises(CrumpleError, match="at least one batch"):
        Recalibration(model, [])
    with pytest.raises(CrumpleTypeError, match="batch 1 must be an"):
        Recalibration(model, [((x,), {}), x])
    with pytest.raises(CrumpleTypeError, match="list of"):
        Recalibration(model, x)
    before = snapshot(model)
    xs = torch.randn(5, 1, dtype=torch.float64)
    recal = Recalibration(model, [((xs[:4],), {}), ((xs[4:],), {})])
    with pytest.raises(CrumpleError, match=r"batch 1 .*'norm'.*\(1, 8\).*more than one"):
        recal.buffers_at(dict(model.named_parameters()), dict(model.named_buffers()))
    assert_untouched(model, before)
    norm = recal._work.norm  # hooks and lent statistics gone after the error
    assert not norm._forward_pre_hooks and not norm._forward_hooks and norm.running_mean is None
