"""Loss and metrics at many points of weight space at once, and the plain loop they are
checked against.

Two strategies give the same numbers:

* ``"vmap"`` calls the model with ``torch.func.functional_call`` under nested
  ``torch.func.vmap``, one vmap level per plane axis, a tile of points at a time. A
  parameter that a direction does not move is not batched along that axis, so whatever
  the network computes from such parameters alone is computed once per row.
* ``"loop"`` calls it once per point (still with ``functional_call``: the model itself is
  never written to). On the CPU this is faster for convolutions, which vmap turns into
  grouped convolutions.

``"auto"`` times both on the first tile and keeps the faster one. Under either, a linear or
convolution layer applied to the input batch itself (the first layer, say) is expanded:
``f(x, W0 + a D1 + b D2) = f(x, W0) + a f(x, D1) + b f(x, D2)``, the three products computed
once per batch instead of once per point, for layers with a fan-in of at least
``EXPAND_FAN_IN`` (below that the combination costs more than the layer). The data is
re-batched so that one forward pass keeps its activations near ``WORKING_SET`` elements
(the dataset mean does not depend on the batching).

In the loop, a parameter that only expanded layers read is not combined at each point: it
stays at the origin. Every other call the model makes is watched for such a parameter; one
that reads it makes the point run again with that parameter combined, from then on.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._C._functorch import is_batchedtensor
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from crumple.batches import Batch, as_batches, number_of_samples, rebatched
from crumple.errors import CrumpleError
from crumple.grid import blocks
from crumple.params import Params, buffers_of, cast
from crumple.plane import Plane

LossFn = Callable[[Tensor, Tensor], Tensor]
STRATEGIES = ("auto", "vmap", "loop")
WORKING_SET = 2**23  # elements of activations per tile: small enough to stay in cache
DEFAULT_MAX_MEMORY = 2 * 2**30
CACHE_SHARE = 4  # expanded-layer products may use 1/CACHE_SHARE of max_memory
EXPAND_FAN_IN = 128  # inputs per output below which a layer is cheaper than its expansion
LINEAR_IN_WEIGHTS = frozenset({F.linear, F.conv1d, F.conv2d, F.conv3d})


def prepared(model: nn.Module, data: Any, plane: Plane, device=None, dtype=None):
    """The data batches, the plane and the model's buffers, moved and cast once for a run."""
    batches = as_batches(data, device=device, dtype=dtype)
    buffers = {n: cast(b, device, dtype) for n, b in buffers_of(model).items()}
    return batches, plane.to(device, dtype), buffers


