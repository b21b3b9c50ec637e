"""Metrics drawn (a panel each, accuracy in %; ``crumple plot --var``) and ``crumple line``
(the loss between two models, along a direction, between a path's ends), checked against
cr.line and against the models' losses computed by hand in float64."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

import crumple as cr
from crumple.cli import main
from crumple.plot.metrics import metric_panels, variable_figures
from crumple.specs import accuracy
from tests import cli_fixtures
from tests.cases import MLP, assert_close
from tests.test_browser import browser, opened  # noqa: F401  (the Chromium fixture)

MODEL = "tests.cli_fixtures:make_mlp"
DATA = "tests.cli_fixtures:digits_loader"


def page_figures(file) -> list[dict]:
    text = Path(file).read_text(encoding="utf-8")
    return json.loads(re.search(r'<script id="figures"[^>]*>(.*?)</script>', text, re.S)[1])


def decoded(values) -> np.ndarray:
    """A trace's array as plotly's JSON holds it: a list, or base64 with its dtype."""
    if isinstance(values, dict):
        import base64

        flat = np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
        shape = [int(n) for n in str(values.get("shape", len(flat))).split(",")]
        return flat.reshape(shape)
    return np.asarray(values, dtype=float)


def trace(figures, name, kind=None):
    found = [
        t for f in figures for t in f["data"] if t.get("name") == name and kind in (None, t["type"])
    ]
    assert found, (
        f"no trace named {name!r} in {[t.get('name') for f in figures for t in f['data']]}"
    )
    return found[0]


def saved(tmp_path, model, name):
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return str(path)


def by_hand(model, weights=None):
    """The mean cross-entropy and accuracy of ``model`` on the digits, in float64."""
    model = model.double()
    if weights is not None:
        model.load_state_dict(torch.load(weights, weights_only=True))
        model.double()
    total, correct, n = 0.0, 0.0, 0
    with torch.no_grad():
        for x, y in cli_fixtures.digits_loader():
            pred = model(x.double())
            total += float(F.cross_entropy(pred, y, reduction="sum"))
            correct += float((pred.argmax(1) == y).sum())
            n += len(y)
    return total / n, correct / n


@pytest.fixture(scope="module")
def metric_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("metric") / "run"
    main(
        ["surface", "--model", MODEL, "--data", DATA, "--metric", "accuracy"]
        + ["--grid=-1:1:5", "--grid-beta=-0.5:0.5:3", "--out", str(out)]
    )
    return out


def test_a_metric_gets_its_own_panel_in_percent(metric_run):
    ds = cr.open_run(metric_run)["surface"]
    panel = trace(page_figures(metric_run / "landscape.html"), "accuracy (%)", "contour")
    drawn = decoded(panel["z"])
    assert_close(
        drawn,
        100 * ds.accuracy.transpose("beta", "alpha").values,
        rtol=1e-12,
        label="accuracy panel",
    )
    assert drawn.min() >= 0 and drawn.max() <= 100 and drawn.max() > 1  # percent, not a fraction


def test_plot_var_draws_the_page_of_one_variable(metric_run, tmp_path, capsys):
    page = tmp_path / "accuracy.html"
    main(["plot", str(metric_run), "--html", str(page), "--var", "accuracy"])
    assert "wrote" in capsys.readouterr().out
    ds = cr.open_run(metric_run)["surface"]
    figures = page_figures(page)
    view = trace(figures, "accuracy (%)", "surface")
    assert_close(
        decoded(view["z"]),
        100 * ds.accuracy.transpose("beta", "alpha").values,
        rtol=1e-12,
        label="accuracy surface",
    )
    names = [t.get("name") for f in figures for t in f["data"]]
    assert "loss" not in names and not any(str(n).startswith("local minima") for n in names)


def test_plot_var_not_in_the_run_is_refused_listing_what_is_there(metric_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["plot", str(metric_run), "--html", str(tmp_path / "p.html"), "--var", "top5"])
    err = capsys.readouterr().err
    assert "--var='top5' is not a variable of the run" in err and "loss, accuracy" in err
    assert not (tmp_path / "p.html").exists()


def test_a_metric_along_a_path_is_drawn_where_the_path_holds_it():
    a = np.linspace(-1, 1, 3)
    ds = xr.Dataset(
        {"loss": (("alpha", "beta"), np.ones((3, 3))), "accuracy": (("alpha", "beta"), np.eye(3))},
        coords={"alpha": a, "beta": a},
    )
    path = xr.Dataset(
        {v: ("step", [0.0, 0.5]) for v in ("alpha", "beta", "loss")}, coords={"step": [0, 1]}
    )
    without = metric_panels(ds, {"SGD": path})
    names = [t.name for t in without[0].data]
    assert len(without) == 1 and names[0] == "accuracy (%)" and "SGD" in names
    held = metric_panels(ds, {"SGD": path.assign(accuracy=("step", [0.25, 0.75]))})
    along = [t for f in held for t in f.data if t.type == "scatter" and t.name == "SGD"]
    assert [list(t.y) for t in along][-1] == [25.0, 75.0]
    page = variable_figures(ds, {"SGD": path}, "accuracy")
    assert [t.name for t in page[0].data][0] == "accuracy (%)"


def test_an_accuracy_already_in_percent_is_drawn_as_it_is():
    a = np.linspace(-1, 1, 3)
    ds = xr.Dataset(
        {
            "loss": (("alpha", "beta"), np.ones((3, 3))),
            "accuracy": (("alpha", "beta"), np.full((3, 3), 80.0)),
        },
        coords={"alpha": a, "beta": a},
    )
    panel = metric_panels(ds)[0].data[0]
    assert panel.name == "accuracy" and float(np.asarray(panel.z).max()) == 80.0


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    a = saved(folder, cli_fixtures.make_mlp(), "a.pt")
    torch.manual_seed(5)
    b = saved(folder, MLP(), "b.pt")
    return a, b


def test_line_between_two_models_marks_both_at_their_own_loss(two_models, tmp_path, capsys):
    a, b = two_models
    out = tmp_path / "line"
    main(
        ["line", "--model", MODEL, "--data", DATA, "--weights", a, "--weights-b", b]
        + ["--metric", "accuracy", "--dtype", "float64", "--grid=-0.3:1.3:5", "--out", str(out)]
    )
    said = capsys.readouterr().out
    ds = cr.open_run(out)["surface"]
    # the grid's 5 points, and the models' own t=0 and t=1
    assert ds.alpha.values.tolist() == pytest.approx([-0.3, 0.0, 0.1, 0.5, 0.9, 1.0, 1.3])
    model_a = cli_fixtures.make_mlp()
    model_a.load_state_dict(torch.load(a, weights_only=True))
    model_b = cli_fixtures.make_mlp()
    model_b.load_state_dict(torch.load(b, weights_only=True))
    model_a, model_b = model_a.double(), model_b.double()  # b - a exact: t=1 is b itself
    again = cr.line(
        model_a,
        F.cross_entropy,
        cli_fixtures.digits_loader(),
        cr.Plane.between(model_a, model_b),
        ds.alpha.values,
        dtype="float64",
        metrics={"accuracy": accuracy},
        progress=False,
    )
    assert_close(ds.loss.values, again.loss.values, rtol=1e-12, label="cli vs cr.line")
    assert_close(ds.accuracy.values, again.accuracy.values, rtol=1e-12, label="accuracy")
    figures = page_figures(out / "landscape.html")
    for name, t, weights in (("a", 0.0, a), ("b", 1.0, b)):
        loss, acc = by_hand(cli_fixtures.make_mlp(), weights)
        marks = [tr for f in figures for tr in f["data"] if tr.get("name") == name]
        assert [decoded(m["x"]).tolist() for m in marks] == [[t], [t]]  # loss and accuracy
        assert abs(decoded(marks[0]["y"])[0] - loss) <= 1e-10 * loss, (name, loss)
        assert abs(decoded(marks[1]["y"])[0] - 100 * acc) <= 1e-10, (name, acc)
        assert f"{loss:.6g} at t={t:g}" in said
    assert "accuracy (%) along the line" in json.dumps([f["layout"]["title"] for f in figures])
    assert "line minimum" in (out / "landscape.html").read_text()
    with pytest.raises(SystemExit):  # a static figure draws a surface
        main(["plot", str(out), "--png", str(tmp_path / "line.png")])
    assert "is drawn on its page" in capsys.readouterr().err
    assert not (tmp_path / "line.png").exists()


def test_line_along_a_random_direction_is_cr_lines(tmp_path, capsys):
    out = tmp_path / "random"
    main(
        ["line", "--model", MODEL, "--data", DATA, "--seed", "3", "--grid=-1:1:5"]
        + ["--out", str(out)]
    )
    ds = cr.open_run(out)["surface"]
    model = cli_fixtures.make_mlp()
    again = cr.line(
        model,
        F.cross_entropy,
        cli_fixtures.digits_loader(),
        cr.Plane.random(model, seed=3),
        ds.alpha.values,
        progress=False,
    )
    assert_close(ds.loss.values, again.loss.values, rtol=1e-6, label="random line")
    names = [t.get("name") for f in page_figures(out / "landscape.html") for t in f["data"]]
    assert names.count("model") == 1 and "a" not in names


def test_line_between_a_paths_ends(tmp_path, capsys):
    model = cli_fixtures.make_mlp()
    rec = cr.Recorder(model, to=tmp_path / "traj")
    x, y = next(iter(cli_fixtures.digits_loader()))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        rec.record()
    trajectory = cr.Trajectory.load(tmp_path / "traj")
    out = tmp_path / "ends"
    main(
        ["line", "--model", MODEL, "--data", DATA, "--trajectory", str(tmp_path / "traj")]
        + ["--dtype", "float64", "--grid=0:1:3", "--out", str(out)]
    )
    run = cr.open_run(out)
    first, last = trajectory.steps[0], trajectory.steps[-1]
    assert run["surface"].alpha.attrs["long_name"] == f"step {first} -> step {last}"
    path = run["path"]
    assert abs(float(path.alpha[0])) < 1e-12 and abs(float(path.alpha[-1]) - 1) < 1e-12
    assert_close(
        path.loss.values[[0, -1]],
        run["surface"].loss.values[[0, -1]],
        rtol=1e-10,
        label="the path's ends on the line",
    )
    names = [t.get("name") for f in page_figures(out / "landscape.html") for t in f["data"]]
    assert f"step {first}" in names and f"step {last}" in names and "path" in names


@pytest.mark.parametrize(
    "args, message",
    [
        (["line", "--plane", "between"], "--plane between needs --weights-b"),
        (["line", "--plane", "ends"], "--plane ends needs --trajectory DIR"),
        (["line", "--trajectory", "t", "--seed", "3"], "--seed does not apply to --plane ends"),
        (["line", "--grid", "auto"], "crumple line takes START:STOP:NUM"),
        (["line", "--eigenvectors", "0", "1"], "--eigenvectors does not apply to --plane random"),
        (["surface", "--plane", "between", "--weights-b", "b.pt"], "draw it with crumple line"),
    ],
)
def test_refusals_name_the_fix(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        main([*args, "--model", MODEL, "--data", DATA, "--out", str(tmp_path / "run")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "landscape.zarr").exists()


@pytest.mark.browser
@pytest.mark.slow
def test_metric_and_line_pages_draw_every_panel_in_chromium(
    browser,  # noqa: F811 (the fixture)
    metric_run,
    two_models,
    tmp_path,
):
    a, b = two_models
    line = tmp_path / "line"
    main(
        ["line", "--model", MODEL, "--data", DATA, "--weights", a, "--weights-b", b]
        + ["--metric", "accuracy", "--grid=0:1:3", "--out", str(line)]
    )
    for file in (metric_run / "landscape.html", line / "landscape.html"):
        page, errors = opened(browser, file)
        for width in (1400, 390):
            page.set_viewport_size({"width": width, "height": 900})
            page.wait_for_timeout(300)
            drawn = page.locator(".js-plotly-plot").count()
            titles = page.locator(".gtitle").all_text_contents()
            assert not errors and drawn == len(page_figures(file)), (file, width, errors, drawn)
            assert any("accuracy (%)" in t for t in titles), (file, width, titles)
        page.close()


def test_a_projected_path_carries_each_metric_at_its_snapshots():
    torch.manual_seed(0)
    model = MLP().double()
    x, y = cli_fixtures.digits_loader().dataset.tensors
    data = (x.double(), y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    with cr.Recorder(model) as rec:
        for _ in range(4):
            optimizer.zero_grad()
            F.cross_entropy(model(data[0]), y).backward()
            optimizer.step()
            rec.record()
    path = cr.project(
        rec.trajectory,
        cr.Plane.pca(rec.trajectory),
        model,
        F.cross_entropy,
        data,
        metrics={"accuracy": accuracy},
    )
    snapshots = [rec.trajectory.snapshot(k) for k in range(len(rec.trajectory))]
    slow = cr.reference.points(model, {"accuracy": accuracy}, data, snapshots)["accuracy"]
    assert_close(path.accuracy.values, slow, rtol=1e-12, label="accuracy along the path")
    assert len(set(np.round(path.accuracy.values, 6))) > 1  # it moves as training goes


def test_a_float64_plane_through_a_float32_batchnorm_model_casts_its_buffers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    net.train()(torch.randn(16, 4))  # running statistics of its own
    net.eval()
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    plane = cr.Plane.random(net, seed=0, ndim=1).to(None, torch.float64)  # as crumple line
    ds = cr.line(net, F.cross_entropy, (x, y), plane, np.linspace(-1, 1, 5))
    slow = cr.reference.points(net.double(), {"loss": F.cross_entropy}, (x.double(), y),
                               [plane.at(float(t)) for t in ds.alpha.values])["loss"]  # fmt: skip
    assert_close(ds.loss.values, slow, rtol=1e-12, label="float64 line, float32 buffers")
