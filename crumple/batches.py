"""What a batch is and how the data is held: ``(x, y)`` pairs, normalised once, and the same
samples re-batched to another size (the dataset mean does not depend on the batching)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from crumple.errors import CrumpleError, CrumpleTypeError, user_code
from crumple.params import cast

Batch = tuple[Tensor, Tensor]


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
            batches_of = iter(data)
        except TypeError:
            raise CrumpleTypeError(
                f"data must be an (x, y) pair of tensors, a DataLoader or an iterable of "
                f"(x, y) batches; got {type(data).__name__}"
            ) from None
        with user_code("iterating the data"):
            pairs = list(batches_of)
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


def rebatched(batches: Sequence[Batch], size: int) -> list[Batch]:
    """The same samples in the same order, in batches of ``size`` (the last of a run of
    matching batches may be smaller): small batches are concatenated, large ones split.
    The dataset mean does not depend on the batching.

    Example:
        >>> batches = [(torch.zeros(3, 2), torch.zeros(3))] * 5
        >>> [len(x) for x, _ in rebatched(batches, 4)]
        [4, 4, 4, 3]
    """
    out: list[Batch] = []
    pending: list[Batch] = []

    def flush(keep_partial: bool) -> None:
        if not pending:
            return
        x, y = (torch.cat(parts) if len(parts) > 1 else parts[0] for parts in zip(*pending))
        pieces = list(zip(x.split(size), y.split(size)))
        pending.clear()
        if keep_partial and len(pieces[-1][0]) < size:
            pending.append(pieces.pop())
        out.extend(pieces)

    for x, y in batches:
        if pending and not all(
            a.shape[1:] == b.shape[1:] and a.dtype == b.dtype and a.device == b.device
            for a, b in zip(pending[0], (x, y))
        ):
            flush(keep_partial=False)
        pending.append((x, y))
        if sum(len(b[0]) for b in pending) >= size:
            flush(keep_partial=True)
    flush(keep_partial=False)
    return out


def number_of_samples(batches: Sequence[Batch]) -> int:
    return sum(len(x) for x, _ in batches)
