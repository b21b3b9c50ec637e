"""The landscape layer: a model, its loss and its data bound once with options parsed once.

``surface``, ``line``, ``project``, ``Grid.auto`` and ``spread`` all evaluate through a
:class:`Landscape`: keyword options are parsed at the public edge into typed values
(:class:`Options`: the evaluation :class:`~crumple.evaluation.Settings`, the run's
:class:`~crumple.run.driver.RunOptions`, the metrics and the reference check), the inputs are
checked once, and the data is read once for every call on the same landscape.
:data:`OPTIONS` is the one list of option names; the callbacks, the CLI and ``spread`` take
theirs from it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from crumple import reference
from crumple.auto_range import auto_extents, check_search, covering, paths_of
from crumple.batches import Data, load
from crumple.checks import (
    check_fits,
    check_model,
    check_plane_and_grid,
    check_result_size,
    named_functions,
)
from crumple.errors import CrumpleError, CrumpleTypeError
from crumple.evaluation import Points, Settings, build
from crumple.evaluation.extras import check_variables, long_names
from crumple.grid import Grid
from crumple.hessian.curvature_map import Curvature
from crumple.params import evaluation_mode
from crumple.plane import Plane
from crumple.run import driver
from crumple.run.driver import RunOptions
from crumple.run.lock import writer
from crumple.run.schema import coord_attrs, grid_dataset
from crumple.trajectory import Trajectory, coordinates

LossFn = Callable[..., Any]
CHECK_TOLERANCE = {"float64": 1e-9, "float32": 1e-4}  # largest relative difference allowed
PROJECT_CHUNK = 16  # snapshots evaluated together

# the option names, by where they go
EVALUATION = (*(f.name for f in dataclasses.fields(Settings)), "chunk_size")  # Settings
RUN = ("store", "data_id", "dask", "progress", "recalibrate", "curvature")  # RunOptions
RESULT = ("metrics", "check")
OPTIONS = (*RESULT, *RUN, *EVALUATION)  # every keyword of surface and line
PATH = (*EVALUATION, "recalibrate")  # those a projected path is evaluated with, as its surface


@dataclasses.dataclass(frozen=True)
class Options:
    """``surface``'s keyword options, parsed once.

    Example:
        >>> Options.parse(dtype="float64", curvature=True).run.extras
        (Curvature(tol=None),)
        >>> Options.parse(chunks=8)
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: unknown option 'chunks'; the options are ...
    """

    settings: Settings = Settings()
    run: RunOptions = RunOptions(progress=True)
    metrics: Mapping[str, LossFn] | None = None
    check: int = 0

    @classmethod
    def parse(cls, **options: Any) -> Options:
        """The typed options of ``surface(**options)``; an unknown or bad one is refused
        with the list of them."""
        for name in options:
            if name not in OPTIONS:
                raise CrumpleError(
                    f"unknown option {name!r}; the options are {', '.join(sorted(OPTIONS))}"
                )
        settings = Settings.from_options(**{k: v for k, v in options.items() if k in EVALUATION})
        curvature = Curvature.of(options.get("curvature", False))
        recalibrate = options.get("recalibrate")
        if recalibrate is not None and curvature is not None:
            raise CrumpleError(
                "curvature=True with recalibrate= is not supported: the Hessian is taken with "
                "the model's own BatchNorm statistics; drop one of the two"
            )
        check = options.get("check", 0)
        if not isinstance(check, int) or isinstance(check, bool) or check < 0:
            raise CrumpleError(f"check must be a number of points >= 0, got {check!r}")
        run = RunOptions(
            store=options.get("store"),
            data_id=options.get("data_id"),
            dask=options.get("dask"),
            progress=options.get("progress", True),
            recalibrate=recalibrate,
            extras=(curvature,) if curvature is not None else (),
        )
        return cls(settings, run, options.get("metrics"), check)


def path_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Of :func:`crumple.surface`'s keywords, those :func:`crumple.project` takes too: how
    evaluation runs (device, dtype, strategy, ...) and ``recalibrate``, so that a path is
    evaluated as its surface is.

    Example:
        >>> path_options({"dtype": "float64", "metrics": {}, "progress": True})
        {'dtype': 'float64'}
    """
    return {k: v for k, v in options.items() if k in PATH}