class _Kernels(TorchFunctionMode):
    """Rewrites layer calls during evaluation; the numbers stay those of the plain call.

    * A linear or convolution layer whose input is the batch itself (or a view of it, as
      after a flatten) and whose weight (and bias) are plane parameters is expanded in the
      plane directions, with the per-direction products cached per batch (see the module
      docstring).
    * ``F.linear`` with one input feature is a broadcast product: vmap would make it a
      batched matmul of inner size 1, about 3x slower.

    It also notes which parameters other calls read (``reads``) and which expanded layers
    stand in for (``expanded``): the rest of these, ``elidable``, the loop need not combine.
    """

    def __init__(self, plane: Plane | None, cache_budget: int) -> None:
        super().__init__()
        self.plane = plane
        self.cache_budget = cache_budget
        # (batch, layer call) -> (input layout, base, products, the current row's partial sum)
        self.cache: dict[tuple, tuple] = {}
        self.cache_bytes = 0
        self.batch = 0
        self.names: dict[int, str] = {}
        self.point: Sequence[Any] = ()
        self.calls = 0
        self.expanded: set[str] = set()
        self.reads: set[str] = set()
        self.elided: frozenset[str] = frozenset()

    @property
    def elidable(self) -> frozenset[str]:
        """Parameters that only expanded layers have read so far."""
        return frozenset(self.expanded - self.reads)

    def start(
        self,
        batch: int,
        x: Tensor,
        params: Params,
        point: Sequence[Any],
        on_plane: bool,
        elided: frozenset[str] = frozenset(),
    ) -> None:
        """Called at the start of each forward pass; ``on_plane`` says that ``params`` is
        ``plane.at(*point)``, which the expansion needs, except for the ``elided`` names,
        which hold the origin's values."""
        self.batch = batch
        self.input_ptr = x.untyped_storage().data_ptr()
        self.names = {id(t): n for n, t in params.items()} if on_plane and self.plane else {}
        self.point = point
        self.calls = 0
        self.elided = elided

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in LINEAR_IN_WEIGHTS and self.names:
            out = self._expanded(func, args, kwargs)
            if out is not None:
                return out
        if self.names:
            self._note_reads(args)
            self._note_reads(kwargs.values())
        if func is F.linear:
            x, weight, *rest = args
            bias = rest[0] if rest else kwargs.get("bias")
            if weight.dim() == 2 and weight.shape[1] == 1 and x.shape[-1] == 1:
                out = x * weight.T
                return out if bias is None else out + bias
        return func(*args, **kwargs)

    def _expanded(self, func, args, kwargs):
        x, weight, *rest = args
        bias = rest[0] if rest else kwargs.get("bias")
        w_name = self.names.get(id(weight))
        b_name = self.names.get(id(bias)) if bias is not None else None
        if (
            w_name is None
            or (bias is not None and b_name is None)
            or weight.numel() < EXPAND_FAN_IN * weight.shape[0]
            or not self._is_input(x)
        ):
            return None
        self.calls += 1
        self.expanded.update(n for n in (w_name, b_name) if n is not None)
        layout = (x.shape, x.stride(), x.storage_offset())
        hit = self.cache.get((self.batch, w_name, b_name, self.calls))
        if hit is None or hit[0] != layout:
            hit = self._products(func, x, layout, w_name, b_name, rest[1:], kwargs)
        base, products, row = hit[1], hit[2], hit[3]
        terms = [(c, p) for c, p in zip(self.point, products) if p is not None]
        if terms and all(isinstance(c, float) for c, _ in terms):  # one point at a time
            *row_terms, (last, product) = terms
            key = tuple(c for c, _ in row_terms)
            if row.get("key") != key:  # the row's part is shared by its points
                partial = base
                for c, p in row_terms:
                    partial = torch.add(partial, p, alpha=c)
                row.update(key=key, partial=partial)
            return torch.add(row["partial"], product, alpha=last)
        out = base
        for c, p in terms:
            out = torch.addcmul(out, c, p)
        return out

    def _note_reads(self, items: Iterable[Any]) -> None:
        for item in items:
            if isinstance(item, (list, tuple)):
                self._note_reads(item)
            elif isinstance(item, dict):
                self._note_reads(item.values())
            elif (name := self.names.get(id(item))) is not None:
                self.reads.add(name)
                if name in self.elided:
                    raise _ElidedRead(name)

    def _is_input(self, x: Tensor) -> bool:
        """Whether ``x`` is the batch itself or a view of it (so not a function of the
        plane coordinates)."""
        return not is_batchedtensor(x) and x.untyped_storage().data_ptr() == self.input_ptr

    def _products(self, func, x, layout, w_name, b_name, more_args, kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k != "bias"}

        def call(params: Params):
            bias = params[b_name] if b_name is not None else None
            return func(x, params[w_name], bias, *more_args, **kwargs)

        base = call(self.plane.origin)
        products = [
            call(d) if w_name in touched or b_name in touched else None
            for d, touched in zip(self.plane.directions, self.plane.touched)
        ]
        entry = (layout, base, products, {})
        kept = [base, *(p for p in products if p is not None)]
        size = sum(t.numel() * t.element_size() for t in kept)
        if self.cache_bytes + size <= self.cache_budget:
            self.cache[(self.batch, w_name, b_name, self.calls)] = entry
            self.cache_bytes += size
        return entry


class _ElidedRead(Exception):
    """A call other than an expanded layer read a parameter left at the origin."""


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


