"""cr.Curve and cr.path_loss: the points of each curve against its formula, the losses along
a line and a curve against an independent per-point loop in float64 (with and without
BatchNorm recalibration), the barrier, and wrong inputs."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import crumple as cr
from crumple import reference
from crumple.errors import CrumpleError, CrumpleTypeError
from tests.cases import MLP, digits


def trained(seed, data, steps=30):
    torch.manual_seed(seed)
    net = MLP().double()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(data[0]), data[1]).backward()
        opt.step()
    return net


def weights(net):
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def by_hand(model, loss_fn, data, point):
    """The loss at ``point`` by a plain loop: a copy of the model given the weights."""
    work = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, p in work.named_parameters():
            p.copy_(point[name])
        x, y = data
        return float(loss_fn(work(x), y))


@pytest.fixture(scope="module")
def ends():
    data = digits(300)
    return data, trained(1, data), trained(2, data)


def test_each_curve_is_its_formula(ends):
    _, a, b = ends
    wa, wb = weights(a), weights(b)
    bend = {n: 0.5 * (wa[n] + wb[n]) + 0.3 * torch.randn_like(t) for n, t in wa.items()}
    bezier, chain = cr.Curve.bezier(a, b, bend), cr.Curve.polychain(a, b, bend)
    line = cr.Curve.line(a, b)
    for t in (0.0, 0.2, 0.5, 0.7, 1.0):
        for n in wa:
            expected = (1 - t) ** 2 * wa[n] + 2 * t * (1 - t) * bend[n] + t**2 * wb[n]
            assert torch.allclose(bezier.at(t)[n], expected, atol=1e-12, rtol=0), (t, n)
            assert torch.allclose(line.at(t)[n], (1 - t) * wa[n] + t * wb[n], atol=1e-12), t
            chained = wa[n] + 2 * t * (bend[n] - wa[n]) if t <= 0.5 else (
                bend[n] + (2 * t - 1) * (wb[n] - bend[n]))  # fmt: skip
            assert torch.allclose(chain.at(t)[n], chained, atol=1e-12, rtol=0), (t, n)
    assert all(torch.allclose(bezier.bend[n], bend[n], atol=1e-12) for n in bend)
    assert line.bend is None and cr.Curve.bezier(a, b).at(0.3)["net.1.weight"].allclose(
        line.at(0.3)["net.1.weight"], atol=1e-12
    )  # no bend yet: the line


@pytest.mark.parametrize("kind", ["line", "bezier", "polychain"])
def test_losses_along_a_curve_equal_a_per_point_loop(ends, kind):
    data, a, b = ends
    torch.manual_seed(3)
    bend = {n: t + 0.2 * torch.randn_like(t) for n, t in weights(a).items()}
    curve = cr.Curve.line(a, b) if kind == "line" else getattr(cr.Curve, kind)(a, b, bend)
    t = np.linspace(0, 1, 13)
    metrics = {"accuracy": lambda p, y: (p.argmax(1) == y).double().mean()}
    ds = cr.path_loss(a, F.cross_entropy, data, curve, t, metrics=metrics, dtype="float64")
    hand = [by_hand(a, F.cross_entropy, data, curve.at(s)) for s in t]
    assert np.allclose(ds.loss.values, hand, rtol=1e-9, atol=0), np.abs(ds.loss.values - hand)
    accuracy = [by_hand(a, metrics["accuracy"], data, curve.at(s)) for s in t]
    assert np.allclose(ds.accuracy.values, accuracy, rtol=1e-12, atol=1e-12)
    la, lb = (
        by_hand(a, F.cross_entropy, data, weights(a)),
        by_hand(a, F.cross_entropy, data, weights(b)),
    )
    assert ds.attrs["loss_a"] == pytest.approx(la, rel=1e-9)
    assert ds.attrs["loss_b"] == pytest.approx(lb, rel=1e-9)
    rise = np.array(hand) - ((1 - t) * la + t * lb)
    assert ds.attrs["barrier"] == pytest.approx(rise.max(), rel=1e-9, abs=1e-12)
    assert ds.attrs["barrier_t"] == t[rise.argmax()] and ds.attrs["curve"] == kind


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.body(x))


def test_recalibrated_losses_along_a_curve_equal_the_reference_loop():
    data = digits(200)
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = BNNet().double()
        opt = torch.optim.SGD(net.parameters(), lr=0.3)
        for _ in range(20):  # train mode: the running statistics move
            opt.zero_grad()
            F.cross_entropy(net(data[0]), data[1]).backward()
            opt.step()
        nets.append(net)
    a, b = nets
    before = copy.deepcopy(a.state_dict())
    curve = cr.Curve.bezier(a, b)
    t = np.linspace(0, 1, 7)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=64)
    plain = cr.path_loss(a, F.cross_entropy, data, curve, t, dtype="float64")
    again = cr.path_loss(a, F.cross_entropy, data, curve, t, dtype="float64", recalibrate=loader)
    points = [curve.at(s) for s in t]
    fns = {"loss": F.cross_entropy}
    slow = reference.points(a, fns, data, points, dtype=torch.float64)["loss"]
    slow_recal = reference.points(a, fns, data, points, dtype=torch.float64, recalibrate=loader)
    assert np.allclose(plain.loss.values, slow, rtol=1e-9, atol=0)
    assert np.allclose(again.loss.values, slow_recal["loss"], rtol=1e-9, atol=0)
    assert not np.allclose(plain.loss.values, again.loss.values, rtol=1e-3)  # it matters
    after = a.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model untouched


def test_a_line_plane_is_a_curve_and_wrong_inputs_are_refused(ends):
    data, a, b = ends
    t = [0.0, 0.5, 1.0]
    from_plane = cr.path_loss(a, F.cross_entropy, data, cr.Plane.between(a, b), t)
    from_curve = cr.path_loss(a, F.cross_entropy, data, cr.Curve.line(a, b), t)
    assert np.array_equal(from_plane.loss.values, from_curve.loss.values)
    with pytest.raises(CrumpleError, match="t must be numbers from 0"):
        cr.path_loss(a, F.cross_entropy, data, cr.Curve.line(a, b), [0.0, 1.5])
    with pytest.raises(CrumpleError, match="t must be numbers from 0"):
        cr.path_loss(a, F.cross_entropy, data, cr.Curve.line(a, b), [0.0, float("nan")])
    with pytest.raises(CrumpleTypeError, match="curve must be a crumple.Curve"):
        cr.path_loss(a, F.cross_entropy, data, "line", t)
    with pytest.raises(CrumpleError, match="check= is not an option of path_loss"):
        cr.path_loss(a, F.cross_entropy, data, cr.Curve.line(a, b), t, check=4)
    with pytest.raises(CrumpleError):
        cr.Curve.line(a, nn.Linear(3, 2))  # another architecture


def test_a_trained_bezier_curve_has_a_lower_barrier_than_the_line(ends):
    data, a, b = ends
    state_a, flags = copy.deepcopy(a.state_dict()), {m: m.training for m in a.modules()}
    curve = cr.connect(a, b, F.cross_entropy, data, steps=150, lr=0.1, seed=0)
    assert curve.kind == "bezier" and curve.history.sizes["step"] == 150
    assert np.all((curve.history.t.values >= 0) & (curve.history.t.values <= 1))
    for n, w in weights(a).items():  # the ends stay where they were
        assert torch.equal(curve.at(0.0)[n], w) and torch.allclose(curve.at(1.0)[n], weights(b)[n])
    t = np.linspace(0, 1, 21)
    line = cr.path_loss(a, F.cross_entropy, data, cr.Curve.line(a, b), t)
    bent = cr.path_loss(a, F.cross_entropy, data, curve, t)
    assert bent.attrs["barrier"] < 0.5 * line.attrs["barrier"], (bent.attrs, line.attrs)
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in state_a.items())  # a untouched
    assert {m: m.training for m in a.modules()} == flags
    chain = cr.connect(a, b, F.cross_entropy, data, "polychain", steps=3)
    assert chain.kind == "polychain" and torch.allclose(
        chain.at(1.0)["net.4.weight"], weights(b)["net.4.weight"]
    )
    with pytest.raises(CrumpleError, match="kind must be 'bezier' or 'polychain'"):
        cr.connect(a, b, F.cross_entropy, data, "spline")
    with pytest.raises(CrumpleError, match="lr must be a number"):
        cr.connect(a, b, F.cross_entropy, data, lr=float("nan"))


def test_a_curve_run_resumes_from_its_folder_and_runs_on_dask_workers(ends, tmp_path):
    data, a, b = ends
    torch.manual_seed(5)
    curve = cr.Curve.bezier(a, b, {n: t + 0.1 * torch.randn_like(t) for n, t in weights(a).items()})
    t = np.linspace(0, 1, 17)
    here = cr.path_loss(a, F.cross_entropy, data, curve, t, dtype="float64")
    store = tmp_path / "run"
    first = cr.path_loss(a, F.cross_entropy, data, curve, t, dtype="float64", store=store)
    again = cr.path_loss(a, F.cross_entropy, data, curve, t, dtype="float64", store=store)
    assert first.attrs["tiles_computed"] > 0 and again.attrs["tiles_computed"] == 0  # resumed
    assert np.array_equal(first.loss.values, again.loss.values)
    assert np.allclose(first.loss.values, here.loss.values, rtol=1e-12, atol=0)
    chain = cr.Curve.polychain(a, b, curve.bend)
    with pytest.raises(CrumpleError, match="fingerprint|different|another"):
        cr.path_loss(a, F.cross_entropy, data, chain, t, dtype="float64", store=store)
    on_dask = cr.path_loss(a, F.cross_entropy, data, curve, t, dtype="float64", dask="local:1",
                           tile_size=5)  # fmt: skip
    assert np.allclose(on_dask.loss.values, here.loss.values, rtol=1e-12, atol=0)
