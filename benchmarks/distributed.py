"""Dask against in-process on the CNN surface of benchmarks/general.py (11 x 11 grid, 512
inputs of 3x32x32), measured in one run: throughput with 1 and 2 local worker processes
(one thread each), and the overhead of Dask over in-process evaluation on one thread.
Target: overhead under 10%.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import crumple as cr

HERE = Path(__file__).resolve().parent
# this file's name would hide the `distributed` package: take its folder off the path
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
_spec = importlib.util.spec_from_file_location("general", HERE / "general.py")
general = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(general)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=11, help="grid points per axis")
    args = parser.parse_args()
    from distributed import Client

    from crumple.run.distributed import local_cluster

    torch.manual_seed(0)
    torch.set_num_threads(1)  # as each worker: one thread
    model = general.zoo.cnn().model.eval()
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(512, 3, 32, 32, generator=g), torch.randint(0, 10, (512,), generator=g))
    plane = cr.Plane.random(model, seed=0)
    axis = np.linspace(-1, 1, args.steps)
    grid = cr.Grid(axis, axis)
    options = dict(strategy="loop", chunk_size=args.steps)  # one row a tile in every run

    def run(**more):
        start = time.perf_counter()
        ds = cr.surface(model, F.cross_entropy, data, plane, grid, **options, **more)
        return ds, time.perf_counter() - start

    cr.surface(model, F.cross_entropy, data, plane, cr.Grid(axis[:2], axis[:2]), **options)
    local, t_local = run()
    times = {}
    for workers in (1, 2):
        with local_cluster(workers) as cluster, Client(cluster) as client:
            run(dask=client)  # warm-up: workers import torch and unpack the model once
            ds, times[workers] = run(dask=client)
            assert ds.loss.values.tobytes() == local.loss.values.tobytes()
    points = grid.size
    print(f"torch {torch.__version__}; CNN, {points} grid points, 512 inputs, one thread each")
    print(f"in process:        {t_local:6.2f} s  {points / t_local:5.2f} points/s")
    for workers, t in times.items():
        print(
            f"dask, {workers} worker{'s' if workers > 1 else ' '}:    {t:6.2f} s  "
            f"{points / t:5.2f} points/s"
        )
    print(f"2 workers vs 1: {times[1] / times[2]:.2f}x the throughput")
    print(
        f"overhead of dask over in-process, one worker: {100 * (times[1] / t_local - 1):+.1f}% "
        "(target under 10%); results identical bit for bit"
    )


if __name__ == "__main__":
    main()