class Landscape:
    """A model, its loss and its data, bound with options parsed once: the surface, a line,
    a projected path and an automatic grid all evaluate through it, and the data is read
    once for all of them.

    Example:
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> x = torch.ones(4, 1)
        >>> land = Landscape(net, torch.nn.functional.mse_loss, (x, x), dtype="float64")
        >>> land.line(Plane.axes(net, "weight"), np.array([0.0, 1.0, 2.0])).loss.values.tolist()
        [1.0, 0.0, 1.0]
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: Any, **options: Any) -> None:
        self.options = Options.parse(**options)
        self.model = check_model(model)
        self.fns = named_functions(loss_fn, self.options.metrics)
        check_variables(self.fns, self.options.run.extras)
        self.data = data
        self._given: Data | None = None

    @property
    def settings(self) -> Settings:
        return self.options.settings

    def keep_strategy(self, name: str) -> None:
        """Evaluate with strategy ``name`` from now on (one chosen on a first call)."""
        settings = self.settings.replace(strategy=name)
        self.options = dataclasses.replace(self.options, settings=settings)

    def given(self) -> Data:
        """The user's data, read once (the fingerprint hashes it)."""
        if self._given is None:
            self._given = load(self.data, self.settings.data_budget, self.settings.stream)
        return self._given

    def surface(self, plane: Plane, grid: Grid) -> xr.Dataset:
        """The loss (and metrics) at every point of a 2-D grid (:func:`crumple.surface`)."""
        check_plane_and_grid(plane, grid)
        if plane.ndim != 2 or len(grid.axes) != 2:
            raise CrumpleError(
                f"surface needs a 2-D plane and a grid with alpha and beta; got a {plane.ndim}-D "
                f"plane and {grid!r}. For one direction use crumple.line"
            )
        return self.evaluate(plane, grid)

    def line(self, plane: Plane, alpha) -> xr.Dataset:
        """The loss along the first direction of ``plane`` (:func:`crumple.line`)."""
        check_plane_and_grid(plane)
        if plane.ndim == 2:
            plane = Plane(plane.origin, plane.directions[:1], dict(plane.attrs))
        return self.evaluate(plane, Grid(alpha))

    def evaluate(self, plane: Plane, grid: Grid, along: str | None = None) -> xr.Dataset:
        """The grid on the plane through the run driver (a store resumed, Dask workers);
        ``along``, a curve's kind: the grid's one axis is ``t`` along that curve."""
        check_fits(self.model, plane)
        check_result_size(grid.size, len(self.fns))
        options = self.options
        if along is not None:
            run = dataclasses.replace(options.run, along=along)
            options = dataclasses.replace(options, run=run, check=0)  # check: on grids
        with writer(options.run.store):  # the run folder's one writer, if there is one
            return self._evaluate_held(plane, grid, options)

    def _evaluate_held(self, plane: Plane, grid: Grid, options=None) -> xr.Dataset:
        """:meth:`evaluate`, with the run folder held: resumed or made, filled, finished."""
        options = options or self.options
        start = time.perf_counter()
        extras = options.run.extras
        with evaluation_mode(self.model):
            given = self.given()
            outcome = driver.evaluate_grid(
                self.model,
                self.fns,
                given,
                plane,
                grid,
                self.settings,
                options.run,
                coord_attrs(plane, grid),
            )
        if outcome.finished is not None:
            ds = outcome.finished
        else:
            facts = _facts(outcome, start)
            ds = grid_dataset(outcome.values, plane, grid, self.fns, facts, long_names(extras))
        if options.check:
            self._check_against_reference(ds, plane, outcome.settings)
        return driver.finish(outcome, ds, plane) if outcome.finished is None else ds

    def auto_grid(self, plane: Plane, rise: float = 2.0, num: int = 51, cover: Any = None) -> Grid:
        """:meth:`Grid.auto <crumple.grid.Grid.auto>`: every line evaluation of the search
        goes through one evaluator, prepared once (the data read once, the checks and the
        strategy choice made once)."""
        check_search(rise, num)
        check_plane_and_grid(plane)
        check_fits(self.model, plane)
        paths_of(cover, plane.ndim)  # checked before the line evaluations
        with evaluation_mode(self.model):
            evaluate = self.evaluator(plane)
            task = evaluate.task

            def loss_along(k: int, ts: np.ndarray) -> np.ndarray:
                t = torch.as_tensor(np.asarray(ts, dtype=float), dtype=task.dtype)
                coords = [t if j == k else torch.zeros_like(t) for j in range(plane.ndim)]
                points = Points.along(task.plane, [c.to(task.device) for c in coords])
                return evaluate(points)["loss"].numpy()

            extents, sentence = auto_extents(loss_along, plane.ndim, rise)
        extents, widened = covering(extents, cover)
        grid = Grid(*(np.linspace(low, high, num) for low, high in extents))
        grid.chosen = sentence + widened
        return grid

    def project(self, trajectory: Trajectory, plane: Plane) -> xr.Dataset:
        """Each snapshot placed on the plane and evaluated both ways (:func:`crumple.project`)."""
        if not isinstance(trajectory, Trajectory):
            raise CrumpleTypeError(
                f"trajectory must be a crumple.Trajectory, got {type(trajectory).__name__}; use "
                "Recorder(model).trajectory or Trajectory.load(folder)"
            )
        check_plane_and_grid(plane)
        check_fits(self.model, plane)
        names = trajectory.names()
        first = trajectory.snapshot(0)
        shapes = {n: tuple(first[n].shape) for n in names}
        if shapes != {n: tuple(t.shape) for n, t in plane.origin.items()}:
            raise CrumpleError(
                "the trajectory's parameters differ from the plane's (names or shapes); record "
                "the same model the plane was built from"
            )
        coords, off_plane = coordinates(trajectory, plane)
        held, n = trajectory.buffer_counts()
        own = held > 0 and self.options.run.recalibrate is None
        with evaluation_mode(self.model):
            evaluate = self.evaluator(plane, metrics=True)
            true, on_plane = _path_losses(evaluate, trajectory, names, coords, own)
        dims = ("alpha", "beta")[: plane.ndim]
        data_vars = {dim: ("step", c.numpy()) for dim, c in zip(dims, coords)}
        data_vars |= {name: ("step", values) for name, values in true.items()}  # + metrics
        data_vars |= {
            "loss_on_plane": ("step", on_plane),
            "off_plane": ("step", off_plane.numpy()),
            "recorded_loss": ("step", np.asarray(trajectory.losses, dtype=np.float64)),
        }
        path = xr.Dataset(data_vars, coords={"step": ("step", np.asarray(trajectory.steps))})
        if any(b.is_floating_point() for b in self.model.buffers()):
            path.attrs["statistics"] = _statistics(held, n, self.options.run.recalibrate)
        return path

    def evaluator(self, plane: Plane, metrics: bool = False):
        """One evaluator on ``plane`` of the loss alone (``metrics``: and the metrics), the
        model in evaluation mode."""
        fns = self.fns if metrics else {"loss": self.fns["loss"]}
        recalibrate = self.options.run.recalibrate
        return build(self.model, fns, self.given(), plane, self.settings, recalibrate=recalibrate)

    def _check_against_reference(self, ds: xr.Dataset, plane: Plane, settings: Settings) -> None:
        """Re-do ``check`` random grid points with the reference loop; record the largest
        relative difference in ``ds.attrs``, and refuse the result past the tolerance."""
        rng = np.random.default_rng(0)
        n = self.options.check
        flat = rng.choice(ds.loss.size, size=min(n, ds.loss.size), replace=False)
        index = np.unravel_index(flat, ds.loss.shape)
        coords = [ds[d].values[i] for d, i in zip(ds.loss.dims, index)]
        moved = plane.to(settings.torch_device, settings.torch_dtype)
        weights = [moved.at(*map(float, point)) for point in zip(*coords)]
        with evaluation_mode(self.model):
            slow = reference.points(
                self.model,
                self.fns,
                self.given(),
                weights,
                dtype=settings.torch_dtype,
                device=settings.torch_device,
                recalibrate=self.options.run.recalibrate,
            )
        worst, where = 0.0, None
        for name, values in slow.items():
            fast = ds[name].values[index]
            rel = np.abs(fast - values) / np.maximum(np.abs(values), np.finfo(float).tiny)
            if rel.size and np.nanmax(rel) >= worst:
                k = int(np.nanargmax(rel))
                worst, where = float(rel[k]), (name, [float(c[k]) for c in coords])
        ds.attrs["check_points"] = len(flat)
        ds.attrs["check_max_rel_diff"] = worst
        tolerance = CHECK_TOLERANCE.get(str(settings.dtype), 1e-4)
        if worst > tolerance:
            raise CrumpleError(
                f"the {settings.strategy} strategy differs from the reference loop by "
                f"{worst:.3g} (relative, more than {tolerance:g}) in {where[0]} at {where[1]}; "
                "evaluate with strategy='loop' and report this model to crumple"
            )


