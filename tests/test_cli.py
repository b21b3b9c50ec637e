"""The crumple command: refusals before any work, and the demo end to end."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from crumple.cli import main
from crumple.run.store import open_run

HEAVY = ("torch", "numpy", "xarray", "zarr", "plotly", "pandas", "scipy", "matplotlib")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--step", "0"], "--step must be a positive number"),
        (["--step", "-0.1"], "--step must be a positive number"),
        (["--step", "abc"], "--step must be a number"),
        (["--min", "1", "--max", "1"], "grid range is empty"),
        (["--min", "2", "--max", "-2"], "grid range is empty"),
        (["--lr", "0"], "--lr must be a positive number"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--optimizer", "rmsprop"], "choose from 'sgd', 'momentum', 'adam'"),
        (["--epochs", "-1"], "--epochs must be at least 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--step", "0.0001"], "at most 2000 per axis"),
    ],
)
def test_demo_refuses_bad_values_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--out", str(out), *args])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def run_demo(*args):
    return subprocess.run(
        [sys.executable, "-m", "crumple", "demo", *args],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_small_demo_writes_page_and_data(tmp_path):
    out = tmp_path / "small"
    done = run_demo(
        "--step", "0.25", "--epochs", "3", "--optimizer", "adam", "--lr", "0.05", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {out / 'landscape.html'}" in done.stdout
    html = (out / "landscape.html").read_text()
    assert html.count('id="figure-') == 4  # 3-D, contour, loss curves, data fit
    run = open_run(out)
    surface, path = run["surface"], run["Adam"]
    # not the article's training: its grid, widened by whole steps to hold Adam's path
    assert "widened to hold the paths" in done.stdout
    assert surface.loss.shape[1] == 16 and surface.loss.shape[0] > 16
    assert np.allclose(surface.alpha.values[-16:], np.arange(-2, 2, 0.25))
    assert path.alpha.min() >= surface.alpha.min()
    assert path.sizes["step"] == 4
    assert np.all(np.isfinite(surface.loss.values))


@pytest.mark.slow
def test_default_demo_is_the_article(tmp_path):
    out = tmp_path / "demo"
    done = run_demo("--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "80 x 80 grid, 25 epochs of sgd, lr 0.01" in done.stdout
    run = open_run(out)
    surface, path = run["surface"], run["SGD"]
    assert surface.loss.shape == (80, 80)
    assert path.sizes["step"] == 26
    assert path.alpha.values[0] == -1 and path.beta.values[0] == -1
    # the path starts at the surface's value at the grid node (-1, -1)
    assert float(path.loss[0]) == pytest.approx(
        float(surface.loss.sel(alpha=-1, beta=-1, method="nearest")), rel=1e-5
    )


def test_python_dash_m_and_version():
    done = subprocess.run(
        [sys.executable, "-m", "crumple", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("crumple ")


def test_plot_draws_a_run_again(tmp_path, capsys):
    out = tmp_path / "run"
    main(["demo", "--step", "0.5", "--epochs", "2", "--compare", "sgd,adam", "--out", str(out)])
    capsys.readouterr()
    main(
        [
            "plot",
            str(out),
            "--html",
            str(tmp_path / "again.html"),
            "--png",
            str(tmp_path / "again.png"),
            "--log",
        ]
    )
    text = capsys.readouterr().out
    assert "again.html" in text and "again.png" in text
    html = (tmp_path / "again.html").read_text()
    assert html.count('id="figure-') == 3 and "SGD" in html and "Adam" in html
    assert (tmp_path / "again.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        main(["plot", str(out)])
    assert "--html PAGE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plot", str(tmp_path / "nothing"), "--html", str(tmp_path / "x.html")])
    assert "holds no crumple run" in capsys.readouterr().err


def heavy_modules_after(code: str) -> list[str]:
    """The heavy modules a fresh Python process has imported after running ``code``."""
    report = f"import sys\nprint('heavy:', *(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"], capture_output=True, text=True, check=True
    )
    return done.stdout.rpartition("heavy:")[2].split()


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["surface", "--help"],
        ["hessian", "--help"],
        ["hessian", "--model", "m:f", "--data", "d:l", "--top", "-1"],
        ["demo", "--help"],
        ["surface", "--grid", "nonsense"],
        ["demo", "--step", "0"],
        ["nosuchcommand"],
    ],
)
def test_help_and_argument_errors_import_nothing_heavy(argv):
    """`crumple --help` and a refused option stay quick: torch, numpy, xarray and plotly are
    imported by the subcommands, after parsing (benchmarks/cli_startup.py times it)."""
    code = f"from crumple.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert heavy_modules_after(code) == []


@pytest.mark.slow
def test_import_crumple_is_lazy_and_surface_is_the_function():
    assert heavy_modules_after("import crumple") == []
    code = (
        "import sys, types\n"
        "import crumple.surface\n"  # the submodule first: the package keeps the function
        "import crumple as cr\n"
        "from crumple import surface\n"
        "assert isinstance(sys.modules['crumple.surface'], types.ModuleType)\n"
        "assert cr.surface is surface is sys.modules['crumple.surface'].surface\n"
        "assert cr.line is sys.modules['crumple.surface'].line\n"
        "assert set(cr.__all__) <= set(dir(cr))\n"
        "assert cr.open is cr.open_run and cr.plot.surface and cr.store.open_run\n"
    )
    assert "torch" in heavy_modules_after(code)


def test_the_command_names_match_the_registries():
    """The command lists strategies, losses and optimizers from crumple.names without
    importing their modules; the registries must hold exactly those."""
    from crumple import names
    from crumple.evaluation import STRATEGIES
    from crumple.examples.seed import make_optimizer
    from crumple.specs import LOSSES

    assert tuple(STRATEGIES) == names.STRATEGIES
    assert list(LOSSES) == list(names.LOSSES) and all(map(callable, LOSSES.values()))
    params = [torch.nn.Parameter(torch.zeros(1))]
    assert all(make_optimizer(name, params, 0.1) for name in names.OPTIMIZERS)
