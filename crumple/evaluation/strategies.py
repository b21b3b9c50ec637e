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
from torch.func import vmap
from torch.utils._pytree import tree_map

from crumple.batches import Batch
from crumple.evaluation import probes
from crumple.evaluation.kernels import ElidedRead
from crumple.evaluation.points import Points
from crumple.losses import Means, not_a_mean
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
    """One point at a time on a private copy of the model, weights written in place (on a
    grid, ``origin + a * d1`` then ``+ b * d2`` straight into the copy's tensors: no other
    copy of the weights is made). Held data is read for each point; streamed data once per
    block, each batch at every point."""

    name = "loop"

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        self.work = copy.deepcopy(task.model).requires_grad_(False)
        self.work.to(device=task.device, dtype=task.dtype)
        self.slots = dict(self.work.named_parameters())
        self.buffer_slots = dict(self.work.named_buffers())
        for name, value in task.buffers.items():  # the task's: the model's, or a snapshot's
            self.buffer_slots[name].copy_(value)
        self.loaded: dict[str, Tensor] = {}

    def __call__(self, points: Points) -> dict[str, Tensor]:
        task = self.task
        means = Means(task.objective.names, points.shape)
        each = list(points.each())
        if task.data.streamed:
            pairs = ((p, b) for b in enumerate(task.data) for p in each)
        else:
            pairs = ((p, b) for p in each for b in enumerate(task.data))
        recalibrated: dict[tuple, Params] = {}
        current = None
        for (index, point), (b, batch) in pairs:
            if index != current:
                current = index
                self._write(points, point)
                if task.recalibration is not None:
                    self._load_buffers(index, recalibrated)
            output = task.objective.call(self.work, batch, f"model on batch {b}")
            means.add(task.objective.values(output, batch), task.weights(b, batch), index)
        return means.result()

    def _write(self, points: Points, point) -> None:
        """Write the weights at ``point`` into the copy."""
        if not points.is_grid:
            self._load(points.params_at(*point))
            return
        plane = points.plane
        (a, b), (d1, d2), (moved1, moved2) = point, plane.directions, plane.touched
        moved = moved1 | moved2
        self._load({n: t for n, t in plane.origin.items() if n not in moved})  # once
        for name in moved:
            slot = self.slots[name]
            self.loaded.pop(name, None)
            if name in moved1:
                torch.add(plane.origin[name], d1[name], alpha=a, out=slot)
            else:
                slot.copy_(plane.origin[name])
            if name in moved2:
                slot.add_(d2[name], alpha=b)

    def _load_buffers(self, index, recalibrated: dict) -> None:
        """The recalibrated buffers at the copy's weights (made once per point)."""
        if index not in recalibrated:
            if not self.task.data.streamed:
                recalibrated.clear()  # each point's batches come together
            recalibrated[index] = self.task.buffers_at(self.slots)
        for name, value in recalibrated[index].items():
            self.buffer_slots[name].copy_(value)

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
        means = Means(task.objective.names, points.shape)
        with task.kernels:
            for b, batch in enumerate(task.data):
                if task.data.streamed:
                    task.kernels.forget()

                def predict(params, point, elided=(), buffers=None, b=b, batch=batch):
                    if buffers is None:
                        buffers = task.buffers_at(params)
                    task.kernels.start(b, batch.first, params, point, on_plane, frozenset(elided))
                    try:
                        model = probes.functional(task.model, params, buffers)
                        return task.objective.call(model, batch, f"model on batch {b}")
                    finally:
                        task.kernels.stop()

                means.add(self.batch(predict, points, batch), task.weights(b, batch))
        return means.result()

    def batch(self, predict: Callable, points: Points, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError


@register
class Expanded(_Intercepted):
    """One point at a time, wide input layers expanded in the plane directions."""

    name = "expanded"

    def batch(self, predict, points, batch):
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
                    output = predict(params, point, elided)
                    break
                except ElidedRead:  # now in kernels.reads: combined from here on
                    continue
            for name, v in task.objective.values(output, batch).items():
                out[name][index] = v.double()
        return out


@register
class Vmap(_Intercepted):
    """Points evaluated together under nested ``torch.func.vmap``."""

    name = "vmap"
    batched = True

    def batch(self, predict, points, batch):
        objective = self.task.objective

        if self.task.recalibration is None:

            def at_point(*point: Any) -> dict[str, Any]:
                return objective.keep(predict(points.params_at(*point), point))

            kept = nested_vmap(at_point, points.levels)(*points.args)
        else:  # the block's recalibrated buffers, made once for all its batches

            def at_point(buffers, *point: Any) -> dict[str, Any]:
                return objective.keep(predict(points.params_at(*point), point, (), buffers))

            buffers = self._buffers(points)
            kept = nested_vmap(at_point, [ALL, *points.levels])(buffers, *points.args)
        # the functions under one vmap over all points (nested, F.mse_loss fails in torch 2.13)
        depth = len(points.shape)
        flat = tree_map(lambda t: t.reshape(-1, *t.shape[depth:]), kept)
        values = vmap(lambda k: objective.values_of(k, batch))(flat)
        for name, v in values.items():
            if v.shape != (points.size,):
                raise not_a_mean(name, v.shape[1:])
        return {name: v.reshape(points.shape) for name, v in values.items()}

    def _buffers(self, points: Points) -> Params:
        """Recalibrated buffers at every point of the block last asked for."""
        if getattr(self, "_block", None) is not points:
            task = self.task
            self._block = points

            def at_point(*point: Any) -> Params:
                return task.buffers_at(points.params_at(*point))

            self._block_buffers = nested_vmap(at_point, points.levels)(*points.args)
        return self._block_buffers


def nested_vmap(fn: Callable, levels: Sequence[int | None]) -> Callable:
    """vmap ``fn`` once per level: arguments with the same level are mapped together,
    arguments with level ``None`` are passed whole, and with level ``ALL`` mapped at every
    level (one leading axis each). The result has one leading axis per level.

    Example:
        >>> f = nested_vmap(lambda a, b: a * b, [0, 1])
        >>> f(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 10.0, 100.0])).shape
        torch.Size([2, 3])
    """
    depth = max(level for level in levels if level not in (None, ALL)) + 1
    for level in reversed(range(depth)):
        fn = vmap(fn, in_dims=tuple(0 if lv in (level, ALL) else None for lv in levels))
    return fn


ALL = "all"  # a nested_vmap level: mapped at every level
