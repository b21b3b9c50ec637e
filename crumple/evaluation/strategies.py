"""Strategies: ways to evaluate a block of points, all giving the reference loop's numbers.

Each strategy is one class with one method, ``__call__(points) -> {name: values}``, and an
entry in ``STRATEGIES``; a new one (a CUDA one, a compiled one) is a class and a
``@register`` line.

* ``"loop"``: one point at a time on a private copy of the model whose weights are written
  in place, each row's ``origin + a * directions[0]`` made once; nothing is intercepted,
  so it costs what a hand-written loop costs.
* ``"expanded"``: one point at a time with wide input layers expanded (``kernels.py``); a
  parameter that only expanded layers read is not combined at each point, and every other
  call the model makes is watched for such a parameter (one that reads it makes the point
  run again with that parameter combined, from then on).
* ``"vmap"``: ``torch.func.functional_call`` under nested ``torch.func.vmap``, one vmap
  level per plane axis; a parameter that a direction does not move is not batched along
  that axis, so whatever the network computes from such parameters alone is computed once
  per row.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from crumple.errors import CrumpleError, user_code
from crumple.evaluation.kernels import ElidedRead
from crumple.evaluation.points import Points
from crumple.params import Params

if TYPE_CHECKING:
    from crumple.evaluation.engine import Task

STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Add a strategy class to ``STRATEGIES`` under its ``name``."""
    STRATEGIES[cls.name] = cls
    return cls


class Strategy:
    """Evaluates the task's functions at a block of points, as exact dataset means.

    Subclasses set ``name`` and implement ``__call__``; ``batched`` says whether a call
    evaluates its points together (so the evaluator splits blocks to ``points_per_call``).
    """

    name: ClassVar[str]
    batched: ClassVar[bool] = False

    def __init__(self, task: Task) -> None:
        self.task = task

    def __call__(self, points: Points) -> dict[str, Tensor]:
        """Values of each function at ``points``: float64 CPU tensors of ``points.shape``."""
        raise NotImplementedError


@register
class Loop(Strategy):
    """One point at a time on a private copy of the model, weights written in place."""

    name = "loop"

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        self.work = copy.deepcopy(task.model).requires_grad_(False)
        self.work.to(device=task.device, dtype=task.dtype)
        self.slots = dict(self.work.named_parameters())
        self.loaded: dict[str, Tensor] = {}

    def __call__(self, points: Points) -> dict[str, Tensor]:
        task = self.task
        out = {name: torch.empty(points.shape, dtype=torch.float64) for name in task.fns}
        row_index, row = None, None
        for index, point in points.each():
            if points.is_grid:  # each row's partial weights are made once
                plane = points.plane
                if row_index != index[0]:
                    row_index, row = index[0], plane.shifted(plane.origin, 0, point[0])
                params = plane.shifted(row, 1, point[1])
            else:
                params = points.params_at(*point)
            self._load(params)
            sums = dict.fromkeys(task.fns, 0.0)
            for b, (x, y) in enumerate(task.batches):
                with user_code("model(x) on batch {b}, shape {s}", b=b, s=x.shape):
                    preds = checked_prediction(self.work(x))
                for name, fn in task.fns.items():
                    with user_code("the {n} function on batch {b}", n=name, b=b):
                        sums[name] += float(batch_mean(name, fn(preds, y))) * len(x)
            for name, total in sums.items():
                out[name][index] = total / task.n_samples
        return out

    def _load(self, params: Params) -> None:
        for name, value in params.items():
            if self.loaded.get(name) is not value:  # rewrite only what changed
                self.slots[name].copy_(value)
                self.loaded[name] = value


