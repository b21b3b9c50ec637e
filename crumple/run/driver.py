"""A tile run: fingerprint -> resume or create -> size -> tiles here or on Dask -> write ->
finish. This module owns every store call and computes the tiles once.

A tile (the unit that is stored, resumed, sent to a Dask worker and counted by the progress
bar) takes about ``TILE_SECONDS``, timed on a first call whose values are kept as the first
block of tile 0.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from crumple.batches import Data, inputs_only
from crumple.errors import CrumpleError
from crumple.evaluation import Choice, Extra, Points, Settings, build
from crumple.grid import Grid
from crumple.names import DATA
from crumple.plane import Plane
from crumple.progress import tqdm
from crumple.run.fingerprint import fingerprint, ordered_digest, unmatched
from crumple.run.lock import make_folder
from crumple.run.schema import plane_attrs
from crumple.run.store import PLANE, RunStore, damaged, open_run

TILE_SECONDS = 0.25
PROGRESS_AFTER = 2.0  # seconds: shorter runs show no progress bar and no estimate


@dataclass
class Outcome:
    """What a tile run computed (``values``, nan where a stored tile holds the value), the
    settings it ran with, and the store it wrote to (or the finished stored run)."""

    values: dict[str, np.ndarray]
    settings: Settings
    facts: dict
    tiles_computed: int
    choice: Choice | None = None
    run: RunStore | None = None
    finished: xr.Dataset | None = None
    halvings: int = 0  # points per call halved after running out of memory (here)


@dataclass(frozen=True)
class RunOptions:
    """Where and how a grid run goes, beside how it evaluates (:class:`Settings`).

    Attributes:
        store: a run folder: tiles are written as they finish, and the same call resumes.
        data_id: a name for the data to fingerprint instead of hashing its contents.
        dask: a ``distributed.Client``, a scheduler address or ``"local:N"``.
        progress: a progress bar over tiles, and the estimated time after the first.
        recalibrate: data whose inputs recompute the BatchNorm statistics at each point.
        extras: per-point quantities computed beside the loss (:mod:`crumple.evaluation.extras`).
        along: a curve's kind (:mod:`crumple.curve`): the grid's one axis is ``t`` along
            that curve on the plane, not a coordinate of the plane.
    """

    store: str | Path | None = None
    data_id: str | None = None
    dask: Any = None
    progress: bool = False
    recalibrate: Any = None
    extras: tuple[Extra, ...] = ()
    along: str | None = None


def evaluate_grid(
    model,
    fns: Mapping[str, Callable],
    given: Data,
    plane: Plane,
    grid: Grid,
    settings: Settings,
    options: RunOptions = RunOptions(),
    coord_attrs: Mapping[str, dict] | None = None,
) -> Outcome:
    """Evaluate ``grid`` on ``plane`` tile by tile (the model already in evaluation mode;
    ``given`` the user's data, which the fingerprint hashes). A run folder and a Dask
    address are checked before any work."""
    store = options.store
    if store is not None:
        make_folder(store)
    cluster = None
    if options.dask is not None:
        from crumple.run.distributed import connect

        cluster = connect(options.dask)
    try:
        stored = fp = None
        if store is not None:
            dtype = settings.dtype or str(next(iter(plane.origin.values())).dtype)
            fp = fingerprint(model, plane, grid, given, fns, dtype, options.data_id)
            if options.recalibrate is not None:  # its batching matters: batch by batch
                fp["recalibrate"] = ordered_digest(inputs_only(options.recalibrate))
            for extra in options.extras:
                fp[extra.key] = json.dumps(extra.options())
            if options.along is not None:
                fp["along"] = options.along
            stored = _resume(store, fp, lambda: ordered_digest(given))
            if stored is not None and all(stored.done()):
                out = open_run(store)["surface"]
                out.attrs.update(tiles_computed=0, store=str(Path(store).resolve()))
                return Outcome({}, settings, {}, 0, finished=out)
            if stored is not None:
                plan = Settings.from_json(stored.attrs["plan"])
                settings = plan.replace(device=settings.device or plan.device)
        evaluator = build(
            model,
            fns,
            given,
            plane,
            settings,
            recalibrate=options.recalibrate,
            extras=options.extras,
        )
        new = (store, fp, coord_attrs) if stored is None and store is not None else None
        return _run_tiles(evaluator, grid, stored, new, cluster, options)
    finally:
        if cluster is not None:
            from crumple.run.distributed import close

            close(*cluster)


def _run_tiles(evaluator, grid: Grid, stored, new, cluster, options: RunOptions) -> Outcome:
    """Size the tiles (timing a first call, kept), create the store (``new``: folder,
    fingerprint, coordinate attributes) if there is none yet, run the first tile here and
    the rest here or on the cluster, writing each as it arrives."""
    task = evaluator.task
    axes = [torch.as_tensor(a, dtype=task.dtype, device=task.device) for a in grid.axes]

    def points(tile: tuple[slice, ...]) -> Points:
        if options.along is not None:
            return Points.curve(task.plane, options.along, axes[0][tile[0]])
        return Points.grid(task.plane, [axis[s] for axis, s in zip(axes, tile)])

    tile_size, measured = evaluator.settings.tile_size, None
    if tile_size is None:  # tiles of about TILE_SECONDS, as timed on a first call
        block = next(grid.tiles(evaluator.settings.points_per_call))
        timer = time.perf_counter()
        measured = evaluator(points(block))
        choice = evaluator.choice
        seconds = time.perf_counter() - timer - (choice.overhead if choice else 0.0)
        timed = choice.seconds_per_point if choice else None
        per_point = max(timed or seconds / math.prod(s.stop - s.start for s in block), 1e-9)
        tile_size = max(evaluator.settings.points_per_call, math.ceil(TILE_SECONDS / per_point))
    evaluator.settings = evaluator.settings.replace(tile_size=tile_size)
    tiles = list(grid.tiles(tile_size))
    if new is not None:
        folder, fp, coord_attrs = new
        attrs = {"fingerprint": json.dumps(fp), "plan": evaluator.settings.to_json()}
        attrs |= plane_attrs(task.plane, grid)  # info names the plane of an unfinished run
        names = evaluator.names
        stored = RunStore.create(folder, grid, names, tiles, attrs, coord_attrs)
    done = stored.done() if stored is not None else [False] * len(tiles)
    todo = [k for k, finished in enumerate(done) if not finished]

    def local(ks: Iterable[int]):
        for k in ks:
            known = measured if k == 0 else None  # the timed call was tile 0's first block
            yield k, evaluator(points(tiles[k]), first_block=known)

    # the first tile runs here: it fixes the strategy and gives the time estimate
    sources = [local(todo[:1])]
    if cluster is not None and len(todo) > 1:
        from crumple.run.distributed import Payload, evaluate_tiles

        def payload() -> Payload:
            settings = evaluator.settings.to_json()
            recalibrate, extras = options.recalibrate, options.extras
            return Payload(
                task.model,
                task.fns,
                task.data,
                task.plane,
                settings,
                recalibrate,
                extras,
                options.along,
            )

        rest = [(k, tiles[k]) for k in todo[1:]]
        sources.append(evaluate_tiles(cluster[0], payload, rest, axes))
    else:
        sources.append(local(todo[1:]))
    results = itertools.chain(*sources)
    precomputed = math.prod(s.stop - s.start for s in block) if measured is not None else 0
    values = _collect(results, tiles, todo, grid, stored, evaluator, options.progress, precomputed)
    facts, n = evaluator.facts(), len(todo)
    return Outcome(
        values, evaluator.settings, facts, n, evaluator.choice, stored, None, evaluator.halvings
    )


def _collect(
    results, tiles, todo, grid, stored, evaluator, progress, precomputed
) -> dict[str, np.ndarray]:
    """Write each tile's values as it arrives (to the store, if any, whose plan is updated
    after the first tile: the strategy may have been chosen there), with a progress bar and,
    after the first tile, the estimated time (``precomputed``: points of tile 0 computed
    before, when the tiles were sized)."""
    out = {name: np.full(grid.shape, np.nan) for name in evaluator.names}
    bar = tqdm(
        total=len(tiles),
        initial=len(tiles) - len(todo),
        disable=not progress,
        unit="tile",
        delay=PROGRESS_AFTER,
    )
    first = time.perf_counter()
    with bar:  # closed on an error too, so that no half-drawn bar precedes its message
        for n, (k, values) in enumerate(results):
            values = {
                name: np.asarray(torch.as_tensor(v).double().cpu()) for name, v in values.items()
            }
            for name, v in values.items():
                out[name][tiles[k]] = v
            if stored is not None:
                if n == 0:
                    stored.set_attrs(plan=evaluator.settings.to_json())
                stored.write(k, tiles[k], values)
            if n == 0 and progress and len(todo) > 1:
                done_before = precomputed if k == 0 else 0
                _estimate(bar, [tiles[j] for j in todo], done_before, time.perf_counter() - first)
            bar.update()
    return out


def _estimate(bar, tiles: list, done_before: int, first_seconds: float) -> None:
    """Say how long the tiles will take in all (at the first tile's time per point, less
    the ``done_before`` points it did not compute), when that is longer than PROGRESS_AFTER."""
    points = [math.prod(s.stop - s.start for s in tile) for tile in tiles]
    estimate = first_seconds / max(points[0] - done_before, 1) * (sum(points) - done_before)
    if estimate > PROGRESS_AFTER:
        bar.delay = 0  # write() draws the bar: from now on it is drawn and closed whole
        bar.write(
            f"crumple: {len(tiles)} tiles to compute, about {estimate:.3g} s in all",
            file=sys.stderr,
        )


def finish(outcome: Outcome, ds: xr.Dataset, plane: Plane) -> xr.Dataset:
    """The run's Dataset: ``ds`` itself, or, with a store, the stored run with ``ds``'s
    attributes (and the plane saved beside it)."""
    if outcome.run is None:
        return ds
    folder = outcome.run.folder
    plane.save(folder / PLANE)
    attrs = ds.attrs | {"store": str(folder.resolve())}
    out = outcome.run.finish(attrs, {n: dict(ds[n].attrs) for n in ds.data_vars})
    out.attrs["tiles_computed"] = outcome.tiles_computed
    return out


def _resume(folder, fp: Mapping[str, str], ordered: Callable[[], str]) -> RunStore | None:
    """The run in ``folder`` if there is one, after checking that it was made from the
    same inputs; ``None`` if the folder holds no run. A run stored before data digests
    ignored the order of the samples is compared with ``ordered()``, the older digest."""
    stored = RunStore.open(folder)
    if stored is None:
        return None
    previous = stored.fingerprint("it cannot be resumed")
    try:
        json.loads(stored.attrs["plan"])
    except (KeyError, ValueError) as e:
        raise damaged(folder, e) from e
    differs = unmatched(previous, fp, ordered)
    if differs:
        hint = (
            " If the data is the same in other batches or another order, or read afresh "
            "(augmented, sampled), name it with data_id= (--data-id) in both runs."
            if "data" in differs
            else ""
        )
        raise CrumpleError(
            f"{str(folder)!r} holds a run made with other {', '.join(differs)}; it is left "
            "as it is. To resume it, give the same model weights, plane, grid, data, loss, "
            "dtype and recalibration data; to start a fresh run, choose another folder or "
            f"delete this one.{hint}"
        )
    broken = stored.tiles().damaged
    if broken:
        print(
            f"crumple: {len(broken)} damaged tile(s) in {str(Path(folder) / DATA)!r} (tiles "
            f"{', '.join(map(str, broken[:10]))}{' ...' * (len(broken) > 10)}; a chunk missing, "
            "unreadable or not matching its digest) are computed again",
            file=sys.stderr,
        )
    return stored
