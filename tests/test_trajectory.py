"""Recorded paths lie on the surface they are drawn over."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.examples import seed
from tests.cases import Wide, assert_close, assert_untouched, snapshot


@pytest.fixture(scope="module")
def seed_run():
    return seed.run(epochs=4, n_samples=2_000, progress=False)


def test_every_path_point_lies_on_the_surface(seed_run):
    model, plane, path = seed_run.model, seed_run.plane, seed_run.path
    test64 = tuple(t.double() for t in seed_run.test_data)
    assert path.sizes["step"] == 5  # before training and after each of 4 epochs
    assert np.all(path.off_plane.values == 0)
    # the surface evaluated at each path point's weights gives the path's loss (float64)
    trajectory = seed_run.trajectories["SGD"]
    path64 = cr.project(trajectory, plane, model, F.mse_loss, test64, dtype=torch.float64)
    for k in range(path.sizes["step"]):
        a, b = float(path64.alpha[k]), float(path64.beta[k])
        here = cr.surface(model, F.mse_loss, test64, plane, cr.Grid([a], [b]), dtype=torch.float64)
        assert float(here.loss[0, 0]) == pytest.approx(float(path64.loss[k]), rel=1e-12)
    # the path's coordinates are the recorded weights, and its loss the loss the loop reported
    assert_close(path.loss_on_plane.values, path.loss.values, rtol=1e-6, label="on-plane loss")
    assert_close(path.loss.values, path.recorded_loss.values, rtol=1e-6, label="recorded loss")
    final = [float(seed_run.model.get_parameter(n).detach()) for n in seed.AXES]
    assert [float(path.alpha[-1]), float(path.beta[-1])] == pytest.approx(final, abs=1e-7)


def test_path_over_float64_surface_matches_grid_values_at_grid_nodes(seed_data64):
    # a path whose points sit on grid nodes reads exactly the surface's values there
    model = seed.SeedNet().double()
    plane = cr.Plane.axes(model, *seed.AXES)
    axis = np.linspace(-2, 2, 9)
    ds = cr.surface(model, F.mse_loss, seed_data64, plane, cr.Grid(axis, axis))
    nodes = [(4, 4), (1, 7), (8, 0)]
    with torch.no_grad():  # the first node before the recorder keeps it as step 0
        model.Layer_1.weight.fill_(axis[4])
        model.Layer_2.weight.fill_(axis[4])
    rec = cr.Recorder(model)
    for i, j in nodes[1:]:
        with torch.no_grad():
            model.Layer_1.weight.fill_(axis[i])
            model.Layer_2.weight.fill_(axis[j])
        rec.record()
    path = cr.project(rec.trajectory, plane, model, F.mse_loss, seed_data64)
    assert_close(
        path.loss.values,
        [ds.loss.values[i, j] for i, j in nodes],
        rtol=1e-12,
        label="path vs surface nodes",
    )
    assert np.isnan(path.recorded_loss.values).all()


def test_projection_recovers_coordinates_of_points_in_the_plane(seed_data64):
    model = Wide().double()
    plane = cr.Plane.axes(model, "inp.weight[2, 0]", "out.weight[0, 1]")
    coords = [(0.5, -1.25), (2.0, 0.0), (-0.75, 3.5)]
    trajectory = cr.Trajectory()
    for k, (a, b) in enumerate(coords):
        trajectory.steps.append(k)
        trajectory.weights.append(plane.at(a, b))
        trajectory.losses.append(float("nan"))
    before = snapshot(model)
    path = cr.project(trajectory, plane, model, F.mse_loss, seed_data64)
    assert_untouched(model, before)
    assert path.alpha.values.tolist() == pytest.approx([c[0] for c in coords], abs=1e-14)
    assert path.beta.values.tolist() == pytest.approx([c[1] for c in coords], abs=1e-14)
    assert path.off_plane.values == pytest.approx([0, 0, 0], abs=1e-14)
    # a point moved off the plane by a known distance reports that distance
    off = plane.at(1.0, 1.0)
    off["out.bias"] = off["out.bias"] + 0.3
    trajectory.steps.append(3)
    trajectory.weights.append(off)
    trajectory.losses.append(float("nan"))
    path = cr.project(trajectory, plane, model, F.mse_loss, seed_data64)
    assert float(path.off_plane[-1]) == pytest.approx(0.3, rel=1e-12)
    assert float(path.loss[-1]) != pytest.approx(float(path.loss_on_plane[-1]), rel=1e-6)


def test_recorder_every_and_errors():
    model = seed.SeedNet()
    rec = cr.Recorder(model, every=3)  # step 0 kept when made, without a loss
    for k in range(1, 7):
        rec.record(loss=k)
    assert rec.trajectory.steps == [0, 3, 6]
    assert np.isnan(rec.trajectory.losses[0]) and rec.trajectory.losses[1:] == [3.0, 6.0]
    with pytest.raises(cr.CrumpleError, match="positive integer"):
        cr.Recorder(model, every=0)
    with pytest.raises(cr.CrumpleError, match="empty"):
        cr.Trajectory().names()
