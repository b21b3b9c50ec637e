"""`crumple hessian` and `crumple surface --plane hessian` on a 310-parameter float64 MLP:
the stored numbers are those of crumple.hessian with the same seed, the pages show them,
and bad input is refused before any folder is made."""

import base64
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

import crumple as cr
from crumple.cli import main
from crumple.cli.info import describe
from crumple.hessian.results import summary
from crumple.plot.spectra import ONE_EIGENVALUE, bump
from tests import cli_fixtures
from tests.cases import assert_close
from tests.test_browser import browser, opened  # noqa: F401  (the fixture)

MODEL = "tests.cli_fixtures:make_tiny64"
DATA = "tests.cli_fixtures:digits_pair"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def hessian(*args):
    main(["hessian", "--model", MODEL, "--data", DATA, *args])


def figures(page) -> list[dict]:
    """The plotly figures of a crumple page, as JSON."""
    found = re.search(r'<script id="figures" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(found.group(1).replace("<\\/", "</"))


def array(values) -> np.ndarray:
    """An array of a figure's JSON: a list, or plotly's typed array (``bdata``)."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
    return np.asarray(values)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run of the command with the eigenvalues at both ends, the trace and the density."""
    out = tmp_path_factory.mktemp("hessian") / "run"
    hessian(
        "--top", "3", "--bottom", "2", "--trace", "--probes", "10", "--density", "--out", str(out)
    )
    return out


def test_the_command_stores_what_the_library_computes(run, capsys):
    ds = cr.store.open_hessian(run)
    model, data = cli_fixtures.make_tiny64(), cli_fixtures.digits_pair()
    largest = cr.hessian.eigen(model, F.cross_entropy, data, k=3)
    smallest = cr.hessian.eigen(model, F.cross_entropy, data, k=2, which="smallest")
    assert ds["rank"].values.tolist() == [0, 1, 2, -2, -1]
    assert_close(ds.eigenvalues.sel(rank=[0, 1, 2]), largest.eigenvalues, 1e-12, "largest")
    assert_close(ds.eigenvalues.sel(rank=[-1, -2]), smallest.eigenvalues, 1e-12, "smallest")
    assert (ds.residuals < 1e-4).all()  # the smallest: relative to |lambda|, not the span
    trace = cr.hessian.trace(model, F.cross_entropy, data, probes=10, seed=0)
    assert (ds.attrs["trace"], ds.attrs["trace_stderr"], ds.attrs["trace_probes"]) == (
        trace.estimate,
        trace.stderr,
        10,
    )
    esd = cr.hessian.density(model, F.cross_entropy, data)
    assert_close(ds.density, esd.density, 1e-12, "density")
    assert_close(ds.eigenvalue, esd.eigenvalue, 1e-12, "density grid")
    assert ds.attrs["n_parameters"] == 310 and ds.attrs["n_samples"] == 64
    assert ds.attrs["dtype"] == "float64" and ds.attrs["loss_name"] == "cross_entropy"


def test_the_page_draws_the_density_on_a_log_axis_with_the_eigenvalues(run):
    page = (run / "hessian.html").read_text()
    density, ranks = figures(page)
    assert density["layout"]["yaxis"]["type"] == "log"
    names = [t["name"] for t in density["data"]]
    assert names == ["density", "largest eigenvalues (3)", "smallest eigenvalues (2)"]
    ds = cr.store.open_hessian(run)
    # the axis stops at a tenth of one eigenvalue's bump, and the subtitle says how
    floor = ONE_EIGENVALUE * bump(310, ds.attrs["density_width"])
    assert density["layout"]["yaxis"]["range"][0] == pytest.approx(np.log10(floor))
    drawn = array(density["data"][0]["y"])
    assert drawn.min() == pytest.approx(floor / 10) and drawn[[0, -1]].max() < floor
    shown = drawn > floor  # the curve as computed where it is above the floor
    assert_close(drawn[shown], ds.density.values[shown], 1e-12, "drawn density")
    subtitle = density["layout"]["title"]["text"]
    width = f"{ds.attrs['density_width']:.2g}"
    assert "10 random probes x 40 Lanczos steps" in subtitle and f"width {width}" in subtitle
    marked = array(density["data"][1]["x"])
    assert_close(marked, ds.eigenvalues.sel(rank=[0, 1, 2]), 1e-12, "marked eigenvalues")
    assert [t["name"] for t in ranks["data"]] == ["largest", "smallest"]
    assert "crumple: cross_entropy Hessian" in page
    for fact in ("top eigenvalue", "Hessian trace", "smallest eigenvalue", "density"):
        assert f"{fact}: <b>" in page, fact
    top = float(ds.eigenvalues.sel(rank=0))
    assert f"top eigenvalue: <b>{top:.5g}</b>" in page


@pytest.mark.slow
def test_blocks_and_sharpness(tmp_path, capsys, monkeypatch):
    built, init = [], cr.hessian.Hessian.__init__
    monkeypatch.setattr(
        cr.hessian.Hessian, "__init__", lambda self, *a, **k: built.append(k) or init(self, *a, **k)
    )
    out = tmp_path / "blocks"
    hessian(
        "--top", "2", "--trace", "--probes", "6", "--density", "--sharpness", "--by", "layer",
        "--seed", "3", "--out", str(out),
    )  # fmt: skip
    assert len(built) == 1  # one operator served every estimator, blocks and sharpness
    text = capsys.readouterr().out
    assert "2 blocks by layer" in text and "epsilon-sharpness" in text
    ds = cr.store.open_hessian(out)
    assert summary(ds) in text  # the library's schema and summary
    model, data = cli_fixtures.make_tiny64(), cli_fixtures.digits_pair()
    options = {"seed": 3, "by": "layer"}
    eigen = cr.hessian.eigen(model, F.cross_entropy, data, k=2, **options)
    trace = cr.hessian.trace(model, F.cross_entropy, data, probes=6, **options)
    assert ds.block.values.tolist() == ["1", "3"] == list(eigen)
    for block in eigen:
        one = ds.sel(block=block)
        assert_close(one.block_eigenvalues, eigen[block].eigenvalues, 1e-12, block)
        assert float(one.block_trace) == trace[block].estimate
        assert one.block_density.shape == one.block_eigenvalue.shape == (400,)
    sharpness = cr.hessian.sharpness(model, F.cross_entropy, data, probes=6, seed=3)
    for key, value in sharpness.as_dict().items():
        assert ds.attrs[f"sharpness_{key}"] == pytest.approx(value, rel=1e-9), key
    esd = cr.hessian.density(model, F.cross_entropy, data, seed=3)
    width = esd.attrs["width"]  # the blocks are smoothed by the whole model's kernel
    blocks = cr.hessian.density(model, F.cross_entropy, data, width=width, **options)
    assert ds.block_density_width.values.tolist() == [width, width]
    assert ds.block_n_parameters.values.tolist() == [blocks[b].attrs["n_parameters"] for b in eigen]
    assert int(ds.block_n_parameters.sum()) == 310
    page = (out / "hessian.html").read_text()
    spectrum, ranks, densities, traces = figures(page)  # the whole model's panels first
    assert [t["name"] for t in spectrum["data"]] == ["density", "largest eigenvalues (2)"]
    assert [t["name"] for t in densities["data"]] == ["whole model", "block 1", "block 3"]
    assert densities["layout"]["yaxis"]["type"] == "log"
    floor = ONE_EIGENVALUE * bump(310, width)
    for k, block in enumerate(eigen):
        curve, one = densities["data"][k + 1], blocks[block]
        assert_close(array(curve["x"]), one.eigenvalue, 1e-12, f"block {block} grid")
        share = one.attrs["n_parameters"] / 310  # one eigenvalue weighs 1/310 in each block
        drawn, expected = array(curve["y"]), share * one.density.values
        shown = drawn > floor
        assert shown.sum() > 20 and drawn[[0, -1]].max() < floor  # it leaves the axis
        assert_close(drawn[shown], expected[shown], 1e-9, f"block {block} density")
    assert [t["name"] for t in ranks["data"]][:2] == ["largest", "block 1, largest"]
    assert traces["data"][0]["type"] == "bar"
    assert "epsilon-sharpness: <b>" in page and "adaptive sharpness: <b>" in page


def test_hessian_plane_on_the_command_line_and_the_landscape_facts(tmp_path, capsys):
    out = tmp_path / "run"
    grid = ["--grid", "-1:1:5", "--out", str(out)]
    main(["surface", "--model", MODEL, "--data", DATA, "--plane", "hessian", *grid])
    assert "hessian plane, grid 5 x 5" in capsys.readouterr().out
    ds = cr.open_run(out)["surface"]
    plane = cr.Plane.hessian(
        cli_fixtures.make_tiny64(), F.cross_entropy, cli_fixtures.digits_pair()
    )
    names = plane.attrs["axis_names"]
    assert names[0].startswith("v1 (lambda = ") and names[1].startswith("v2 (lambda = ")
    assert (ds.alpha.attrs["long_name"], ds.beta.attrs["long_name"]) == names
    assert_close(ds.attrs["plane_eigenvalues"], plane.attrs["eigenvalues"], 1e-12, "plane")
    page = (out / "landscape.html").read_text()
    scene = figures(page)[0]["layout"]["scene"]
    assert (scene["xaxis"]["title"]["text"], scene["yaxis"]["title"]["text"]) == names
    lam = plane.attrs["eigenvalues"]
    assert f"plane: <b>hessian, lambda = {lam[0]:.4g} and {lam[1]:.4g}</b>" in page
    assert f"top eigenvalue: <b>{lam[0]:.5g}</b>" in page

    # the Hessian of the same model and data joins the run; its page shows the trace
    hessian("--top", "1", "--trace", "--probes", "4", "--out", str(out))
    assert "holds a surface run" in capsys.readouterr().out
    main(["plot", str(out), "--html", str(tmp_path / "again.html")])
    again = (tmp_path / "again.html").read_text()
    assert "Hessian trace: <b>" in again and f"top eigenvalue: <b>{lam[0]:.5g}</b>" in again
    assert "hessian: hessian.zarr" in describe(out)

    # --eigenvectors picks others
    other = tmp_path / "other"
    main(["surface", "--model", MODEL, "--data", DATA, "--plane", "hessian", "--eigenvectors",
          "2", "0", "--grid", "-1:1:3", "--out", str(other)])  # fmt: skip
    long_names = [cr.open_run(other)["surface"][d].attrs["long_name"] for d in ("alpha", "beta")]
    assert long_names[0].startswith("v3 (lambda = ") and long_names[1] == names[0]


def test_refusals_leave_no_folder(tmp_path, capsys):
    def refused(*args, out=None):
        out = out or tmp_path / "never"
        with pytest.raises(SystemExit) as stop:
            hessian(*args, "--out", str(out))
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert not (out / "hessian.zarr").exists()
        return err

    assert "crumple hessian: error: --top 311: k must be a whole number from 1 to 310" in refused(
        "--top", "311"
    )
    assert "nothing to compute" in refused("--top", "0")
    assert "--probes is for --trace and --sharpness" in refused("--probes", "5")
    assert "argument --by: invalid choice: 'row'" in refused("--by", "row")
    assert "--bottom must be at least 1" in refused("--bottom", "0")
    assert "--by splits --top" in refused("--top", "0", "--sharpness", "--by", "layer")
    assert "--tol is for --top and --bottom" in refused("--top", "0", "--trace", "--tol", "1e-6")
    assert "--tol is a relative accuracy below 1" in refused("--tol", "1")
    assert "--tol must be a positive number" in refused("--tol", "0")
    assert not (tmp_path / "never").exists()

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is a file, not a folder" in refused(out=afile)

    recorded = tmp_path / "recorded"
    cr.Recorder(torch.nn.Linear(1, 1), to=recorded).record()
    assert "holds a recorded path" in refused(out=recorded)

    demo = cr.store.save_run(
        tmp_path / "demo", xr.Dataset({"loss": (("alpha", "beta"), np.ones((2, 2)))})
    )
    assert "holds a run without a fingerprint" in refused(out=demo)

    surface = tmp_path / "surface"
    main(["surface", "--model", MODEL, "--data", DATA, "--grid", "-1:1:3", "--out", str(surface)])
    other = cli_fixtures.make_tiny64()
    with torch.no_grad():
        other[1].bias.add_(1.0)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    err = refused("--weights", str(tmp_path / "other.pt"), out=surface)
    assert "holds a surface run of other weights" in err


def test_tol_reaches_lanczos_and_the_advice_names_it(tmp_path, monkeypatch, capsys):
    import scipy.sparse.linalg

    eigsh, tols = scipy.sparse.linalg.eigsh, []

    def spy(*args, **kwargs):
        tols.append(kwargs["tol"])
        return eigsh(*args, **kwargs)

    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", spy)  # crumple.hessian imports it late
    hessian("--top", "2", "--tol", "1e-6", "--out", str(tmp_path / "loose"))
    ds = cr.store.open_hessian(tmp_path / "loose")
    assert tols == [1e-6] and ds.attrs["eigen_tol"] == 1e-6
    model, data = cli_fixtures.make_tiny64(), cli_fixtures.digits_pair()
    loose = cr.hessian.eigen(model, F.cross_entropy, data, k=2, tol=1e-6)
    assert_close(ds.eigenvalues, loose.eigenvalues, 1e-12, "--tol 1e-6")

    def stalls(*args, **kwargs):
        raise scipy.sparse.linalg.ArpackNoConvergence("no convergence", np.empty(0), None)

    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", stalls)
    with pytest.raises(SystemExit):
        hessian("--top", "2", "--out", str(tmp_path / "stalled"))
    err = capsys.readouterr().err
    assert "crumple hessian: error: --top 2: Lanczos did not find" in err
    assert "a looser --tol" in err and not (tmp_path / "stalled").exists()


@pytest.mark.browser
@pytest.mark.slow
def test_the_page_draws_its_density_in_chromium(run, browser):  # noqa: F811 (the fixture)
    page, errors = opened(browser, run / "hessian.html")
    drawn = page.evaluate(
        "() => Array.from(document.querySelectorAll('#figure-0 .scatterlayer .trace'))"
        ".map((t) => (t.querySelector('path.js-line') || {getAttribute: () => ''})"
        ".getAttribute('d').length)"
    )
    markers = page.locator("#figure-0 .scatterlayer .point").count()
    page.close()
    assert drawn[0] > 1000, drawn  # the density's line: a long SVG path
    assert markers == 5  # the eigenvalues marked on it
    assert errors == []


def test_surface_with_curvature_stores_and_draws_the_map(tmp_path, capsys):
    out = tmp_path / "run"
    main(["surface", "--model", MODEL, "--data", DATA, "--plane", "hessian", "--curvature",
          "--grid", "-1:1:3", "--out", str(out)])  # fmt: skip
    ds = cr.open_run(out)["surface"]
    top = cr.hessian.eigen(
        cli_fixtures.make_tiny64(), F.cross_entropy, cli_fixtures.digits_pair(), k=1
    )
    assert ds.lambda_max.sel(alpha=0, beta=0) == pytest.approx(top.eigenvalues[0], rel=1e-6)
    assert (ds.lambda_max >= ds.lambda_min).all()
    page = (out / "landscape.html").read_text()
    drawn = [t.get("name") for f in figures(page) for t in f["data"]]
    assert "lambda_max" in drawn and "lambda_ratio" in drawn
    assert "not convex: <b>" in page and "lambda_max: <b>" in page