_ALLOCATOR_SETTLED = [False]


def settle_allocator() -> None:
    """Allocate and free one 32 MiB block, once per process.

    glibc's malloc serves blocks above an adaptive threshold with mmap and returns freed
    memory to the system past another; freeing a block raises both, up to 32 MiB and 64 MiB.
    Without this, the megabyte-sized tensors of each forward pass are mapped and faulted in
    again at every grid point (measured on the MLP benchmark: 4x more page faults, 18% more
    time). The process may then keep up to 64 MiB of freed memory for reuse.
    """
    if not _ALLOCATOR_SETTLED[0]:
        _ALLOCATOR_SETTLED[0] = True
        block = torch.empty((32 * 2**20 - 2**16) // 4, dtype=torch.float32)
        del block


def probe(model: nn.Module, params: Params, buffers: Params, x: Tensor) -> int:
    """Run the model twice on a few samples: refuse a model whose output changes between the
    two passes, naming the first module that differs, and return the number of activation
    elements per sample (the sum over all module outputs)."""
    passes: list[list[tuple[str, Tensor]]] = [[], []]
    names = {m: n or type(model).__name__ for n, m in model.named_modules()}

    def hook_for(k: int):
        def hook(module, inputs, output):
            if isinstance(output, Tensor):
                passes[k].append((names[module], output.detach().clone()))

        return hook

    for k in range(2):
        handles = [m.register_forward_hook(hook_for(k)) for m in model.modules()]
        try:
            functional_call(model, (params, buffers), (x,))
        finally:
            for handle in handles:
                handle.remove()
    for (name, first), (_, second) in zip(*passes):
        if first.shape != second.shape or not torch.equal(first, second):
            raise CrumpleError(
                f"the model's output changes between two passes on the same data, first at "
                f"module {name!r}; a landscape needs a deterministic loss. Random layers "
                "(dropout, noise) must be off in eval mode: check that this module honours "
                "self.training"
            )
    return max(1, sum(t.numel() for _, t in passes[0]) // len(x))


class Evaluator:
    """Loss and metrics (each a batch mean) as exact dataset means at many points.

    Args:
        model: the model, already in eval mode without gradients
            (``params.evaluation_mode``).
        fns: name -> ``fn(pred, y)`` returning a batch mean; ``"loss"`` first.
        batches: the data, on the device and in the dtype of the computation.
        buffers: the model's buffers, likewise.
        reference: a full set of parameters to probe the model with.
        plane: the plane being evaluated, for the layer expansion (or ``None``).
        strategy: ``"auto"``, ``"vmap"`` or ``"loop"``.
        max_memory: bytes the points of one call and the cached layer products may take.
        batch_size: samples per forward pass (default: cache-sized, within ``max_memory``).
        points_per_call: points vmap evaluates together (default: as many as keep their
            activations cache-sized and within ``max_memory``); more are split into blocks.
    """

    def __init__(
        self,
        model: nn.Module,
        fns: Mapping[str, LossFn],
        batches: Sequence[Batch],
        buffers: Params,
        reference: Params,
        *,
        plane: Plane | None = None,
        strategy: str = "auto",
        max_memory: int = DEFAULT_MAX_MEMORY,
        batch_size: int | None = None,
        points_per_call: int | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise CrumpleError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.model, self.fns, self.buffers = model, dict(fns), buffers
        self.strategy = strategy
        self.seconds_per_point: float | None = None  # as timed by the "auto" choice
        self.n_samples = number_of_samples(batches)
        self.kernels = _Kernels(plane, max_memory // CACHE_SHARE)
        settle_allocator()
        activations = probe(model, reference, buffers, batches[0][0][:8])  # per sample
        element = next(iter(reference.values())).element_size()
        working_bytes = max_memory - max_memory // CACHE_SHARE
        # batches whose activations stay cache-sized and within the budget
        self.batch_size = batch_size or max(
            1, min(WORKING_SET // activations, working_bytes // (3 * activations * element))
        )
        self.batches = rebatched(batches, self.batch_size)
        largest = max(len(x) for x, _ in self.batches)
        numel = sum(t.numel() for t in reference.values())
        point_bytes = element * (3 * activations * largest + numel)
        self.points_per_call = points_per_call or max(
            1, min(WORKING_SET // (activations * largest), working_bytes // point_bytes)
        )

    def __call__(
        self,
        params_at: Callable[..., Params],
        args: Sequence[Any],
        levels: Sequence[int],
        first_block: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Evaluate at every point ``params_at(*args)`` maps out; result axes follow ``levels``:
        arguments with the same level are zipped, each level is one axis. Under vmap, more
        than ``points_per_call`` points are taken in blocks of that size; ``first_block``
        gives the first block's values, already computed."""
        shape = _grid_shape(args, levels)
        many = self.strategy != "loop" and math.prod(shape) > self.points_per_call
        if many or first_block is not None:
            out: dict[str, Tensor] = {}
            for n, block in enumerate(blocks(tuple(shape), self.points_per_call)):
                if n == 0 and first_block is not None:
                    values = first_block
                else:
                    values = self(
                        params_at, [_take(a, block[lv]) for a, lv in zip(args, levels)], levels
                    )
                for name, v in values.items():
                    if name not in out:
                        out[name] = torch.empty(shape, dtype=torch.float64, device=v.device)
                    out[name][block] = v
            return out
        if self.strategy == "auto":
            return self._choose(params_at, args, levels)
        if self.strategy == "vmap":
            try:
                return self._run(True, params_at, args, levels)
            except CrumpleError:
                raise
            except Exception as e:  # vmap cannot trace this model
                warnings.warn(
                    f"torch.func.vmap cannot evaluate this model ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200]}); crumple falls back to evaluating one "
                    "point at a time, which gives the same numbers more slowly",
                    stacklevel=3,
                )
                self.strategy = "loop"
        return self._run(False, params_at, args, levels)

    def _choose(self, params_at, args, levels):
        """Time vmap on this call and the loop on a few of its points, each after a one-point
        warm-up (which also fills the layer cache); keep the faster."""
        one = [_take(a, slice(0, 1)) for a in args]
        self.strategy = "vmap"
        self(params_at, one, levels)
        if self.strategy == "loop":  # vmap failed and fell back
            return self._run(False, params_at, args, levels)
        self._run(False, params_at, one, levels)
        start = time.perf_counter()
        out = self._run(True, params_at, args, levels)
        vmap_per_point = (time.perf_counter() - start) / _points(args, levels)
        few = [_take(a, slice(0, 2)) for a in args]
        start = time.perf_counter()
        self._run(False, params_at, few, levels)
        loop_per_point = (time.perf_counter() - start) / _points(few, levels)
        self.strategy = "loop" if loop_per_point < vmap_per_point else "vmap"
        self.seconds_per_point = min(loop_per_point, vmap_per_point)
        return out

    def _run(self, batched: bool, params_at, args, levels) -> dict[str, Tensor]:
        plane = self.kernels.plane
        on_plane = plane is not None and params_at == plane.at
        sums: dict[str, Tensor] = {}
        with self.kernels:
            for b, (x, y) in enumerate(self.batches):

                def predict(x: Tensor, params: Params, point: Sequence[Any], elided=(), b=b):
                    self.kernels.start(b, x, params, point, on_plane, frozenset(elided))
                    try:
                        preds = functional_call(self.model, (params, self.buffers), (x,))
                    finally:
                        self.kernels.names = {}  # reads count only inside the forward pass
                    _check_prediction(preds)
                    return preds

                if batched:
                    values = self._batched(predict, params_at, x, y, args, levels)
                else:
                    rows = plane if on_plane and list(levels) == [0, 1] else None
                    values = self._looped(predict, params_at, x, y, args, levels, rows)
                for name, v in values.items():
                    weighted = v * len(x)
                    sums[name] = weighted if name not in sums else sums[name] + weighted
        return {name: total / self.n_samples for name, total in sums.items()}

    def _batched(self, predict, params_at, x, y, args, levels):
        def at_point(x: Tensor, *point: Any) -> Tensor:
            return predict(x, params_at(*point), point)

        preds = nested_vmap(at_point, [None, *levels])(x, *args)
        depth = max(levels) + 1
        grid_shape = preds.shape[:depth]
        flat = preds.reshape(-1, *preds.shape[depth:])
        out = {}
        for name, fn in self.fns.items():
            values = vmap(fn, in_dims=(0, None))(flat, y)
            if values.shape != flat.shape[:1]:
                raise _not_a_mean(name, values.shape[1:])
            out[name] = values.reshape(grid_shape)
        return out

    def _looped(self, predict, params_at, x, y, args, levels, rows: Plane | None):
        """One point at a time, with coordinates as Python numbers; on a product grid of
        ``rows``, each row's partial weights ``origin + a * directions[0]`` are made once,
        leaving out the parameters only expanded layers read."""
        shape = _grid_shape(args, levels)
        out = {name: torch.empty(shape, dtype=torch.float64) for name in self.fns}
        row, row_key = None, None
        for index in itertools.product(*map(range, shape)):
            point = [
                float(a[index[lv]])
                if isinstance(a, Tensor)
                else tree_map(lambda t, i=index[lv]: t[i], a)
                for a, lv in zip(args, levels)
            ]
            while True:
                if rows is None:
                    elided, params = frozenset(), params_at(*point)
                else:
                    elided = self.kernels.elidable
                    if row_key != (index[0], elided):
                        row = rows.shifted(rows.origin, 0, point[0], skip=elided)
                        row_key = (index[0], elided)
                    params = rows.shifted(row, 1, point[1], skip=elided)
                try:
                    preds = predict(x, params, point, elided)
                    break
                except _ElidedRead:  # now in kernels.reads: combined from here on
                    continue
            for name, fn in self.fns.items():
                value = fn(preds, y)
                if value.dim() != 0:
                    raise _not_a_mean(name, value.shape)
                out[name][index] = value.double()
        return {name: v.to(preds.device) for name, v in out.items()}


def _check_prediction(preds) -> None:
    if not isinstance(preds, Tensor):
        raise CrumpleError(
            f"the model returned {type(preds).__name__}; crumple needs a tensor of "
            "predictions (wrap the model so that forward returns one)"
        )


def _not_a_mean(name: str, shape) -> CrumpleError:
    return CrumpleError(
        f"{name} function returned shape {tuple(shape)} per point; "
        "it must return the batch mean as a scalar (reduction='mean')"
    )


def _length(arg) -> int:
    return len(arg) if isinstance(arg, Tensor) else len(next(iter(arg.values())))


def _take(arg, part: slice):
    return tree_map(lambda t: t[part], arg)


def _grid_shape(args, levels) -> list[int]:
    """Points along each level: arguments on the same level are zipped."""
    shape = [0] * (max(levels) + 1)
    for arg, level in zip(args, levels):
        shape[level] = _length(arg)
    return shape


def _points(args, levels) -> int:
    return math.prod(_grid_shape(args, levels))


def reference_losses(
    model: nn.Module,
    fns: Mapping[str, LossFn],
    batches: Sequence[Batch],
    points: Iterable[Params],
    dtype: torch.dtype | None = None,
) -> dict[str, list[float]]:
    """The slow ground truth: copy the model, load each point's weights, run every batch.

    Example:
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> data = [(torch.ones(2, 1), torch.zeros(2, 1))]
        >>> reference_losses(net, {"loss": F.mse_loss}, data, [{"weight": torch.full((1, 1), 3.0)}])
        {'loss': [9.0]}
    """
    copy_ = copy.deepcopy(model).to(dtype=dtype).eval()
    out: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for point in points:
            for name, p in copy_.named_parameters():
                p.copy_(point[name])
            for name, fn in fns.items():
                total = sum(float(fn(copy_(x), y)) * len(x) for x, y in batches)
                out[name].append(total / number_of_samples(batches))
    return out
