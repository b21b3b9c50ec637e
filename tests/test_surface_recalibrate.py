"""BatchNorm recalibration at each point: ``surface(..., recalibrate=loader)`` equals a manual
loop (set the weights, reset the statistics, train-mode passes over the batches, eval)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

import crumple as cr
from crumple.examples import zoo
from tests.cases import assert_untouched, snapshot

GRID = cr.Grid(np.linspace(-0.5, 0.5, 2), np.linspace(-0.5, 0.5, 3))


@pytest.fixture(scope="module")
def case():
    c = zoo.resnet(widths=(4, 8), n=96, batch_size=32, dtype=torch.float64)
    train = [(x, y) for x, y in c.data][:2]  # the recalibration batches, as given
    return c, train


def manual(model, loss_fn, data, train, weights):
    """Per point: the weights in a copy, update_bn over the train batches, eval-mode mean."""
    out = []
    for point in weights:
        work = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in work.named_parameters():
                p.copy_(point[name])
        update_bn([x for x, _ in train], work)
        work.eval()
        with torch.no_grad():
            total = sum(float(loss_fn(work(x), y)) * len(x) for x, y in data)
        out.append(total / sum(len(x) for x, _ in data))
    return np.array(out)


@pytest.mark.parametrize("strategy", ["auto", "loop", "vmap"])
def test_recalibrated_surface_equals_the_manual_loop_float64(case, strategy):
    c, train = case
    plane = cr.Plane.random(c.model, seed=0)
    before = snapshot(c.model)
    ds = cr.surface(
        c.model, c.loss_fn, c.data, plane, GRID, recalibrate=train, strategy=strategy, check=2
    )
    assert_untouched(c.model, before)
    weights = [plane.at(a, b) for a in GRID.axes[0] for b in GRID.axes[1]]
    slow = manual(c.model, c.loss_fn, c.data, train, weights).reshape(GRID.shape)
    rel = np.abs(ds.loss.values - slow) / slow
    assert rel.max() < 1e-9, rel
    assert "2 batches" in ds.attrs["recalibrated"]
    plain = cr.surface(c.model, c.loss_fn, c.data, plane, GRID, strategy=strategy)
    assert np.abs(plain.loss.values - slow).max() > 1e-3  # recalibration changes the surface


def test_recalibration_is_part_of_the_run_fingerprint(case, tmp_path):
    c, train = case
    plane = cr.Plane.random(c.model, seed=0)
    cr.surface(c.model, c.loss_fn, c.data, plane, GRID, store=tmp_path / "run", recalibrate=train)
    with pytest.raises(cr.CrumpleError, match="recalibrate"):
        cr.surface(c.model, c.loss_fn, c.data, plane, GRID, store=tmp_path / "run")


def test_expanded_and_a_model_without_batchnorm_are_refused(case):
    c, train = case
    plane = cr.Plane.random(c.model, seed=0)
    with pytest.raises(cr.CrumpleError, match="expanded"):
        cr.surface(c.model, c.loss_fn, c.data, plane, GRID, recalibrate=train, strategy="expanded")
    net = torch.nn.Linear(3, 1)
    x = torch.randn(8, 3)
    with pytest.raises(cr.CrumpleError, match="nothing to do"):
        cr.line(net, F.mse_loss, (x, x[:, :1]), cr.Plane.random(net), [0.0], recalibrate=(x,))


def test_the_command_recalibrates(tmp_path):
    from crumple.cli import main

    out = tmp_path / "run"
    argv = ["surface", "--model", "tests.test_surface_recalibrate:cli_model", "--data"]
    argv += ["tests.test_surface_recalibrate:cli_data", "--grid", "-0.5:0.5:2"]
    main([*argv, "--recalibrate", "tests.test_surface_recalibrate:cli_train", "--out", str(out)])
    ds = cr.open_run(out)["surface"]
    assert "recalibrated" in ds.attrs


def _cli_case():
    return zoo.resnet(widths=(4,), n=48, batch_size=16)


def cli_model():
    return _cli_case().model


def cli_data():
    return _cli_case().data


def cli_train():
    return [x for x, _ in _cli_case().data][:2]


def test_project_recalibrates_like_the_surface(case):
    c, train = case
    plane = cr.Plane.random(c.model, seed=0)
    rec = cr.Recorder(c.model)
    rec.record()
    path = cr.project(rec.trajectory, plane, c.model, c.loss_fn, c.data, recalibrate=train)
    slow = manual(c.model, c.loss_fn, c.data, train, [plane.at(0.0, 0.0)])[0]
    assert path.loss.values[0] == pytest.approx(slow, rel=1e-9)
    assert path.loss_on_plane.values[0] == pytest.approx(slow, rel=1e-9)
