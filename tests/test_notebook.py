"""docs/walkthrough.ipynb runs in a real Jupyter kernel: the trajectory and the plane print
as one line, the surface shows xarray's rich view, the figures display inline through
plotly's renderer, and the page is written; no cell warns or fails."""

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")  # in the dev extra, so make test has them
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).parents[1] / "docs" / "walkthrough.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook, run cell by cell in a kernel of this Python, in a fresh folder."""
    folder = tmp_path_factory.mktemp("walkthrough")
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JUPYTER_PATH", str(folder))  # this kernel, not one installed elsewhere
        env.setenv("OMP_NUM_THREADS", "1")
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": folder}}
        )
        client.execute()
    return nb, folder


def outputs(nb, cell_containing: str) -> list:
    cells = [c for c in nb.cells if c.cell_type == "code" and cell_containing in c.source]
    assert len(cells) == 1, cell_containing
    return cells[0].outputs


@pytest.mark.slow
def test_the_walkthrough_displays_its_results_inline_and_writes_the_page(executed):
    nb, folder = executed
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", out
            assert "Warning" not in out.get("text", ""), out["text"]
    (trajectory,) = outputs(nb, "cr.Recorder(")
    assert trajectory.data["text/plain"].startswith("Trajectory(73 snapshots, steps 0 .. 360")
    (surface,) = [o for o in outputs(nb, "cr.surface(") if o.output_type == "execute_result"]
    assert "xr-wrap" in surface.data["text/html"]  # xarray's HTML view
    assert "cross_entropy" in surface.data["text/html"]
    for call, kind in (("cr.plot.surface(", "surface"), ("cr.plot.contour(", "contour")):
        (figure,) = outputs(nb, call)
        kinds = {trace["type"] for trace in figure.data[PLOTLY]["data"]}
        assert kind in kinds, kinds
    page = folder / "out" / "walkthrough" / "landscape.html"
    assert page.stat().st_size > 500_000  # plotly.js and the figures, in one file
    assert "grid range" in page.read_text()
