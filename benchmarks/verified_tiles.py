"""What checking each tile against its digest costs, on a 200 x 200 surface of two
variables stored in tiles of 100 points (400 tiles) and of 10 points (4000 tiles).

Printed per tile size, in seconds (the median of the rounds): writing every tile through
``RunStore.write`` (values, then the digest) and the digests alone; reading the run with
``open_run`` (every finished tile verified) beside reading the same store plainly with
``xarray.open_zarr(...).load()`` (what ``open_run`` did before: no check); the check a
resumed run makes (``RunStore.tiles()``: every array read) beside reading the per-tile array
alone (what a resume read before: the done flags); and ``open_run`` once a chunk is damaged
(the whole read fails, so each tile is read alone to find it).
No model is evaluated: the values are random.

    python benchmarks/verified_tiles.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from crumple.grid import Grid
from crumple.names import DATA, TILE_DIGEST
from crumple.run.store import RunStore, open_run
from crumple.run.tiles import digest

NAMES = ["loss", "accuracy"]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def one_round(points: int) -> dict[str, float]:
    grid = Grid(np.linspace(-1, 1, 200), np.linspace(-1, 1, 200))
    tiles = list(grid.tiles(points))
    rng = np.random.default_rng(0)
    values = {name: rng.random(grid.shape) for name in NAMES}
    per_tile = [{n: values[n][t] for n in NAMES} for t in tiles]
    folder = Path(tempfile.mkdtemp()) / "run"
    run = RunStore.create(folder, grid, NAMES, tiles, {"plan": "{}"})

    def write() -> None:
        for k, tile in enumerate(tiles):
            run.write(k, tile, per_tile[k])

    out = {"write every tile": timed(write)}
    out["digests alone"] = timed(lambda: [digest(k, v) for k, v in enumerate(per_tile)])
    plain = lambda: xr.open_zarr(folder / DATA, group="surface", consolidated=False).load()  # noqa: E731
    out["plain xarray read"] = timed(plain)
    flags = zarr.open_group(str(folder / DATA), mode="r", path="surface")[TILE_DIGEST]
    out["resume: digests alone read"] = timed(lambda: flags[...])
    out["resume: RunStore.tiles()"] = timed(lambda: RunStore.open(folder).tiles())
    out["open_run (verified)"] = timed(lambda: open_run(folder))
    chunk = next(p for p in (folder / DATA / "surface" / "loss" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:-3])
    out["open_run, one chunk damaged"] = timed(lambda: open_run(folder))
    assert open_run(folder)["surface"].attrs["tiles_damaged"] == 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for points in (100, 10):
        rounds = [one_round(points) for _ in range(args.rounds)]
        median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        print(f"200 x 200 grid, 2 variables, {40000 // points} tiles of {points} points:")
        for key, seconds in median.items():
            print(f"  {key:30s} {seconds:8.3f} s")
        ratio = median["open_run (verified)"] / median["plain xarray read"]
        print(f"  open_run / plain read: {ratio:.2f}")


if __name__ == "__main__":
    main()
