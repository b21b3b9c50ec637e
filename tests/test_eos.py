"""`crumple demo --eos`: the edge of stability end to end (the curvature starts below half of
2/lr, ends at it; the page draws the threshold at 2/lr), its options, and a trajectory with
curvature taken through `crumple surface`, `crumple info` and `crumple plot`."""

import base64
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.cli import main
from crumple.hessian import Tracking
from tests import cli_fixtures
from tests.test_cli_surface import DATA, MODEL, saved


def page_figures(page):
    text = page.read_text()
    found = re.search(r'<script id="figures" type="application/json">(.*?)</script>', text, re.S)
    return json.loads(found.group(1))


def values(array):
    """A trace's numbers, as plotly writes them (a list, or typed-array base64)."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def curvature_panel(page):
    return next(
        f for f in page_figures(page) if any(t.get("meta") == "step-mark" for t in f["data"])
    )


@pytest.mark.slow
def test_demo_eos_reaches_the_edge_of_stability(tmp_path, capsys):
    out = tmp_path / "eos"
    main(["demo", "--eos", "--out", str(out)])
    printed = capsys.readouterr().out
    history = cr.open(out)["sharpness"]
    threshold = 2 / 0.05  # lr 0.05
    top, steps = history.lambda_max.values, history.step.values
    assert steps[0] == 0 and steps[-1] == 6000 and np.all(np.diff(steps) == 50)
    assert top[0] < 0.5 * threshold, f"lambda_max at step 0 is {top[0]}"
    last_third = top[steps >= 4000]
    assert abs(np.median(last_third) / threshold - 1) < 0.10, np.median(last_third)
    assert np.all(history.threshold.values == threshold)
    assert np.all(history.lambda_max_residual.values <= 1e-4)
    panel = curvature_panel(out / "landscape.html")
    line = next(t for t in panel["data"] if t.get("name", "").startswith("threshold"))
    assert set(values(line["y"])) == {threshold} and "2 / lr" in line["name"]
    assert f"2 / lr = {threshold:g}" in printed and "median of the last third" in printed
    path = cr.open(out)["gradient descent"]
    assert path.step.values[-1] == 6000 and float(path.loss[-1]) < float(path.loss[0]) / 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eos", "--lm"], "--lm and --eos are two demos"),
        (["--eos", "--epochs", "3"], "--epochs is for another demo, not --eos"),
        (["--eos", "--quick"], "--quick is for another demo, not --eos"),
        (["--eos", "--optimizer", "adam"], "--optimizer is for another demo"),
        (["--eos", "--steps", "1"], "--steps must be at least 2"),
        (["--eos", "--grid-size", "5000"], "--grid-size must be at most 2000"),
        (["--eos", "--lr", "0"], "--lr"),
    ],
)
def test_demo_eos_refuses_options_that_do_not_apply(tmp_path, capsys, args, message):
    out = tmp_path / "eos"
    with pytest.raises(SystemExit) as stop:
        main(["demo", *args, "--out", str(out)])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_demo_eos_takes_its_own_lr_and_steps(tmp_path, capsys):
    out = tmp_path / "eos"
    main(["demo", "--eos", "--lr", "0.2", "--steps", "40", "--grid-size", "5", "--out", str(out)])
    history = cr.open(out)["sharpness"]
    assert np.all(history.threshold.values == pytest.approx(2 / 0.2))
    assert history.step.values.tolist() == list(range(0, 41))  # 40 steps: every step
    assert cr.open(out)["surface"].loss.shape == (5, 5)
    assert "2 / lr = 10" in capsys.readouterr().out


def test_a_recorded_trajectory_brings_its_curvature_to_the_run(tmp_path, capsys):
    model = cli_fixtures.make_mlp()
    x, y = next(iter(cli_fixtures.digits_loader()))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    track = Tracking(F.cross_entropy, (x, y), every=2, optimizer=opt)
    rec = cr.Recorder(model, to=tmp_path / "traj", curvature=track)
    for _ in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        rec.record(loss=loss)
    weights = saved(tmp_path, model, "final.pt")
    out = tmp_path / "run"
    trajectory = str(tmp_path / "traj")
    main(["surface", "--model", MODEL, "--data", DATA, "--weights", weights, "--plane", "pca",
          "--trajectory", trajectory, "--grid", "-2:2:5", "--out", str(out)])  # fmt: skip
    stored = cr.open(out)["sharpness"]
    assert stored.step.values.tolist() == [0, 2, 4, 6, 8]
    assert np.array_equal(stored.lambda_max.values, rec.sharpness().lambda_max.values)
    assert stored.attrs["threshold_formula"] == "2 / lr"
    assert "sharpness" not in cr.open(out)["surface"].data_vars
    capsys.readouterr()
    main(["info", str(out)])
    said = capsys.readouterr().out
    assert "curvature in training: sharpness.zarr, 5 measurements, steps 0 .. 8" in said
    assert "  lambda_max: " in said and "threshold 4 (2 / lr)" in said
    main(["plot", str(out), "--html", str(tmp_path / "again.html")])
    panel = curvature_panel(tmp_path / "again.html")
    drawn = next(t for t in panel["data"] if t.get("name") == "λ_max")
    assert values(drawn["y"]) == stored.lambda_max.values.tolist()


def test_a_damaged_history_leaves_the_run_readable(tmp_path, capsys):
    out = tmp_path / "eos"
    main(["demo", "--eos", "--steps", "6", "--grid-size", "3", "--out", str(out)])
    chunk = next(p for p in (out / "sharpness.zarr" / "lambda_max").rglob("*") if p.is_file()
                 and p.name != "zarr.json")  # fmt: skip
    chunk.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="sharpness.zarr' is damaged"):
        run = cr.open(out)
    assert "sharpness" not in run and run["surface"].loss.shape == (3, 3)
    with pytest.warns(UserWarning, match="sharpness not drawn"):
        main(["plot", str(out), "--html", str(tmp_path / "page.html")])
    assert "sharpness not drawn" in (tmp_path / "page.html").read_text()


def test_the_summary_says_when_the_curvature_starts_above_the_threshold():
    from crumple.cli.eos import summary

    def history(*values):
        rows = [{"step": 5 * k, "loss": 1.0, "lambda_max": v} for k, v in enumerate(values)]
        return cr.Trajectory(curvature=rows).sharpness()

    assert "above 2 / lr from the start" in summary(history(11.6, 10.4), 0.2)  # 2 / lr = 10
    assert "reached 2 / lr at step 5" in summary(history(9.0, 10.4), 0.2)
    assert "never reached 2 / lr" in summary(history(9.0, 9.5), 0.2)
