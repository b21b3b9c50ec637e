"""What a batch is and how the data is held.

A batch is an ``(x, y)`` pair, a longer tuple ``(x1, ..., xk, y)`` (the model is called with
all but the last) or a dict as Hugging Face tokenizers and datasets give them (the model is
called with every key but ``"labels"``, which is the target). :class:`Batch` holds one in
that form. :func:`load` reads the data once: it is held in memory when it fits the budget,
and otherwise read afresh from the user's loader for each pass (:class:`Data`). The same
samples can be re-batched to another size (:func:`rebatched`), in memory or streamed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from crumple.errors import CrumpleError, CrumpleTypeError, user_code
from crumple.params import cast

TARGET_KEY = "labels"  # the target of a dict batch, as in Hugging Face


@dataclass(frozen=True)
class Batch:
    """One batch: the model's inputs and the target the functions compare with.

    Example:
        >>> b = Batch.of({"input_ids": torch.zeros(2, 5), "labels": torch.ones(2, 5)})
        >>> b.size, list(b.kwargs), b.target.shape
        (2, ['input_ids'], torch.Size([2, 5]))
    """

    args: tuple[Tensor, ...]
    kwargs: dict[str, Tensor]
    target: Tensor | None
    from_dict: bool = False  # the target is kwargs' "labels" when passed to the model
    size: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", len(self.parts()[0]))

    @classmethod
    def of(cls, raw: Any, k: int = 0) -> Batch:
        """A batch from what the data yields (``k``: its place, for messages)."""
        if isinstance(raw, Batch):
            return raw
        if isinstance(raw, Mapping):
            items = dict(raw)
            target = items.pop(TARGET_KEY, None)
            batch = cls((), items, target, from_dict=True)
        elif isinstance(raw, (tuple, list)) and len(raw) >= 2:
            batch = cls(tuple(raw[:-1]), {}, raw[-1])
        else:
            raise CrumpleError(
                f"batch {k} of data is {type(raw).__name__}; a batch is an (x, y) pair of "
                "tensors, a longer tuple (x1, ..., y) or a dict such as a tokenizer gives "
                "(input_ids, attention_mask, labels)"
            )
        batch._check(k)
        return batch

    def _check(self, k: int) -> None:
        for name, t in self.named_parts():
            if not isinstance(t, Tensor):
                raise CrumpleError(
                    f"batch {k}'s {name} is {type(t).__name__}, not a tensor; crumple passes "
                    "tensors to the model (drop other columns, e.g. dataset.remove_columns)"
                )
            if t.dim() == 0 or len(t) != self.size or self.size == 0:
                raise CrumpleError(
                    f"batch {k}'s {name} has shape {tuple(t.shape)} but the batch has "
                    f"{self.size} rows; every tensor of a batch needs the same, non-zero "
                    "number of rows (samples) along its first dimension"
                )
        check_finite(self, k)

    def named_parts(self) -> list[tuple[str, Tensor]]:
        """Every tensor with its name (``x``/``x1``..., the dict keys, ``y``/``labels``)."""
        named = [(f"x{i + 1}" if len(self.args) > 1 else "x", t) for i, t in enumerate(self.args)]
        named += list(self.kwargs.items())
        if self.target is not None:
            named.append((TARGET_KEY if self.from_dict else "y", self.target))
        return named

    def parts(self) -> list[Tensor]:
        return [t for _, t in self.named_parts()]

    def with_parts(self, parts: list[Tensor]) -> Batch:
        """The same structure holding ``parts`` (in the order of :meth:`parts`)."""
        n = len(self.args)
        kwargs = dict(zip(self.kwargs, parts[n : n + len(self.kwargs)]))
        target = parts[-1] if self.target is not None else None
        return Batch(tuple(parts[:n]), kwargs, target, self.from_dict)

    def map(self, fn) -> Batch:
        return self.with_parts([fn(t) for t in self.parts()])

    def rows(self, index: slice) -> Batch:
        return self.map(lambda t: t[index])

    @property
    def first(self) -> Tensor:
        """The first input tensor (the probes' and the layer expansion's ``x``)."""
        return self.parts()[0]

    def inputs(self, with_target: bool = False) -> tuple[tuple, dict]:
        """``(args, kwargs)`` to call the model with; ``with_target`` passes the target too
        (for a model that computes its own loss)."""
        if not with_target or self.target is None:
            return self.args, self.kwargs
        if self.from_dict:
            return self.args, {**self.kwargs, TARGET_KEY: self.target}
        return (*self.args, self.target), self.kwargs

    def layout(self) -> tuple:
        """What must match for two batches to be concatenated."""
        return tuple((n, t.shape[1:], t.dtype, t.device) for n, t in self.named_parts())


def check_finite(batch: Batch, k: int = 0) -> None:
    """Refuse a batch whose floating-point tensors hold nan or inf, naming the batch (``k``),
    the sample and the tensor: such data makes the loss nan, whatever the weights.

    Example:
        >>> x = torch.zeros(3, 2)
        >>> x[1, 0] = float("nan")
        >>> check_finite(Batch((x,), {}, torch.zeros(3)), k=4)
        Traceback (most recent call last):
        crumple.errors.CrumpleError: batch 4, sample 1 of the data's x holds nan; ...
    """
    for name, t in batch.named_parts():
        if not (t.is_floating_point() or t.is_complex()):
            continue
        bad = ~torch.isfinite(t.reshape(len(t), -1))
        if not bool(bad.any()):
            continue
        row = int(bad.any(1).nonzero()[0])
        value = t.reshape(len(t), -1)[row][bad[row]][0].item()
        raise CrumpleError(
            f"batch {k}, sample {row} of the data's {name} holds {value}; data with nan or inf "
            "makes the loss nan whatever the weights. Drop or fill those samples (e.g. "
            "torch.nan_to_num, or a dataset filter) before passing the data"
        )


def load(data: Any, budget: int | None = None, stream: bool | None = None) -> Data:
    """Read ``data`` once: held in memory if its tensors take at most ``budget`` bytes (or
    ``stream=False``), else (or with ``stream=True``) read afresh for each pass.

    ``data`` is one ``(x, y)`` pair of tensors, one dict batch, a DataLoader or any iterable
    of batches.

    Example:
        >>> x, y = torch.zeros(4, 1), torch.zeros(4, 1)
        >>> [b.size for b in load((x, y))]
        [4]
    """
    if isinstance(data, Data):
        return data
    if _is_single(data):
        return Data([Batch.of(data)])
    try:
        iterator = iter(data)
    except TypeError:
        raise CrumpleTypeError(
            f"data must be an (x, y) pair of tensors, a DataLoader or an iterable of "
            f"batches ((x, y) pairs, tuples or dicts); got {type(data).__name__}"
        ) from None
    held, size = [], 0
    with user_code("iterating the data"):
        for k, raw in enumerate(iterator):
            held.append(Batch.of(raw, k))
            size += sum(t.numel() * t.element_size() for t in held[-1].parts())
            if stream or (stream is None and budget is not None and size > budget):
                return _streamed(data, iterator, held[0], size, budget)
    if not held:
        raise CrumpleError("data holds no batches; pass at least one (x, y) pair")
    return Data(held)


def inputs_only(data: Any) -> list[Batch]:
    """Batches whose inputs alone are used (BatchNorm recalibration): ``data`` as for
    :func:`load`, or tensors of inputs (one, or an iterable of them).

    Example:
        >>> [b.size for b in inputs_only(torch.zeros(5, 2))]
        [5]
    """
    if isinstance(data, Tensor):
        data = [data]
    elif _is_single(data):
        return list(load(data))
    try:
        items = list(data)
    except TypeError:
        raise CrumpleTypeError(
            f"recalibrate must be a DataLoader, an iterable of batches or of input tensors, "
            f"or one tensor; got {type(data).__name__}"
        ) from None
    if not items:
        raise CrumpleError("recalibrate holds no batches; pass at least one batch of inputs")
    return [
        Batch((b,), {}, None) if isinstance(b, Tensor) else Batch.of(b, k)
        for k, b in enumerate(items)
    ]


def _streamed(data, iterator, first: Batch, size: int, budget) -> Data:
    if iterator is data:
        raise CrumpleError(
            f"the data takes more than the memory budget ({size / 2**20:.3g} MiB read, budget "
            f"{(budget or 0) / 2**20:.3g} MiB) and can be read only once (it is an iterator); "
            "pass a DataLoader or another iterable that can be read again, or raise max_memory"
        )
    return Data(None, source=data, first=first)


def _is_single(obj: Any) -> bool:
    if isinstance(obj, Mapping):
        return True
    return (
        isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, Tensor) for t in obj)
    )


class Data:
    """The evaluation data: batches held in memory, or the user's loader read afresh for
    each pass (``streamed``), either way normalised to :class:`Batch` on a device and dtype.

    Example:
        >>> data = load([(torch.zeros(3, 2), torch.zeros(3))] * 2)
        >>> data.streamed, data.n_samples, [b.size for b in data.rebatched(4)]
        (False, 6, [4, 2])
    """

    def __init__(self, held: list[Batch] | None, source: Iterable | None = None, first=None):
        self.held, self.source = held, source
        self.first = held[0] if held else first
        self.device = self.dtype = None
        self.batch_size: int | None = None
        self.n_samples = sum(b.size for b in held) if held else None
        self.passes = Passes()  # streamed: each whole pass compared with the first

    @property
    def streamed(self) -> bool:
        return self.held is None

    def to(self, device=None, dtype: torch.dtype | None = None) -> Data:
        """The same data on ``device``, floating-point tensors in ``dtype`` (held data is
        moved now, streamed data batch by batch as it is read)."""
        out = Data(self.held, self.source, self.first)
        out.device, out.dtype, out.n_samples = device, dtype, self.n_samples
        out.passes = self.passes
        out.first = _moved(self.first, device, dtype)
        if self.held is not None:
            out.held = [_moved(b, device, dtype) for b in self.held]
        return out

    def rebatched(self, size: int | None) -> Data:
        """The same samples in batches of ``size`` (``None``: as given)."""
        out = self.to(self.device, self.dtype)
        out.batch_size = size
        if size is not None and out.held is not None:
            out.held = list(rebatched(out.held, size))
        return out

    def __iter__(self) -> Iterator[Batch]:
        if self.held is not None:
            yield from self.held
            return
        hashes: list[bytes] = []
        batches = self._read(hashes)
        if self.batch_size is not None:
            batches = rebatched(batches, self.batch_size)
        count = 0
        for batch in batches:
            count += batch.size
            yield batch
        self.passes.check(count, order_free_digest(hashes))
        self.n_samples = count

    def _read(self, hashes: list[bytes]) -> Iterator[Batch]:
        with user_code("iterating the data"):
            for k, raw in enumerate(self.source):
                batch = Batch.of(raw, k)
                hashes += sample_hashes(batch)
                yield _moved(batch, self.device, self.dtype)


class Passes:
    """The passes over streamed data: each whole pass must read the same samples as the
    first (their count and :func:`order_free_digest`), else a surface would mix data.

    Example:
        >>> passes = Passes()
        >>> passes.check(6, "samples:ab"); passes.check(6, "samples:ab"); passes.count
        2
        >>> passes.check(5, "samples:cd")
        Traceback (most recent call last):
        crumple.errors.CrumpleError: the streamed data changed between passes: ...
    """

    def __init__(self) -> None:
        self.first: tuple[int, str] | None = None
        self.count = 0

    def check(self, n_samples: int, digest: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = (n_samples, digest)
            return
        if (n_samples, digest) == self.first:
            return
        change = (
            f"the first pass read {self.first[0]} samples, pass {self.count} read {n_samples}"
            if n_samples != self.first[0]
            else f"pass {self.count} read {n_samples} samples as the first did, but other ones"
        )
        raise CrumpleError(
            f"the streamed data changed between passes: {change}. Streamed data (stream=True, "
            "or data over the memory budget) is read afresh for each block of points, so data "
            "that changes would make a patchwork of different data. A DataLoader with "
            "shuffle=True and drop_last=True drops other samples each pass: use "
            "drop_last=False; or give data that yields the same samples on every pass, or hold "
            "it in memory (stream=False, or a larger max_memory). data_id does not help: it "
            "names the data, the samples read still differ"
        )


def sample_hashes(batch: Batch) -> list[bytes]:
    """One hash per sample of ``batch``: the bytes of its row in every tensor, with the
    tensors' dtypes and shapes.

    Example:
        >>> b = Batch.of((torch.tensor([[1.0], [1.0]]), torch.tensor([0, 0])))
        >>> h = sample_hashes(b); len(h), h[0] == h[1]
        (2, True)
    """
    parts = [t.detach().cpu().contiguous() for t in batch.parts()]
    flat = [p.reshape(len(p), -1).view(torch.uint8).numpy() for p in parts]
    kinds = ";".join(f"{p.dtype}:{tuple(p.shape[1:])}" for p in parts).encode()
    hashes = []
    for i in range(len(flat[0])):
        h = hashlib.blake2b(kinds, digest_size=16)
        for f in flat:
            h.update(f[i].tobytes())
        hashes.append(h.digest())
    return hashes


def order_free_digest(hashes: list[bytes]) -> str:
    """A digest of samples' hashes that does not depend on their order (they are sorted).

    Example:
        >>> order_free_digest([b"a", b"b"]) == order_free_digest([b"b", b"a"])
        True
    """
    return "samples:" + hashlib.sha256(b"".join(sorted(hashes))).hexdigest()[:16]


def _moved(batch: Batch, device, dtype) -> Batch:
    return batch.map(lambda t: cast(t, device, dtype))


def rebatched(batches: Iterable[Batch], size: int) -> Iterator[Batch]:
    """The same samples in the same order, in batches of ``size`` (the last of a run of
    batches that can be concatenated may be smaller): small batches are concatenated,
    large ones split. Reads ``batches`` as it goes, so streamed data stays streamed.

    Example:
        >>> batches = [Batch.of((torch.zeros(3, 2), torch.zeros(3)))] * 5
        >>> [b.size for b in rebatched(batches, 4)]
        [4, 4, 4, 3]
    """
    pending: list[Batch] = []

    def flush(keep_partial: bool) -> Iterator[Batch]:
        if not pending:
            return
        parts = [torch.cat(p) if len(p) > 1 else p[0] for p in zip(*(b.parts() for b in pending))]
        whole = pending[0].with_parts(parts)
        pending.clear()
        starts = range(0, whole.size, size)
        pieces = [whole.rows(slice(s, s + size)) for s in starts]
        if keep_partial and pieces[-1].size < size:
            pending.append(pieces.pop())
        yield from pieces

    for batch in batches:
        if pending and pending[0].layout() != batch.layout():
            yield from flush(keep_partial=False)
        pending.append(batch)
        if sum(b.size for b in pending) >= size:
            yield from flush(keep_partial=True)
    yield from flush(keep_partial=False)
