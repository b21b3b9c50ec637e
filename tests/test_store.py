"""Runs that survive: stopped and resumed bit for bit, refused when the inputs differ, clear
errors for damaged stores, and the info and netCDF commands."""

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.cli import main
from crumple.names import TILE_DIGEST
from crumple.run.store import DATA
from tests import cli_fixtures

GRID = cr.Grid(np.linspace(-1, 1, 12), np.linspace(-1, 1, 10))
RUN = """
import numpy as np, torch, crumple as cr
from tests import cli_fixtures
torch.set_num_threads(1)
model = cli_fixtures.make_mlp()
cr.surface(model, cli_fixtures.slow_cross_entropy, cli_fixtures.digits_loader(),
           cr.Plane.random(model, seed=1),
           cr.Grid(np.linspace(-1, 1, 12), np.linspace(-1, 1, 10)),
           store={store!r}, strategy="loop", chunk_size=4)
"""


def surface_into(store, loss=cli_fixtures.slow_cross_entropy, **changes):
    torch.set_num_threads(1)
    model = changes.pop("model", None) or cli_fixtures.make_mlp()
    return cr.surface(
        model,
        loss,
        changes.pop("data", None) or cli_fixtures.digits_loader(),
        changes.pop("plane", None) or cr.Plane.random(model, seed=1),
        changes.pop("grid", GRID),
        store=store,
        strategy="loop",
        chunk_size=changes.pop("chunk_size", 4),
        **changes,
    )


def _done_flags(store: Path):
    import zarr

    return zarr.open_group(str(store / DATA), mode="r", path="surface")[TILE_DIGEST][:] != 0


