"""Tiles on a Dask cluster of two worker processes: the same numbers, bit for bit, as in
process; the payload shipped once per worker; a worker killed mid-run costs nothing."""

import importlib
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.names import TILE_DIGEST
from crumple.run.store import DATA
from tests import cli_fixtures

distributed = pytest.importorskip("distributed")

GRID = cr.Grid(np.linspace(-1, 1, 12), np.linspace(-1, 1, 10))


@pytest.fixture(scope="module")
def client():
    from crumple.run.distributed import WORKER_PRELOAD

    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        preload=list(WORKER_PRELOAD),
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def surface(loss=F.cross_entropy, **options):
    torch.set_num_threads(1)
    model = cli_fixtures.make_mlp()
    return cr.surface(
        model,
        loss,
        cli_fixtures.digits_loader(),
        cr.Plane.random(model, seed=1),
        GRID,
        strategy="vmap",
        chunk_size=4,
        **options,
    )


@pytest.fixture(scope="module")
def in_process():
    return surface()


DISTRIBUTED = "crumple.run.distributed"


@pytest.mark.slow
def test_cluster_gives_the_in_process_numbers_and_ships_once_per_worker(client, in_process):
    client.run(
        lambda: importlib.import_module("crumple.run.distributed").UNPACKED.__setitem__(0, 0)
    )
    on_cluster = surface(dask=client)
    assert on_cluster.loss.values.tobytes() == in_process.loss.values.tobytes()
    unpacked = client.run(lambda: importlib.import_module(DISTRIBUTED).UNPACKED[0])
    assert sorted(unpacked.values()) == [1, 1], unpacked  # 35 tiles, one payload per worker


@pytest.mark.slow
def test_a_worker_killed_mid_run_costs_nothing(client, in_process, tmp_path):
    store = tmp_path / "run"
    pids = client.run(os.getpid)
    victim = next(iter(pids.values()))
    at_kill = []

    def kill_when_started():
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                import zarr

                group = zarr.open_group(str(store / DATA), mode="r", path="surface")
                done = group[TILE_DIGEST][:] != 0
                if done.sum() >= 4:
                    at_kill.append(int(done.sum()))
                    break
            except Exception:
                pass
            time.sleep(0.02)
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    result = surface(loss=cli_fixtures.slower_cross_entropy, dask=client, store=store)
    killer.join()
    assert at_kill and at_kill[0] < 30, at_kill  # killed while tiles were still running
    assert victim not in client.run(os.getpid).values()  # the worker really died
    reference = surface(loss=cli_fixtures.slower_cross_entropy)
    assert result.loss.values.tobytes() == reference.loss.values.tobytes()
    assert not np.isnan(result.loss.values).any()
    client.wait_for_workers(2, timeout=60)


@pytest.mark.slow
def test_start_in_process_finish_on_the_cluster(client, in_process, tmp_path):
    store = tmp_path / "run"
    surface(store=store)
    import zarr

    group = zarr.open_group(str(store / DATA), mode="r+", path="surface")
    tiles = list(GRID.tiles(4))
    for k in range(10, 30):  # as if the in-process run had stopped there
        group[TILE_DIGEST][k] = 0
        group["loss"][tiles[k]] = np.nan
    resumed = surface(store=store, dask=client)
    assert resumed.attrs["tiles_computed"] == 20
    assert resumed.loss.values.tobytes() == in_process.loss.values.tobytes()
    shutil.rmtree(store)


def test_bad_dask_arguments_are_refused():
    with pytest.raises(cr.CrumpleError, match="local:N with N >= 1"):
        surface(dask="local:0")
    with pytest.raises(TypeError, match="distributed.Client, a scheduler address"):
        surface(dask=3)


@pytest.mark.slow
def test_command_line_dask_local(tmp_path, capsys):
    from crumple.cli import main

    out = tmp_path / "run"
    main(
        [
            "surface",
            "--model",
            "tests.cli_fixtures:make_mlp",
            "--data",
            "tests.cli_fixtures:digits_loader",
            "--grid",
            "-1:1:6",
            "--strategy",
            "vmap",
            "--chunk-size",
            "6",
            "--dask",
            "local:2",
            "--out",
            str(out),
        ]
    )
    assert "wrote" in capsys.readouterr().out
    ds = cr.open(out)["surface"]
    assert ds.attrs["tiles_done"] == "6 of 6"
    assert ds.loss.shape == (6, 6) and not np.isnan(ds.loss.values).any()


@pytest.mark.slow
def test_a_curvature_map_on_the_cluster_equals_the_one_in_process(client):
    model = cli_fixtures.make_mlp()
    plane = cr.Plane.random(model, seed=1)
    grid = cr.Grid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 2))
    args = (model, F.cross_entropy, cli_fixtures.digits_loader(), plane, grid)
    here = cr.surface(*args, curvature=True, chunk_size=2)
    there = cr.surface(*args, curvature=True, chunk_size=2, dask=client)
    for name in ("loss", "lambda_max", "lambda_min", "lambda_ratio"):
        np.testing.assert_allclose(there[name].values, here[name].values, rtol=1e-5)
    assert np.isfinite(there.lambda_max.values).all()
