"""Tiles on a Dask cluster: the model, the data, the plane and the run's settings go to each
worker once (``scatter(..., broadcast=True)``); each task evaluates one tile and returns its
values. Workers build their evaluator with the same factory as the main process, from the
settings the first tile fixed, so every worker computes the same bits."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crumple.errors import CrumpleError, CrumpleTypeError, require_extra


@dataclass
class Payload:
    """What every worker receives once: the model, the functions, the data, the plane, the
    settings the first tile fixed (as JSON), the recalibration data and the extras."""

    model: Any
    fns: Mapping[str, Callable]
    data: Any
    plane: Any
    settings: str
    recalibrate: Any = None
    extras: tuple = ()
    along: str | None = None  # a curve's kind: the coordinates are t along it


_EVALUATORS: dict[str, Any] = {}  # on a worker: one evaluator per scattered payload
UNPACKED = [0]  # on a worker: how many payloads it has unpacked (tests count these)
# imported when a local worker starts, before any task: importing xarray from two threads
# at once (a task unpickling the user's functions, a client.run) can hand one of them a
# partly initialized module
WORKER_PRELOAD = ("crumple.surface",)


def connect(dask: Any):
    """A ``distributed.Client`` for ``dask``, and whether crumple made it (and must close it).

    ``dask`` is a Client, a scheduler address, or ``"local:N"`` for N local one-thread
    worker processes.
    """
    distributed = require_extra("distributed", "dask")
    if isinstance(dask, distributed.Client):
        return dask, False
    if isinstance(dask, str) and dask.startswith("local:"):
        try:
            n = int(dask.split(":", 1)[1])
            if n < 1:
                raise ValueError
        except ValueError:
            raise CrumpleError(f"dask {dask!r}: write local:N with N >= 1 workers") from None
        return distributed.Client(local_cluster(n)), True
    if isinstance(dask, str):
        try:
            return distributed.Client(dask, timeout=30), True
        except OSError as e:
            raise CrumpleError(
                f"cannot reach the Dask scheduler at {dask!r} ({e}); start one with "
                "`dask scheduler` (and workers with `dask worker ADDRESS`) or use local:N"
            ) from e
    raise CrumpleTypeError(
        f"dask must be a distributed.Client, a scheduler address or 'local:N', got {dask!r}"
    )


def local_cluster(n_workers: int):
    """A ``LocalCluster`` of one-thread worker processes, without Dask's default
    ``MALLOC_TRIM_THRESHOLD_=65536`` for them: returning every freed block to the system
    makes each large tensor allocation fault its pages in again (measured: +55% time on the
    CNN benchmark)."""
    import dask

    distributed = require_extra("distributed", "dask")
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            preload=list(WORKER_PRELOAD),
        )


def evaluate_tiles(
    client,
    payload: Callable[[], Payload],
    tiles: Sequence[tuple[int, tuple[slice, ...]]],
    axes: Sequence[torch.Tensor],
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Evaluate ``tiles`` (index, slices of ``axes``) on the cluster of ``client``; yield
    results as they arrive. ``payload()`` gives the :class:`Payload`, called once the
    first tile has fixed the settings."""
    distributed = require_extra("distributed", "dask")
    futures = []
    try:
        import cloudpickle

        # pickled here, as a whole, so that the model arrives as torch.save would keep it
        shipped = client.scatter(cloudpickle.dumps(payload()), broadcast=True, hash=False)
        futures = [
            client.submit(_tile, shipped, k, [a[s].cpu() for a, s in zip(axes, tile)], pure=False)
            for k, tile in tiles
        ]
        for future in distributed.as_completed(futures):
            yield future.result()
    finally:
        for future in futures:
            future.cancel()


def close(client, owned: bool) -> None:
    """Close a client (and its local cluster) that crumple made."""
    if owned:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()


def _tile(packed: bytes, k: int, coords: list):
    """Runs on a worker: evaluate tile ``k`` with the worker's cached evaluator."""
    import hashlib
    import pickle

    from crumple.evaluation import Points, Settings, build
    from crumple.params import evaluation_mode

    key = hashlib.sha256(packed).hexdigest()
    if key not in _EVALUATORS:
        shipped: Payload = pickle.loads(packed)
        model = shipped.model
        UNPACKED[0] += 1
        try:
            from distributed import get_worker

            torch.set_num_threads(max(1, get_worker().state.nthreads))
        except (ImportError, ValueError, AttributeError):
            pass
        with evaluation_mode(model):
            evaluate = build(
                model,
                shipped.fns,
                shipped.data,
                shipped.plane,
                Settings.from_json(shipped.settings),
                check=False,
                recalibrate=shipped.recalibrate,
                extras=shipped.extras,
            )
        _EVALUATORS.clear()
        _EVALUATORS[key] = (model, evaluate, shipped.along)
    model, evaluate, _ = _EVALUATORS[key]
    task = evaluate.task
    with evaluation_mode(model):
        coords = [c.to(task.device) for c in coords]
        along = _EVALUATORS[key][2]
        points = Points.grid(task.plane, coords) if along is None else (
            Points.curve(task.plane, along, coords[0]))  # fmt: skip
        values = evaluate(points)
    return k, {name: v.double().cpu().numpy() for name, v in values.items()}