def files_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run."""
    store = tmp_path_factory.mktemp("reference") / "run"
    ds = surface_into(store)
    assert ds.attrs["tiles_computed"] == 36
    return store, ds


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_stopped_run_resumes_bit_for_bit_without_recomputing(tmp_path, reference, sig):
    store = tmp_path / "run"
    root = Path(__file__).parents[1]
    child = subprocess.Popen(
        [sys.executable, "-c", RUN.format(store=str(store))],
        cwd=root,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        if (store / DATA).exists() and int(_safe_done(store).sum()) >= 5:
            break
        time.sleep(0.05)
    assert child.poll() is None, f"the run ended before it could be stopped: {child.stderr.read()}"
    child.send_signal(sig)
    child.wait(timeout=60)
    if sig == signal.SIGINT:
        assert "KeyboardInterrupt" in child.stderr.read()
    done_before = int(_safe_done(store).sum())
    assert 5 <= done_before < 36
    resumed = surface_into(store)
    assert resumed.attrs["tiles_computed"] == 36 - done_before  # no finished tile again
    _, whole = reference
    for var in ("loss",):
        a, b = resumed[var].values, whole[var].values
        assert a.tobytes() == b.tobytes(), f"{var}: {np.argwhere(a != b)[:5]}"
    again = surface_into(store)  # complete: returns at once
    assert again.attrs["tiles_computed"] == 0
    assert again.loss.values.tobytes() == whole.loss.values.tobytes()


def _safe_done(store: Path):
    try:
        return _done_flags(store)
    except Exception:
        return np.zeros(1, dtype=bool)


@pytest.mark.slow
def test_resumed_run_keeps_the_tiles_it_was_started_with(tmp_path, monkeypatch):
    """Default tiles are sized by time; a resumed run keeps the stored sizes whatever its
    own timing says."""
    import zarr

    monkeypatch.setattr("crumple.run.driver.TILE_SECONDS", 0.0)  # tiles of one call each
    monkeypatch.setattr("crumple.evaluation.engine.WORKING_SET", 2**16)  # of a few points
    store = tmp_path / "run"
    whole = surface_into(store, chunk_size=None)
    tiles = len(list(GRID.tiles(whole.attrs["chunk_size"])))
    assert tiles > 1
    group = zarr.open_group(str(store / DATA), mode="r+", path="surface")
    lost = range(tiles // 2, tiles)
    for k in lost:  # as if stopped half way
        group[TILE_DIGEST][k] = 0
    monkeypatch.setattr("crumple.run.driver.TILE_SECONDS", 1e9)  # would make one tile
    resumed = surface_into(store, chunk_size=None)
    assert resumed.attrs["tiles_computed"] == len(lost)
    assert resumed.attrs["chunk_size"] == whole.attrs["chunk_size"]
    assert resumed.attrs["points_per_call"] == whole.attrs["points_per_call"]
    assert resumed.loss.values.tobytes() == whole.loss.values.tobytes()


@pytest.mark.parametrize("part", ["weights", "plane", "grid", "data", "loss", "dtype"])
def test_a_store_from_other_inputs_is_refused_and_left_intact(reference, part):
    store, _ = reference
    before = files_digest(store)
    model = cli_fixtures.make_mlp()
    changes = {
        "weights": lambda: {"model": _nudged(model)},
        "plane": lambda: {"plane": cr.Plane.random(model, seed=2)},
        "grid": lambda: {"grid": cr.Grid(np.linspace(-1, 1, 12), np.linspace(-1, 1.5, 10))},
        "data": lambda: {"data": _fewer_samples()},
        "loss": lambda: {"loss": F.cross_entropy},
        "dtype": lambda: {"dtype": torch.float64},
    }[part]()
    loss = changes.pop("loss", cli_fixtures.slow_cross_entropy)
    with pytest.raises(cr.CrumpleError, match=f"made with other {part}") as refused:
        surface_into(store, loss=loss, **changes)
    assert "choose another folder or delete this one" in str(refused.value)
    assert files_digest(store) == before


def _nudged(model):
    with torch.no_grad():
        model.net[1].bias[0] += 1e-3
    return model


def _fewer_samples():
    x, y = next(iter(cli_fixtures.digits_loader()))
    return (x, y)


def test_data_id_names_the_data_instead_of_hashing_it(tmp_path):
    grid = cr.Grid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 2))
    first = surface_into(tmp_path / "run", grid=grid, data_id="digits-200", loss=F.cross_entropy)
    # other data under the same name is trusted to be the same: the store is reused
    again = surface_into(
        tmp_path / "run",
        grid=grid,
        data_id="digits-200",
        loss=F.cross_entropy,
        data=_fewer_samples(),
    )
    assert again.attrs["tiles_computed"] == 0
    assert np.array_equal(first.loss.values, again.loss.values)


def test_damaged_stores_give_a_clear_error(tmp_path):
    grid = cr.Grid(np.linspace(-1, 1, 4), np.linspace(-1, 1, 4))
    store = tmp_path / "run"
    surface_into(store, grid=grid, loss=F.cross_entropy)
    chunk = next(
        p
        for p in (store / DATA / "surface" / "loss").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])
    opened = cr.open(store)["surface"]  # the tile is damaged, not the run: shown as nan
    assert opened.attrs["tiles_damaged"] == 1 and np.isnan(opened.loss.values).sum() == 4
    meta = store / DATA / "surface" / "zarr.json"
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(cr.CrumpleError, match="damaged"):
        surface_into(store, grid=grid, loss=F.cross_entropy)


def test_info_and_netcdf(tmp_path, capsys, reference):
    store, ds = reference
    main(["info", str(store), "--netcdf", str(tmp_path / "run.nc")])
    text = capsys.readouterr().out
    assert "surface: loss over alpha 12 x beta 10, complete" in text
    assert "plane: random, filter-normalized" in text and "wrote" in text
    import xarray as xr

    shared = xr.open_dataset(tmp_path / "run.nc")
    assert np.array_equal(shared.loss.values, ds.loss.values)
    partial = tmp_path / "partial"
    import shutil

    shutil.copytree(store, partial)
    import zarr

    group = zarr.open_group(str(partial / DATA), mode="r+", path="surface")
    group[TILE_DIGEST][3] = 0
    main(["info", str(partial)])
    assert "(35 of 36 tiles done; run the same command again to resume)" in capsys.readouterr().out


def test_demo_output_never_replaces_a_resumable_run(tmp_path, capsys):
    grid = cr.Grid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 2))
    store = tmp_path / "run"
    surface_into(store, grid=grid, loss=F.cross_entropy)
    before = files_digest(store)
    with pytest.raises(SystemExit):
        main(["demo", "--step", "1", "--epochs", "1", "--out", str(store)])
    assert "holds a resumable surface run" in capsys.readouterr().err
    assert files_digest(store) == before
    # a demo folder is replaced whole by the next demo, and is not resumable
    demo = tmp_path / "demo"
    main(["demo", "--step", "1", "--epochs", "1", "--compare", "sgd,adam", "--out", str(demo)])
    main(["demo", "--step", "1", "--epochs", "1", "--out", str(demo)])
    assert sorted(cr.open(demo)) == ["SGD", "surface"]  # no stale Adam path
    with pytest.raises(cr.CrumpleError, match="cannot be resumed"):
        surface_into(demo, grid=grid, loss=F.cross_entropy)


def test_a_run_stored_with_the_older_ordered_data_digest_resumes(tmp_path):
    """Runs stored before data digests ignored the order of the samples still resume."""
    import json

    import zarr

    from crumple.batches import load
    from crumple.run.driver import ordered_digest

    store = tmp_path / "run"
    whole = surface_into(store, chunk_size=4)
    group = zarr.open_group(str(store / DATA), mode="r+", path="surface")
    fp = json.loads(group.attrs["fingerprint"])
    assert fp["data"].startswith("samples:")
    fp["data"] = ordered_digest(load(cli_fixtures.digits_loader()))
    group.attrs["fingerprint"] = json.dumps(fp)
    group[TILE_DIGEST][2] = 0
    resumed = surface_into(store, chunk_size=4)
    assert resumed.attrs["tiles_computed"] == 1
    assert resumed.loss.values.tobytes() == whole.loss.values.tobytes()


def test_a_run_folder_saves_its_plane_once(tmp_path, monkeypatch):
    """report.save_surface into the run's own store: the driver saves the plane when the
    run finishes, and save_run does not write it again."""
    from crumple import report
    from crumple.landscape import Landscape

    saved = []
    real_save = cr.Plane.save
    monkeypatch.setattr(
        cr.Plane, "save", lambda self, path: saved.append(path) or real_save(self, path)
    )
    net = torch.nn.Linear(2, 1).double()
    x = torch.randn(8, 2, dtype=torch.float64)
    land = Landscape(
        net, torch.nn.functional.mse_loss, (x, x[:, :1]), store=tmp_path, progress=False
    )
    report.save_surface(tmp_path, land, cr.Plane.random(net, seed=0), cr.Grid([0.0, 1.0], [0.0]))
    assert [p.name for p in saved] == ["plane.safetensors"]
    assert cr.Plane.load(tmp_path / "plane.safetensors").ndim == 2
