"""`crumple surface` on a user's model: every plane kind, and clear refusals of bad specs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple import planes, report
from crumple.cli import main
from crumple.specs import accuracy
from tests import cli_fixtures
from tests.cases import MLP, assert_close

MODEL = "tests.cli_fixtures:make_mlp"
DATA = "tests.cli_fixtures:digits_loader"


def run(capsys, *args):
    main(["surface", "--model", MODEL, "--data", DATA, *args])
    return capsys.readouterr().out


def saved(tmp_path, model, name):
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return str(path)


def test_random_plane_run_matches_python(tmp_path, capsys):
    out = tmp_path / "run"
    text = run(
        capsys,
        "--grid",
        "-1:1:7",
        "--grid-beta",
        "-0.5:0.5:5",
        "--metric",
        "accuracy",
        "--seed",
        "3",
        "--out",
        str(out),
    )
    assert "random plane, grid 7 x 5" in text and "wrote" in text
    ds = cr.open_run(out)["surface"]
    assert ds.loss.shape == (7, 5) and "accuracy" in ds
    model = cli_fixtures.make_mlp()
    plane = cr.Plane.random(model, seed=3)
    again = cr.surface(
        model,
        F.cross_entropy,
        cli_fixtures.digits_loader(),
        plane,
        cr.Grid(np.linspace(-1, 1, 7), np.linspace(-0.5, 0.5, 5)),
        metrics={"accuracy": accuracy},
    )
    assert_close(ds.loss.values, again.loss.values, rtol=1e-6, label="cli vs python")
    loaded = cr.Plane.load(out / "plane.safetensors")
    assert all(torch.equal(loaded.directions[0][n], plane.directions[0][n]) for n in plane.origin)
    assert (out / "landscape.html").stat().st_size > 1_000_000


def test_pca_plane_from_a_recorded_trajectory(tmp_path, capsys):
    model = cli_fixtures.make_mlp()
    rec = cr.Recorder(model, to=tmp_path / "traj")
    x, y = next(iter(cli_fixtures.digits_loader()))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(8):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        rec.record()
    weights = saved(tmp_path, model, "final.pt")
    out = tmp_path / "pca"
    run(
        capsys,
        "--weights",
        weights,
        "--plane",
        "pca",
        "--trajectory",
        str(tmp_path / "traj"),
        "--grid",
        "-2:2:5",
        "--out",
        str(out),
    )
    result = cr.open_run(out)
    assert result["surface"].alpha.attrs["long_name"].startswith("PC1 (")
    assert result["path"].sizes["step"] == 9  # the initial weights and 8 steps
    assert float(result["path"].off_plane[-1]) < 1e-5  # the final weights are the origin


def test_between_and_axes_planes(tmp_path, capsys):
    a = saved(tmp_path, cli_fixtures.make_mlp(), "a.pt")
    torch.manual_seed(5)
    b = saved(tmp_path, MLP(), "b.pt")
    c = saved(tmp_path, MLP(), "c.pt")
    run(
        capsys,
        "--weights",
        a,
        "--plane",
        "between",
        "--weights-b",
        b,
        "--weights-c",
        c,
        "--grid",
        "0:1:3",
        "--out",
        str(tmp_path / "between"),
    )
    assert cr.open_run(tmp_path / "between")["surface"].attrs["plane_kind"] == "between"
    run(
        capsys,
        "--plane",
        "axes",
        "--axes",
        "net.1.weight[0, 5]",
        "net.4.bias[2]",
        "--grid",
        "-1:1:3",
        "--out",
        str(tmp_path / "axes"),
    )
    ds = cr.open_run(tmp_path / "axes")["surface"]
    assert ds.alpha.attrs["long_name"] == "net.1.weight[0, 5]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no_such_module_xyz:f"], "cannot import module 'no_such_module_xyz'"),
        (["--model", "tests.cli_fixtures:nothing"], "has no 'nothing'; it has:"),
        (["--model", "tests.cli_fixtures"], "not of the form package.module:name"),
        (["--model", "tests.cli_fixtures:not_a_model"], "returned str, not a torch.nn.Module"),
        (
            ["--data", "tests.cli_fixtures:wrong_shapes"],
            "the loader yields batches of x of shape (50, 1, 4, 8)",
        ),
        (["--loss", "hinge"], "--loss 'hinge' is not known"),
        (["--plane", "pca"], "--plane pca needs --trajectory"),
        (["--plane", "between"], "--plane between needs --weights-b"),
        (["--plane", "axes"], "--plane axes needs --axes"),
        (
            ["--axes", "net.1.bias[0]", "net.4.bias[0]"],
            "--axes does not apply to --plane random: it is for --plane axes; drop --axes, "
            "or choose --plane axes",
        ),
        (
            ["--plane", "axes", "--axes", "net.1.bias[0]", "net.4.bias[0]", "--seed", "3"],
            "--seed does not apply to --plane axes: it is for --plane random",
        ),
        (["--weights-c", "c.pt"], "--weights-c does not apply to --plane random"),
        (
            ["--plane", "pca", "--trajectory", "t", "--trainable-only"],
            "--trainable-only does not apply to --plane pca",
        ),
        (["--plane", "spiral"], "argument --plane: invalid choice: 'spiral'"),
        (["--eigenvectors", "0", "1"], "--eigenvectors does not apply to --plane random"),
        (["--plane", "hessian", "--eigenvectors", "0", "-1"], "--eigenvectors must be at least 0"),
        (["--weights", "/no/such/file.pt"], "no such file"),
    ],
)
def test_bad_specs_are_refused_with_the_fix(tmp_path, capsys, args, message):
    argv = [
        "surface",
        "--model",
        MODEL,
        "--data",
        DATA,
        "--grid",
        "-1:1:3",
        "--out",
        str(tmp_path / "run"),
        *args,
    ]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "run").exists()


def test_weights_that_do_not_fit_are_refused(tmp_path, capsys):
    wrong = saved(tmp_path, torch.nn.Linear(3, 2), "wrong.pt")
    with pytest.raises(SystemExit):
        main(
            [
                "surface",
                "--model",
                MODEL,
                "--data",
                DATA,
                "--weights",
                wrong,
                "--out",
                str(tmp_path / "run"),
            ]
        )
    err = capsys.readouterr().err
    assert "does not fit the model: missing ['net.1.bias'" in err
    assert "unexpected ['bias', 'weight']" in err


@pytest.mark.parametrize("grid", ["1:-1:5", "-1:1", "a:b:c", "-1:1:1"])
def test_bad_grids_are_refused(capsys, grid):
    with pytest.raises(SystemExit):
        main(["surface", "--model", MODEL, "--data", DATA, "--grid", grid])
    assert "START:STOP:NUM" in capsys.readouterr().err or "START < STOP" in capsys.readouterr().err


@pytest.fixture
def first_weights_kind():
    """A plane kind registered for one test: the first layer's first two weights."""

    def build(sources):
        return cr.Plane.axes(sources.model, "net.1.weight[0, 0]", "net.1.weight[0, 1]")

    kind = planes.register(planes.PlaneKind("first-weights", "two weights", build))
    yield kind
    del planes.KINDS[kind.name]


