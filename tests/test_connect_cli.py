"""`crumple connect`: two models, the line, the aligned line and a trained curve written to
a run folder (each loss against t equal to cr.path_loss), the barriers printed, the page
drawn in Chromium (surface, line and curve, a, b and the bend marked, the t panel), and
wrong inputs."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.cli import main
from crumple.errors import CrumpleError
from tests import cli_fixtures
from tests.cases import digits
from tests.test_browser import browser, opened  # noqa: F401  (the Chromium fixture)

MODEL, DATA = "tests.cli_fixtures:make_mlp", "tests.cli_fixtures:digits_loader"


def saved(folder, seed):
    torch.manual_seed(seed)
    net = cli_fixtures.make_mlp()
    torch.manual_seed(seed)
    for p in net.parameters():  # a trained-looking model of its own
        p.data.normal_(0, 0.3)
    x, y = digits(200, dtype=torch.float32)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    path = folder / f"m{seed}.pt"
    torch.save(net.state_dict(), path)
    return net, str(path)


@pytest.fixture(scope="module")
def connected(tmp_path_factory):
    folder = tmp_path_factory.mktemp("connect")
    (a, wa), (b, wb) = saved(folder, 1), saved(folder, 2)
    out = folder / "run"
    args = ["connect", "--model", MODEL, "--data", DATA, "--weights", wa, "--weights-b", wb,
            "--align", "weights", "--curve", "bezier", "--steps", "100", "--grid-size", "11",
            "--points", "9", "--out", str(out)]  # fmt: skip
    main(args)
    return a, b, out


def test_the_run_holds_the_aligned_line_and_the_curve_as_path_loss_gives_them(connected):
    a, b, out = connected
    run = cr.open(out)
    assert sorted(run) == ["aligned line", "bezier", "surface"]
    data = cli_fixtures.digits_loader()
    aligned = cr.align(a, b)
    t = np.linspace(0, 1, 9)
    again = cr.path_loss(a, F.cross_entropy, data, cr.Curve.line(a, aligned), t)
    assert np.allclose(run["aligned line"].loss.values, again.loss.values, rtol=1e-5)
    assert np.allclose(run["aligned line"].alpha.values, t) and not run["aligned line"].beta.any()
    bent = run["bezier"]
    assert np.allclose(bent.alpha.values, t * t) and np.allclose(bent.beta, 2 * t * (1 - t))
    surface = run["surface"]
    assert surface.attrs["plane_kind"] == "between" and surface.attrs["plane_third"] == "bend"
    # the models sit on the grid: a at (0, 0), the aligned b at (1, 0), the bend at (0, 1)
    for alpha, beta in ((0, 0), (1, 0), (0, 1)):
        assert surface.alpha.min() < alpha < surface.alpha.max()
        assert surface.beta.min() < beta < surface.beta.max()
    ends = surface.loss.sel(alpha=0, beta=0, method="nearest")
    assert np.isfinite(float(ends))


def test_barriers_are_printed_for_each_line_and_curve(tmp_path, capsys):
    (_, wa), (_, wb) = saved(tmp_path, 1), saved(tmp_path, 2)
    main(["connect", "--model", MODEL, "--data", DATA, "--weights", wa, "--weights-b", wb,
          "--align", "activations", "--grid-size", "5", "--points", "5",
          "--out", str(tmp_path / "run")])  # fmt: skip
    said = capsys.readouterr().out
    assert "barrier (line): " in said and "barrier (aligned line): " in said
    run = cr.open(tmp_path / "run")
    assert sorted(run) == ["aligned line", "line", "surface"]
    assert run["surface"].attrs["plane_third"] == "b aligned"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --align weights|activations, --curve bezier|polychain or both"),
        (["--curve", "spline"], "invalid choice: 'spline'"),
        (["--align", "weights", "--grid-size", "5000"], "--grid-size must be at most 2000"),
        (["--curve", "bezier", "--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_wrong_options_are_refused_before_anything_is_written(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    args = ["connect", "--model", MODEL, "--data", DATA, "--weights-b", "b.pt", "--out", str(out)]
    with pytest.raises(SystemExit) as stop:
        main(args + extra)
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.browser
def test_the_page_draws_the_surface_the_line_the_curve_the_models_and_the_t_panel(
    browser,  # noqa: F811
    connected,
):
    _, _, out = connected
    page, errors = opened(browser, out / "landscape.html")
    got = page.evaluate("""() => [...document.querySelectorAll(".panel > div")].map((d) => ({
      title: (d.layout.title && d.layout.title.text) || "",
      names: d._fullData.map((t) => t.name), types: d._fullData.map((t) => t.type),
      marks: (d._fullData.find((t) => t.meta === "models") || {}).text || null}))""")
    scene, flat = got[0], got[1]
    assert "surface" in scene["types"] and {"aligned line", "bezier"} <= set(scene["names"])
    assert {"aligned line", "bezier"} <= set(flat["names"])
    assert list(flat["marks"]) == ["a", "b", "bend"], flat["marks"]
    panel = next(g for g in got if g["title"] == "Loss against t")
    assert panel["names"] == ["line", "aligned line", "bezier"]
    assert errors == []
    page.close()


def test_the_aligned_plane_kind_puts_b_and_its_aligned_copy_at_one_loss(tmp_path, capsys):
    (_, wa), (_, wb) = saved(tmp_path, 1), saved(tmp_path, 2)
    out = tmp_path / "aligned"
    main(["surface", "--model", MODEL, "--data", DATA, "--weights", wa, "--plane", "aligned",
          "--weights-b", wb, "--grid", "-0.5:1.5:5", "--dtype", "float64",
          "--out", str(out)])  # fmt: skip
    surface = cr.open(out)["surface"]
    assert surface.attrs["plane_kind"] == "aligned"
    b, aligned = (float(surface.loss.sel(alpha=x, beta=y)) for x, y in ((1.0, 0.0), (0.0, 1.0)))
    assert b == pytest.approx(aligned, rel=1e-6)  # the same function (float32 directions)
    from crumple.plot.style import model_points

    assert model_points(surface) == {"a": (0.0, 0.0), "b": (1.0, 0.0), "b aligned": (0.0, 1.0)}


def test_an_aligned_plane_of_models_whose_units_already_match_is_refused():
    from crumple import planes
    from tests.cases import MLP

    a = MLP()
    with pytest.raises(CrumpleError, match="already match a's"):
        planes.build("aligned", planes.Sources(a, (copy.deepcopy(a),)))
