"""Loss and metrics at many points of weight space at once, and the plain loop they are
checked against.

The fast path calls the model with ``torch.func.functional_call`` under nested
``torch.func.vmap``: one vmap level per plane axis. A parameter that a direction does not
move is not batched along that axis, so whatever the network computes from such
parameters alone (a prefix of layers, say) is computed once per row, not once per point.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

from crumple.errors import CrumpleError
from crumple.params import Params, buffers_of, cast
from crumple.plane import Plane

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def as_batches(data: Any, *, device=None, dtype: torch.dtype | None = None) -> list[Batch]:
    """Normalise ``data`` to a list of ``(x, y)`` tensor pairs on ``device``.

    ``data`` is one ``(x, y)`` pair of tensors, a DataLoader, or any iterable of pairs.
    Floating-point tensors are cast to ``dtype`` when given.

    Example:
        >>> x, y = torch.zeros(4, 1), torch.zeros(4, 1)
        >>> [b[0].shape[0] for b in as_batches((x, y))]
        [4]
    """
    if _is_pair(data):
        pairs = [data]
    else:
        try:
            pairs = list(data)
        except TypeError:
            raise TypeError(
                f"data must be an (x, y) pair of tensors, a DataLoader or an iterable of "
                f"(x, y) batches; got {type(data).__name__}"
            ) from None
    batches = []
    for k, pair in enumerate(pairs):
        if not _is_pair(pair):
            raise CrumpleError(
                f"batch {k} of data is {type(pair).__name__}, not an (x, y) pair of tensors; "
                "make the loader yield (inputs, targets)"
            )
        x, y = pair
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise CrumpleError(
                f"batch {k} has {x.shape[0]} inputs and {y.shape[0]} targets; "
                "each batch needs the same, non-zero number of both"
            )
        batches.append(tuple(cast(t, device, dtype) for t in pair))
    if not batches:
        raise CrumpleError("data holds no batches; pass at least one (x, y) pair")
    return batches


def _is_pair(obj: Any) -> bool:
    return (
        isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, Tensor) for t in obj)
    )


def prepared(model: nn.Module, data: Any, plane: Plane, device=None, dtype=None):
    """The data batches, the plane and the model's buffers, moved and cast once for a run."""
    batches = as_batches(data, device=device, dtype=dtype)
    buffers = {n: cast(b, device, dtype) for n, b in buffers_of(model).items()}
    return batches, plane.to(device, dtype), buffers


def number_of_samples(batches: Sequence[Batch]) -> int:
    return sum(len(x) for x, _ in batches)


class _OneInputLinearAsProduct(TorchFunctionMode):
    """Computes ``F.linear`` with one input feature as a broadcast product.

    Under vmap a linear layer with batched weights becomes a batched matmul; with one
    input feature each of its products has inner size 1, which runs about 3x slower
    than the elementwise product that gives the same numbers.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, *rest = args
            bias = rest[0] if rest else kwargs.get("bias")
            if weight.dim() == 2 and weight.shape[1] == 1 and x.shape[-1] == 1:
                out = x * weight.T
                return out if bias is None else out + bias
        return func(*args, **kwargs)


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


WORKING_SET = 2**23  # elements of activations per tile: small enough to stay in cache


def auto_chunk_size(
    model: nn.Module, batches: Sequence[Batch], params: Params, buffers: Params
) -> int:
    """Grid points per tile such that one tile's activations hold about ``WORKING_SET``
    elements: the model is run on one sample and the outputs of its modules are counted."""
    counted = []

    def count(module, inputs, output):
        if isinstance(output, Tensor):
            counted.append(output.numel())

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    try:
        functional_call(model, (params, buffers), (batches[0][0][:1],))
    finally:
        for hook in hooks:
            hook.remove()
    per_point = max(sum(counted), 1) * max(len(x) for x, _ in batches)
    return max(1, WORKING_SET // per_point)


def batched_losses(
    model: nn.Module,
    fns: Mapping[str, LossFn],
    batches: Sequence[Batch],
    params_at: Callable[..., Params],
    args: Sequence[Any],
    levels: Sequence[int],
    buffers: Params,
) -> dict[str, Tensor]:
    """Each of ``fns`` (loss and metrics, each a batch mean) as the exact dataset mean, at
    every point ``params_at(*args)`` maps out; result axes follow ``levels``.

    The model must be in eval mode and gradients off (see ``params.evaluation_mode``).
    """

    def predict(x: Tensor, *point: Any) -> Tensor:
        return functional_call(model, (params_at(*point), buffers), (x,))

    forward = nested_vmap(predict, [None, *levels])
    depth = max(levels) + 1
    sums: dict[str, Tensor] = {}
    with _OneInputLinearAsProduct():
        for x, y in batches:
            preds = forward(x, *args)
            if not isinstance(preds, Tensor):
                raise CrumpleError(
                    f"the model returned {type(preds).__name__}; crumple needs a tensor of "
                    "predictions (wrap the model so that forward returns one)"
                )
            grid_shape = preds.shape[:depth]
            flat = preds.reshape(-1, *preds.shape[depth:])
            for name, fn in fns.items():
                values = vmap(fn, in_dims=(0, None))(flat, y)
                if values.shape != flat.shape[:1]:
                    raise CrumpleError(
                        f"{name} function returned shape {tuple(values.shape[1:])} per point; "
                        "it must return the batch mean as a scalar (reduction='mean')"
                    )
                weighted = values.reshape(grid_shape) * len(x)
                sums[name] = weighted if name not in sums else sums[name] + weighted
    n = number_of_samples(batches)
    return {name: total / n for name, total in sums.items()}


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