def test_a_registered_kind_is_a_choice_of_the_command(tmp_path, capsys, first_weights_kind):
    out = tmp_path / "run"
    text = run(capsys, "--plane", "first-weights", "--grid", "-1:1:3", "--out", str(out))
    assert "axes plane, grid 3 x 3" in text
    assert cr.open_run(out)["surface"].alpha.attrs["long_name"] == "net.1.weight[0, 0]"
    with pytest.raises(SystemExit):
        run(capsys, "--plane", "first-weights", "--normalize", "layer")
    assert "--normalize does not apply to --plane first-weights" in capsys.readouterr().err


def test_trainable_only_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    run(capsys, "--trainable-only", "--seed", "2", "--grid", "-1:1:3", "--out", str(out))
    ds = cr.open_run(out)["surface"]
    assert ds.attrs["plane_trainable_only"] and list(ds.attrs["plane_frozen"]) == []
    assert ds.attrs["plane_seed"] == 2


@pytest.mark.slow
def test_grid_auto_holds_the_path_and_says_what_it_chose(tmp_path, capsys):
    model = cli_fixtures.make_mlp()
    rec = cr.Recorder(model, to=tmp_path / "traj")
    x, y = next(iter(cli_fixtures.digits_loader()))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(6):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        rec.record()
    out, trajectory = tmp_path / "auto", str(tmp_path / "traj")
    weights = saved(tmp_path, model, "final.pt")
    args = ["--weights", weights, "--plane", "pca", "--trajectory", trajectory, "--out", str(out)]
    text = run(capsys, *args, "--grid", "auto:7", "--rise", "1.5")
    result = cr.open_run(out)
    ds, path = result["surface"], result["path"]
    assert f"grid: {ds.attrs['grid_chosen']}" in text and ds.loss.shape == (7, 7)
    assert report.outside({"path": path}, cr.Grid(ds.alpha.values, ds.beta.values)) == 0
    assert "grid range" in (out / "landscape.html").read_text()
    # the same grid as in Python
    loader = cli_fixtures.digits_loader()
    plane = cr.Plane.pca(cr.Trajectory.load(trajectory))
    again = cr.project(cr.Trajectory.load(trajectory), plane, model, F.cross_entropy, loader)
    grid = cr.Grid.auto(model, F.cross_entropy, loader, plane, rise=1.5, num=7, cover=again)
    assert_close(ds.alpha.values, grid.axes[0], rtol=1e-6, label="alpha")
    assert_close(ds.beta.values, grid.axes[1], rtol=1e-6, label="beta")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "auto:1"], "auto:NUM needs NUM from 2"),
        (["--grid", "auto", "--grid-beta", "-1:1:5"], "--grid-beta does not go with --grid auto"),
        (["--grid-beta", "auto"], "give --grid auto, which chooses both axes"),
        (["--grid", "auto", "--rise", "0.5"], "rise must be a number > 1"),
        (["--rise", "3"], "--rise is for --grid auto"),
        (["--grid", "auto", "--plane", "between", "--weights-b", "x.pt"], "has one direction"),
    ],
)
def test_grid_auto_refusals(tmp_path, capsys, args, message):
    torch.manual_seed(5)
    other = saved(tmp_path, MLP(), "x.pt")  # other weights: --plane between has a line
    args = [other if a == "x.pt" else a for a in args]
    with pytest.raises(SystemExit):
        run(capsys, *args, "--out", str(tmp_path / "run"))
    assert message in capsys.readouterr().err
