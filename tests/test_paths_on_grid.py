"""Planes centred where the user says, and paths on the grid by default (issue 21, items 3
and 4): the PCA plane through --weights, the grid that holds a --trajectory's path and the
paths of demo --compare, and a given grid's points left out counted on the command line, in
`crumple info` and on the page."""

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.cli import main
from crumple.cli.info import describe
from crumple.grid import Grid
from crumple.run.store import open_run
from tests import cli_fixtures
from tests.cases import MLP

MODEL = "tests.cli_fixtures:make_mlp"
DATA = "tests.cli_fixtures:digits_loader"


def surface(capsys, *args):
    main(["surface", "--model", MODEL, "--data", DATA, *args])
    return capsys.readouterr()


def full_loss(model) -> float:
    """The mean cross-entropy over every sample of DATA, computed here in float64."""
    x, y = (torch.cat(parts) for parts in zip(*cli_fixtures.digits_loader()))
    with torch.no_grad():
        return float(F.cross_entropy(model.double()(x.double()), y))


def with_weights(weights) -> torch.nn.Module:
    model = cli_fixtures.make_mlp()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name])
    return model


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A trajectory of 10 SGD steps of the CLI's MLP, and the weights of another model."""
    folder = tmp_path_factory.mktemp("recorded")
    model = cli_fixtures.make_mlp()
    rec = cr.Recorder(model, to=folder / "traj")
    x, y = next(iter(cli_fixtures.digits_loader()))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        rec.record()
    torch.manual_seed(7)
    other = MLP()  # weights off the path: the plane must pass through them
    torch.save(other.state_dict(), folder / "other.pt")
    return folder / "traj", folder / "other.pt", other


def centre(ds) -> float:
    return float(ds.loss.sel(alpha=0.0, beta=0.0))


def test_pca_plane_passes_through_the_weights_given(recorded, tmp_path, capsys):
    trajectory, weights, other = recorded
    out = tmp_path / "pca"
    args = ["--weights", str(weights), "--plane", "pca", "--trajectory", str(trajectory)]
    surface(capsys, *args, "--grid", "-1:1:3", "--out", str(out))
    ds = open_run(out)["surface"]
    plane = cr.Plane.load(out / "plane.safetensors")
    given = other.state_dict()
    assert all(torch.equal(plane.origin[n], given[n]) for n in plane.origin)
    assert ds.attrs["plane_through"] == "the weights given"
    assert "through the weights given" in describe(out)
    # the trajectory's own directions, that origin
    own = cr.Plane.pca(cr.Trajectory.load(trajectory))
    for mine, theirs in zip(plane.directions, own.directions):
        assert all(torch.equal(mine[n], theirs[n]) for n in mine)
    # the surface's centre is the loss of the weights given, not of the path's end
    assert centre(ds) == pytest.approx(full_loss(other), rel=1e-5)
    end = cr.Trajectory.load(trajectory)
    end_loss = full_loss(with_weights(end.snapshot(len(end) - 1)))
    assert abs(centre(ds) - end_loss) > 0.1


def test_pca_plane_without_weights_is_at_the_path_end(recorded, tmp_path, capsys):
    trajectory = recorded[0]
    out = tmp_path / "end"
    args = ["--plane", "pca", "--trajectory", str(trajectory), "--grid", "-1:1:3"]
    said = surface(capsys, *args, "--out", str(out)).out
    end = cr.Trajectory.load(trajectory)
    assert f"model: the --trajectory's last snapshot (step {end.steps[-1]})" in said
    ds = open_run(out)["surface"]
    assert ds.attrs["plane_through"] == f"the path's last snapshot (step {end.steps[-1]})"
    last = end.snapshot(len(end) - 1)
    plane = cr.Plane.load(out / "plane.safetensors")
    assert all(torch.equal(plane.origin[n], last[n]) for n in last)
    assert centre(ds) == pytest.approx(full_loss(with_weights(last)), rel=1e-5)


def test_pca_origin_in_python_and_its_refusals(recorded):
    trajectory, _, other = recorded
    plane = cr.Plane.pca(trajectory, origin=other)  # the folder itself, and a model
    assert all(torch.equal(plane.origin[n], p) for n, p in other.named_parameters())
    assert plane.attrs["through"] == "the weights given"
    from_dict = cr.Plane.pca(trajectory, origin=other.state_dict())
    assert all(torch.equal(from_dict.origin[n], plane.origin[n]) for n in plane.origin)
    with pytest.raises(cr.CrumpleError, match=r"only in the path \['net.1.bias', 'net.4.bias'"):
        cr.Plane.pca(trajectory, origin={"net.1.weight": plane.origin["net.1.weight"]})
    with pytest.raises(cr.CrumpleError, match=r"of other shapes \['net.1.bias'\]"):
        cr.Plane.pca(trajectory, origin={**plane.origin, "net.1.bias": torch.zeros(3)})
    with pytest.raises(TypeError, match="origin must be a model"):
        cr.Plane.pca(trajectory, origin=3)