class _Intercepted(Strategy):
    """The strategies that run under the task's layer kernels, batch by batch (so each
    batch's expanded-layer products serve every point)."""

    def __call__(self, points: Points) -> dict[str, Tensor]:
        task = self.task
        on_plane = points.plane is not None
        sums: dict[str, Tensor] = {}
        with task.kernels:
            for b, (x, y) in enumerate(task.batches):

                def predict(x: Tensor, params: Params, point: Sequence[Any], elided=(), b=b):
                    task.kernels.start(b, x, params, point, on_plane, frozenset(elided))
                    try:
                        with user_code("model(x) on batch {b}, shape {s}", b=b, s=x.shape):
                            preds = functional_call(task.model, (params, task.buffers), (x,))
                    finally:
                        task.kernels.stop()
                    return checked_prediction(preds)

                values = self.batch(predict, points, x, y)
                for name, v in values.items():
                    weighted = v.double().cpu() * len(x)
                    sums[name] = weighted if name not in sums else sums[name] + weighted
        return {name: total / task.n_samples for name, total in sums.items()}

    def batch(self, predict: Callable, points: Points, x: Tensor, y: Tensor):
        raise NotImplementedError


@register
class Expanded(_Intercepted):
    """One point at a time, wide input layers expanded in the plane directions."""

    name = "expanded"

    def batch(self, predict, points, x, y):
        task = self.task
        kernels = task.kernels
        out = {name: torch.empty(points.shape, dtype=torch.float64) for name in task.fns}
        row, row_key = None, None
        for index, point in points.each():
            while True:
                if not points.is_grid:
                    elided, params = frozenset(), points.params_at(*point)
                else:  # leave out the parameters only expanded layers read
                    plane, elided = points.plane, kernels.elidable
                    if row_key != (index[0], elided):
                        row = plane.shifted(plane.origin, 0, point[0], skip=elided)
                        row_key = (index[0], elided)
                    params = plane.shifted(row, 1, point[1], skip=elided)
                try:
                    preds = predict(x, params, point, elided)
                    break
                except ElidedRead:  # now in kernels.reads: combined from here on
                    continue
            for name, fn in task.fns.items():
                with user_code("the {n} function", n=name):
                    out[name][index] = batch_mean(name, fn(preds, y)).double()
        return out


@register
class Vmap(_Intercepted):
    """Points evaluated together under nested ``torch.func.vmap``."""

    name = "vmap"
    batched = True

    def batch(self, predict, points, x, y):
        def at_point(x: Tensor, *point: Any) -> Tensor:
            return predict(x, points.params_at(*point), point)

        preds = nested_vmap(at_point, [None, *points.levels])(x, *points.args)
        depth = len(points.shape)
        flat = preds.reshape(-1, *preds.shape[depth:])
        out = {}
        for name, fn in self.task.fns.items():
            with user_code("the {n} function (under vmap)", n=name):
                values = vmap(fn, in_dims=(0, None))(flat, y)
            if values.shape != flat.shape[:1]:
                raise not_a_mean(name, values.shape[1:])
            out[name] = values.reshape(points.shape)
        return out


def nested_vmap(fn: Callable, levels: Sequence[int | None]) -> Callable:
    """vmap ``fn`` once per level: arguments with the same level are mapped together,
    arguments with level ``None`` are passed whole. The result has one leading axis per level.

    Example:
        >>> f = nested_vmap(lambda a, b: a * b, [0, 1])
        >>> f(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 10.0, 100.0])).shape
        torch.Size([2, 3])
    """
    depth = max(level for level in levels if level is not None) + 1
    for level in reversed(range(depth)):
        fn = vmap(fn, in_dims=tuple(0 if lv == level else None for lv in levels))
    return fn


def checked_prediction(preds: Any) -> Tensor:
    if not isinstance(preds, Tensor):
        raise CrumpleError(
            f"the model returned {type(preds).__name__}; crumple needs a tensor of "
            "predictions (wrap the model so that forward returns one)"
        )
    return preds


def batch_mean(name: str, value: Any) -> Tensor:
    """``value`` if it is a scalar tensor (a function's batch mean), else a clear error."""
    if not isinstance(value, Tensor):
        raise CrumpleError(
            f"the {name} function returned {type(value).__name__} {value!r}; it must return "
            "the batch mean as a scalar tensor (e.g. torch.nn.functional.mse_loss(pred, y))"
        )
    if value.dim() != 0:
        raise not_a_mean(name, value.shape)
    return value


def not_a_mean(name: str, shape) -> CrumpleError:
    return CrumpleError(
        f"{name} function returned shape {tuple(shape)} per point; "
        "it must return the batch mean as a scalar (reduction='mean')"
    )