def project(
    trajectory: Trajectory,
    plane: Plane,
    model: nn.Module,
    loss_fn: Callable | str,
    data: Any,
    *,
    metrics: Any = None,
    recalibrate: Any = None,
    **options: Any,
) -> xr.Dataset:
    """Place each snapshot on the plane and evaluate it both ways.

    Returns a Dataset along ``step`` with ``alpha`` and ``beta`` (least-squares coordinates),
    ``off_plane`` (distance from the snapshot to its projection), ``loss`` (the true loss of
    the snapshot), ``loss_on_plane`` (the loss at the projection), ``recorded_loss`` (what
    the training loop passed to ``record``) and each of ``metrics`` (as in ``surface``) at the
    snapshot. ``options`` are those of
    :func:`crumple.surface` that say how evaluation runs (``device``, ``dtype``, ...);
    ``recalibrate`` recomputes the BatchNorm statistics at each point, as in ``surface``.

    Example:
        >>> import crumple as cr
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> rec = cr.Recorder(net); rec.record()
        >>> x = torch.ones(3, 1)
        >>> path = cr.project(rec.trajectory, cr.Plane.axes(net, "weight"), net,
        ...                   torch.nn.functional.mse_loss, (x, x))
        >>> float(path.off_plane[0])
        0.0
    """
    for name in options:
        if name not in EVALUATION:
            known = ", ".join(sorted((*PATH, "metrics")))
            raise CrumpleError(f"unknown option {name!r} of project; the options are {known}")
    landscape = Landscape(model, loss_fn, data, metrics=metrics, recalibrate=recalibrate, **options)
    return landscape.project(trajectory, plane)


