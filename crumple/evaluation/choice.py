"""The ``auto`` choice of a strategy: look at the model first, time only when that leaves a
real question, and keep the values the timing computed."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

from crumple.errors import CrumpleError
from crumple.evaluation import probes
from crumple.evaluation.points import Points

if TYPE_CHECKING:
    from crumple.evaluation.engine import Task

TIMED_LOOP_POINTS = 2  # points the loop is timed on, after a one-point warm-up
MIN_TIMED_POINTS = 8  # a first call of fewer points is not worth timing: the loop takes it


@dataclass
class Choice:
    """The strategy ``auto`` chose, why, and what timing it took.

    Attributes:
        strategy: the chosen strategy's name.
        reason: one line for people.
        timings: seconds per point of each strategy timed (empty when none was).
        overhead: seconds the choice cost (its probes, warm-ups and timing) beyond
            evaluating the points it kept.
    """

    strategy: str
    reason: str
    timings: dict[str, float] = field(default_factory=dict)
    overhead: float = 0.0

    @property
    def seconds_per_point(self) -> float | None:
        return self.timings.get(self.strategy)


def choose(
    task: Task, points: Points, evaluate: Callable[[str, Points], dict[str, Tensor]]
) -> tuple[Choice, dict[str, Tensor] | None]:
    """Choose between the loop (``"expanded"`` when the model has input layers worth
    expanding) and vmap for ``task``; return the choice and, when it timed vmap on
    ``points``, their values (else ``None``)."""
    start = time.perf_counter()
    first = task.data.first
    expanded = (
        task.plane is not None
        and task.recalibration is None  # it needs every weight combined
        and not task.data.streamed  # a streamed batch may differ between passes
        and probes.expanded_layers(
            task.model, task.plane, task.kernels, task.buffers, task.objective, first
        )
    )
    looping = "expanded" if expanded else "loop"
    obstacle = probes.vmap_obstacle(task.model, task.origin, task.buffers, task.objective, first)
    one = points.take([slice(0, 1)] * len(points.shape))
    if obstacle is None and points.size >= MIN_TIMED_POINTS:
        obstacle = _fails_under_vmap(evaluate, one)  # the loss functions too, and warms up
    if obstacle is not None or points.size < MIN_TIMED_POINTS:
        few = (
            f"{points.size} point(s) a call (what fits the memory and cache budget): too few "
            "for vmap to pay"
        )
        reason = f"not vmap: {obstacle}" if obstacle else few
        return Choice(looping, reason, overhead=time.perf_counter() - start), None
    with _no_gc():  # a collection of torch's objects (0.1 s) would decide the choice
        timings, values = _timed(evaluate, points, one, looping)
    best = min(timings, key=timings.get)
    overhead = max(0.0, time.perf_counter() - start - timings[best] * points.size)
    rates = ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in timings.items())
    return Choice(best, f"timed per point: {rates}", timings, overhead), values


def _fails_under_vmap(evaluate, one: Points) -> str | None:
    """Why vmap cannot evaluate the model and its functions at one point, or ``None``."""
    try:
        evaluate("vmap", one)
    except CrumpleError:
        raise
    except Exception as e:
        return f"vmap cannot evaluate it ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
    return None


def _timed(evaluate, points: Points, one: Points, looping: str) -> tuple[dict[str, float], dict]:
    """Seconds per point of vmap on ``points`` (values kept) and of the loop on a few of
    them, each after a one-point warm-up (vmap's was done by the caller)."""
    evaluate(looping, one)
    timings = {}
    timer = time.perf_counter()
    values = evaluate("vmap", points)
    timings["vmap"] = (time.perf_counter() - timer) / points.size
    few = points.take([slice(0, 1)] * (len(points.shape) - 1) + [slice(0, TIMED_LOOP_POINTS)])
    timer = time.perf_counter()
    evaluate(looping, few)
    timings[looping] = (time.perf_counter() - timer) / few.size
    return timings, values


@contextlib.contextmanager
def _no_gc():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
