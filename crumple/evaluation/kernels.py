"""Layer calls rewritten during evaluation, with the same numbers as the plain call.

A linear or convolution layer applied to the input batch itself (the first layer, say) is
expanded in the plane directions:
``f(x, W0 + a D1 + b D2) = f(x, W0) + a f(x, D1) + b f(x, D2)``, the three products
computed once per batch instead of once per point, for layers with a fan-in of at least
``EXPAND_FAN_IN`` (below that the combination costs more than the layer).

Private torch APIs relied on (``tests/test_kernels.py`` fails loudly when one changes):

* ``torch._C._functorch.is_batchedtensor``: tells a vmapped tensor (a function of the
  coordinates) from the plain input batch.
* ``torch.overrides.TorchFunctionMode`` (public, but its dispatch of ``F.linear`` and
  ``F.conv*`` to ``__torch_function__`` with ``func`` the functional itself is relied on).
* ``Tensor.untyped_storage().data_ptr()``: the input batch and its views share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._C._functorch import is_batchedtensor
from torch.overrides import TorchFunctionMode

from crumple.params import Params
from crumple.plane import Plane

EXPAND_FAN_IN = 128  # inputs per output below which a layer is cheaper than its expansion
LINEAR_IN_WEIGHTS = frozenset({F.linear, F.conv1d, F.conv2d, F.conv3d})


class Kernels(TorchFunctionMode):
    """Rewrites layer calls during evaluation; the numbers stay those of the plain call.

    * A linear or convolution layer whose input is the batch itself (or a view of it, as
      after a flatten) and whose weight (and bias) are plane parameters is expanded in the
      plane directions, with the per-direction products cached per batch.
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

    def forget(self) -> None:
        """Drop the cached products (streamed data: a batch is read afresh each pass)."""
        self.cache.clear()
        self.cache_bytes = 0

    def stop(self) -> None:
        self.names = {}  # reads count only inside the forward pass

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
                    raise ElidedRead(name)

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


class ElidedRead(Exception):
    """A call other than an expanded layer read a parameter left at the origin."""
