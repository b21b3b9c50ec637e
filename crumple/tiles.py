"""A tile run: fingerprint -> resume or create -> size -> tiles here or on Dask -> write ->
finish. This module owns every store call and computes the tiles once.

A tile (the unit that is stored, resumed, sent to a Dask worker and counted by the progress
bar) takes about ``TILE_SECONDS``, timed on a first call whose values are kept as the first
block of tile 0.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm

from crumple.errors import CrumpleError
from crumple.evaluation import Choice, Points, Settings, build
from crumple.grid import Grid
from crumple.plane import Plane
from crumple.store import PLANE, RunStore, damaged, open_run

TILE_SECONDS = 0.25


@dataclass
class Outcome:
    """What a tile run computed (``values``, nan where a stored tile holds the value), the
    settings it ran with, and the store it wrote to (or the finished stored run)."""

    values: dict[str, np.ndarray]
    settings: Settings
    n_samples: int
    tiles_computed: int
    choice: Choice | None = None
    run: RunStore | None = None
    finished: xr.Dataset | None = None


def run(
    model,
    fns: Mapping[str, Callable],
    given: list,
    plane: Plane,
    grid: Grid,
    settings: Settings,
    *,
    store: str | Path | None = None,
    data_id: str | None = None,
    dask: Any = None,
    progress: bool = False,
    coord_attrs: Mapping[str, dict] | None = None,
) -> Outcome:
    """Evaluate ``grid`` on ``plane`` tile by tile (the model already in evaluation mode;
    ``given`` the user's batches, which the fingerprint hashes)."""
    stored = fp = None
    if store is not None:
        dtype = settings.dtype or str(next(iter(plane.origin.values())).dtype)
        fp = fingerprint(model, plane, grid, given, fns, dtype, data_id)
        stored = _resume(store, fp)
        if stored is not None and all(stored.done()):
            out = open_run(store)["surface"]
            out.attrs["tiles_computed"] = 0
            return Outcome({}, settings, int(out.attrs.get("n_samples", 0)), 0, finished=out)
        if stored is not None:
            plan = Settings.from_json(stored.attrs["plan"])
            settings = plan.replace(device=settings.device or plan.device)
    evaluator = build(model, fns, given, plane, settings)
    task = evaluator.task
    axes = [torch.as_tensor(a, dtype=task.dtype, device=task.device) for a in grid.axes]

    def points(tile: tuple[slice, ...]) -> Points:
        return Points.grid(task.plane, [axis[s] for axis, s in zip(axes, tile)])

    tile_size, measured = evaluator.settings.tile_size, None
    if tile_size is None:  # tiles of about TILE_SECONDS, as timed on a first call
        block = next(grid.tiles(evaluator.settings.points_per_call))
        timer = time.perf_counter()
        measured = evaluator(points(block))
        seconds = (time.perf_counter() - timer) / math.prod(s.stop - s.start for s in block)
        timed = evaluator.choice.seconds_per_point if evaluator.choice else None
        per_point = max(timed or seconds, 1e-9)
        tile_size = max(evaluator.settings.points_per_call, math.ceil(TILE_SECONDS / per_point))
    evaluator.settings = evaluator.settings.replace(tile_size=tile_size)
    tiles = list(grid.tiles(tile_size))
    if store is not None and stored is None:
        attrs = {"fingerprint": json.dumps(fp), "plan": evaluator.settings.to_json()}
        stored = RunStore.create(store, grid, list(fns), tiles, attrs, coord_attrs)
    done = stored.done() if stored is not None else [False] * len(tiles)
    todo = [k for k, finished in enumerate(done) if not finished]

    def local(ks: Iterable[int]):
        for k in ks:
            known = measured if k == 0 else None  # the timed call was tile 0's first block
            yield k, evaluator(points(tiles[k]), first_block=known)

    # the first tile runs here: it fixes the strategy and gives the time estimate
    sources = [local(todo[:1])]
    if dask is not None and len(todo) > 1:
        from crumple.distributed import evaluate_tiles

        def payload():
            settings = evaluator.settings.to_json()
            return (model, dict(fns), task.batches, task.plane, settings)

        sources.append(evaluate_tiles(dask, payload, [(k, tiles[k]) for k in todo[1:]], axes))
    else:
        sources.append(local(todo[1:]))
    results = itertools.chain(*sources)
    values = _collect(results, tiles, todo, grid, list(fns), stored, evaluator, progress, dask)
    return Outcome(values, evaluator.settings, task.n_samples, len(todo), evaluator.choice, stored)


def _collect(
    results, tiles, todo, grid, names, stored, evaluator, progress, dask
) -> dict[str, np.ndarray]:
    """Write each tile's values as it arrives (to the store, if any, whose plan is updated
    after the first tile: the strategy may have been chosen there), with a progress bar."""
    out = {name: np.full(grid.shape, np.nan) for name in names}
    bar = tqdm(total=len(tiles), initial=len(tiles) - len(todo), disable=not progress, unit="tile")
    first = time.perf_counter()
    for n, (k, values) in enumerate(results):
        values = {name: np.asarray(torch.as_tensor(v).double().cpu()) for name, v in values.items()}
        for name, v in values.items():
            out[name][tiles[k]] = v
        if stored is not None:
            if n == 0:
                stored.set_attrs(plan=evaluator.settings.to_json())
            stored.write(k, tiles[k], values)
        if n == 0 and progress and len(todo) > 1:
            estimate = (time.perf_counter() - first) * len(todo)
            where = " on this process" if dask is not None else ""
            bar.write(
                f"crumple: {len(todo)} tiles to compute, about {estimate:.3g} s in all{where}"
            )
        bar.update()
    bar.close()
    return out


def finish(outcome: Outcome, ds: xr.Dataset, plane: Plane) -> xr.Dataset:
    """The run's Dataset: ``ds`` itself, or, with a store, the stored run with ``ds``'s
    attributes (and the plane saved beside it)."""
    if outcome.run is None:
        return ds
    folder = outcome.run.folder
    plane.save(folder / PLANE)
    attrs = ds.attrs | {"store": str(folder)}
    out = outcome.run.finish(attrs, {n: dict(ds[n].attrs) for n in ds.data_vars})
    out.attrs["tiles_computed"] = outcome.tiles_computed
    return out


def _resume(folder, fp: Mapping[str, str]) -> RunStore | None:
    """The run in ``folder`` if there is one, after checking that it was made from the
    same inputs; ``None`` if the folder holds no run."""
    stored = RunStore.open(folder)
    if stored is None:
        return None
    attrs = stored.attrs
    if "fingerprint" not in attrs:
        raise CrumpleError(
            f"{str(folder)!r} holds a finished run that cannot be resumed (it has no "
            "fingerprint: crumple demo writes such runs); choose another folder or delete it"
        )
    try:
        previous = json.loads(attrs["fingerprint"])
        json.loads(attrs["plan"])
    except (KeyError, ValueError) as e:
        raise damaged(folder, e) from e
    differs = [k for k in fp if previous.get(k) != fp[k]]
    if differs:
        raise CrumpleError(
            f"{str(folder)!r} holds a run made with other {', '.join(differs)}; it is left "
            "as it is. To resume it, give the same model weights, plane, grid, data, loss "
            "and dtype; to start a fresh run, choose another folder or delete this one"
        )
    return stored


def fingerprint(
    model,
    plane: Plane,
    grid: Grid,
    batches,
    fns: Mapping[str, Callable],
    dtype,
    data_id: str | None = None,
) -> dict[str, str]:
    """What determines a surface's numbers, each part hashed on its own so that a mismatch
    can say which part differs.

    Example:
        >>> import crumple as cr
        >>> net = torch.nn.Linear(1, 1)
        >>> fp = fingerprint(net, cr.Plane.axes(net, "weight"), cr.Grid([0.0, 1.0]),
        ...                  [(torch.ones(2, 1), torch.ones(2, 1))],
        ...                  {"loss": torch.nn.functional.mse_loss}, torch.float32)
        >>> sorted(fp)
        ['data', 'dtype', 'grid', 'loss', 'plane', 'weights']
    """
    weights = [*model.named_parameters(), *model.named_buffers()]
    plane_tensors = [(f"origin.{n}", t) for n, t in plane.origin.items()]
    for k, d in enumerate(plane.directions):
        plane_tensors += [(f"d{k}.{n}", t) for n, t in d.items()]
    data = (
        data_id
        if data_id is not None
        else _digest(
            (f"{k}.{part}", t) for k, batch in enumerate(batches) for part, t in zip("xy", batch)
        )
    )
    return {
        "weights": _digest(weights),
        "plane": _digest(plane_tensors),
        "grid": _digest((f"axis{k}", torch.from_numpy(a)) for k, a in enumerate(grid.axes)),
        "data": str(data),
        "loss": ", ".join(f"{name}={_qualified(fn)}" for name, fn in fns.items()),
        "dtype": str(dtype).removeprefix("torch."),
    }


def _digest(tensors: Iterable[tuple[str, Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _qualified(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