def _path_losses(evaluate, trajectory: Trajectory, names, coords, own: bool = False):
    """The true loss (and metrics) of each snapshot (``own``: with the buffers recorded with
    it, where it has them), and the loss at its projection (the model's buffers), chunk by
    chunk."""
    reference_tensor = next(iter(evaluate.task.origin.values()))
    true, on_plane = {name: [] for name in evaluate.names}, []

    def keep(values):
        for name, v in values.items():
            true[name].append(v)

    for start in range(0, len(trajectory), PROJECT_CHUNK):
        chunk = range(start, min(start + PROJECT_CHUNK, len(trajectory)))
        point = [c[start : chunk.stop].to(reference_tensor) for c in coords]
        on_plane.append(evaluate(Points.along(evaluate.task.plane, point))["loss"])  # chosen
        stacked = {
            n: torch.stack([trajectory.snapshot(k)[n] for k in chunk]).to(reference_tensor)
            for n in names
        }
        if not own:
            keep(evaluate(Points.weights(stacked)))
            continue
        for i, k in enumerate(chunk):  # one at a time: each snapshot its own buffers
            buffers = trajectory.snapshot_buffers(k)
            evaluator = evaluate.with_buffers(buffers) if buffers else evaluate
            single = {n: t[i : i + 1] for n, t in stacked.items()}
            keep(evaluator(Points.weights(single)))
    return (
        {name: torch.cat(v).double().cpu().numpy() for name, v in true.items()},
        torch.cat(on_plane).double().cpu().numpy(),
    )


def _statistics(held: int, n: int, recalibrate: Any) -> str:
    """Which BatchNorm statistics (buffers) a path's losses use: its ``statistics`` attr."""
    plane = "loss_on_plane: the model's, as the surface"
    if recalibrate is not None:
        return "loss and loss_on_plane: recomputed at each point (recalibrate), as the surface"
    if held == n:
        return f"loss: each snapshot's own (recorded with it); {plane}"
    if held == 0:
        return (
            f"loss: the model's at every snapshot, as the trajectory holds none (recorded by "
            f"an older crumple: record again, or recalibrate, for each snapshot's own); {plane}"
        )
    return f"loss: each snapshot's own where recorded ({held} of {n}), else the model's; {plane}"


def _facts(outcome: driver.Outcome, start: float) -> dict[str, Any]:
    s = outcome.settings
    facts = {
        **outcome.facts,
        "dtype": s.dtype,
        "device": s.device,
        "strategy": s.strategy,
        "batching": s.batching,
        "chunk_size": s.tile_size,
        "points_per_call": s.points_per_call,
        "tiles_computed": outcome.tiles_computed,
        "seconds": time.perf_counter() - start,
        "settings": s.to_json(),
    }
    if s.batch_size is not None:
        facts["batch_size"] = s.batch_size
    if s.precision is not None:
        facts["precision"] = s.precision
    if outcome.halvings:
        facts["points_per_call_halved"] = outcome.halvings
    if outcome.choice is not None:
        facts["strategy_reason"] = outcome.choice.reason
        facts["choice_seconds"] = outcome.choice.overhead
    return facts
