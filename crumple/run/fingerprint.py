"""What a run was made from: each input hashed on its own (weights, plane, grid, data, loss,
dtype, and the extras' options), so that a resumed run is checked part by part and a
mismatch can say which part differs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from crumple.batches import Batch, order_free_digest, sample_hashes
from crumple.grid import Grid
from crumple.plane import Plane


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
    plane_tensors = [(f"origin.{n}", t) for n, t in plane.origin.items()]
    for k, d in enumerate(plane.directions):
        plane_tensors += [(f"d{k}.{n}", t) for n, t in d.items()]
    data = data_id if data_id is not None else samples_digest(batches)
    return {
        "weights": weights_digest(model),
        "plane": _digest(plane_tensors),
        "grid": _digest((f"axis{k}", torch.from_numpy(a)) for k, a in enumerate(grid.axes)),
        "data": str(data),
        "loss": ", ".join(f"{name}={_qualified(fn)}" for name, fn in fns.items()),
        "dtype": str(dtype).removeprefix("torch."),
    }


def unmatched(
    previous: Mapping[str, str],
    fp: Mapping[str, str],
    ordered: Callable[[], str],
    parts: Iterable[str] | None = None,
) -> list[str]:
    """The parts of fingerprint ``fp`` that differ from a stored run's (``previous``): all,
    or those named in ``parts``. A run stored before data digests ignored the order of the
    samples is compared with ``ordered()``, the older digest.

    Example:
        >>> unmatched({"data": "samples:1", "dtype": "float32"}, {"data": "samples:1"}, str)
        ['dtype']
    """
    keys = list(parts) if parts is not None else [*fp, *(k for k in previous if k not in fp)]
    differs = [k for k in keys if previous.get(k) != fp.get(k)]
    older = "data" in differs and not str(previous.get("data")).startswith("samples:")
    if older and fp["data"].startswith("samples:") and previous.get("data") == ordered():
        differs.remove("data")
    return differs


def weights_digest(model) -> str:
    """The digest of a model's parameters and buffers, the fingerprint's ``weights``."""
    return _digest([*model.named_parameters(), *model.named_buffers()])


def samples_digest(batches) -> str:
    """A digest of the data's samples that does not depend on their order or batching (a
    shuffled loader fingerprints as the same data): each sample's bytes are hashed, and the
    sorted hashes are hashed again.

    Example:
        >>> x, y = torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 2])
        >>> from crumple.batches import load
        >>> shuffled = [(x[[2, 0]], y[[2, 0]]), (x[1:2], y[1:2])]
        >>> samples_digest(load((x, y))) == samples_digest(load(shuffled))
        True
    """
    return order_free_digest([h for batch in batches for h in sample_hashes(Batch.of(batch))])


def ordered_digest(batches) -> str:
    """The data digest of runs stored before :func:`samples_digest`: batch by batch."""
    return _digest(
        (f"{k}.{part}", t)
        for k, batch in enumerate(batches)
        for part, t in Batch.of(batch).named_parts()
    )


def _digest(tensors: Iterable[tuple[str, Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _qualified(fn: Callable | str) -> str:
    if isinstance(fn, str):
        return fn
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