@pytest.mark.slow
def test_the_default_grid_holds_the_path(recorded, tmp_path, capsys):
    trajectory = recorded[0]
    out = tmp_path / "held"
    said = surface(capsys, "--plane", "pca", "--trajectory", str(trajectory), "--out", str(out))
    assert "grid: the path's extent and the origin" in said.out
    assert "outside the grid" not in said.err
    run = open_run(out)
    ds, path = run["surface"], run["path"]
    assert ds.loss.shape == (51, 51)
    assert Grid(ds.alpha.values, ds.beta.values).outside(path) == 0
    for dim in ("alpha", "beta"):  # with room to spare on each side
        low, high = float(path[dim].min()), float(path[dim].max())
        assert ds[dim].values[0] < min(low, 0.0) and ds[dim].values[-1] > max(high, 0.0)
    assert "outside the grid" not in describe(out)


def test_a_given_grid_counts_the_path_points_it_leaves_out(recorded, tmp_path, capsys):
    trajectory = recorded[0]
    out = tmp_path / "small"
    args = ["--plane", "pca", "--trajectory", str(trajectory), "--grid", "-0.5:0.5:3"]
    with pytest.warns(UserWarning, match="path points lie outside the grid") as warned:
        surface(capsys, *args, "--out", str(out))  # on the command line: one stderr line
    path = open_run(out)["path"]
    steps = path.sizes["step"]
    inside = (np.abs(path.alpha.values) <= 0.5) & (np.abs(path.beta.values) <= 0.5)
    away = int((~inside).sum())
    assert 0 < away < steps
    assert f"{away} of {steps} path points lie outside the grid" in str(warned[0].message)
    assert f"path 'path': {steps} steps, {away} of {steps} points outside the grid" in describe(out)
    page = (out / "landscape.html").read_text()
    assert f"{away} of {steps} points outside the grid" in page


def test_grid_outside_counts_nan_and_edges():
    import xarray as xr

    path = xr.Dataset(
        {"alpha": ("step", [-1.0, 1.0, np.nan, 1.5, 0.0]), "beta": ("step", [1.0] * 5)}
    )
    grid = Grid([-1.0, 1.0], [-1.0, 1.0])
    assert grid.outside(path) == 2  # the edges are inside; nan and 1.5 are not
    assert Grid([-1.0, 0.0]).outside(path) == 3


@pytest.mark.slow
def test_demo_compare_grid_holds_every_path(tmp_path, capsys):
    out = tmp_path / "compare"
    args = ["demo", "--compare", "sgd,momentum", "--epochs", "3", "--lr", "0.05", "--step", "0.25"]
    main([*args, "--batch-size", "256", "--out", str(out)])
    said = capsys.readouterr().out
    assert "widened to hold the paths" in said and "outside" not in said
    run = open_run(out)
    ds = run.pop("surface")
    grid = Grid(ds.alpha.values, ds.beta.values)
    assert sum(grid.outside(p) for p in run.values()) == 0
    assert ds.alpha.values[0] < -2  # a path leaves the article's grid: the grid grew
    # by whole steps of the article's lattice: its nodes stay nodes
    assert np.allclose(np.diff(ds.alpha.values), 0.25) and np.isclose(ds.alpha.values, -1).any()
    # the same training on the grid given: the points it leaves out are counted
    main([*args, "--batch-size", "256", "--min", "-2", "--max", "2", "--out", str(out)])
    away = sum(
        Grid(np.arange(-2, 2, 0.25), np.arange(-2, 2, 0.25)).outside(p) for p in run.values()
    )
    total = sum(p.sizes["step"] for p in run.values())
    assert f"{away} of {total} path points lie outside the grid given" in capsys.readouterr().out


@pytest.mark.slow
def test_a_callbacks_given_grid_counts_on_the_page_and_the_default_holds(tmp_path):
    from crumple.integrations.tracking import Tracker

    x, y = next(iter(cli_fixtures.digits_loader()))
    small = Grid([-1e-3, 1e-3], [-1e-3, 1e-3])
    for grid, folder in ((small, tmp_path / "small"), (None, tmp_path / "held")):
        model = cli_fixtures.make_mlp()
        tracker = Tracker(landscape=True, loss_fn=F.cross_entropy, grid=grid, num=5)
        tracker.start(model, step=0, main=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for step in range(1, 7):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            tracker.after_step(step)
        tracker.finish(6)
        warned = pytest.warns(UserWarning, match=r"\d+ of \d+ path points lie outside the grid")
        with warned if grid else contextlib.nullcontext():
            run = tracker.write_landscape(model, (x, y), folder)
        ds, path = run.surface, run.paths["path"]
        away = Grid(ds.alpha.values, ds.beta.values).outside(path)
        page = (folder / "landscape.html").read_text()
        if grid is None:
            assert away == 0 and "outside the grid" not in page
        else:
            assert away > 0 and f"{away} of {path.sizes['step']} points outside the grid" in page
