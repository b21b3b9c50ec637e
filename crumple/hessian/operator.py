"""Hessian-vector products of the exact mean loss over the data.

The loss is the one :func:`crumple.surface` draws: the exact mean over the data (batches
weighed by their samples, or target tokens for ``loss_fn="model"``), in eval mode, the
model untouched. A product is ``torch.func.vjp`` of ``torch.func.grad`` per batch, weighed
like the loss (forward-over-reverse, ``jvp`` of ``grad``, fails on ``F.mse_loss`` in
torch 2.13). Where the data is held and its graphs fit in memory, each batch's pullback is
kept, so that later products skip the forward pass and the first backward pass.

An operator is built once (the data read, the checks run) and passed to every estimator:
``eigen(H, k=5)``, ``trace(H)``, ``density(H)``, ``sharpness(H)``. The model-first calls
(``eigen(model, loss_fn, data, k=5)``) build one through :func:`operator_of`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, grad_and_value, vjp, vmap

from crumple import names
from crumple.batches import Batch, Data, load
from crumple.checks import check_model, named_functions
from crumple.errors import CrumpleError, CrumpleTypeError
from crumple.evaluation.probes import activations_per_sample, functional
from crumple.evaluation.settings import Settings
from crumple.hessian import guardrails
from crumple.losses import Objective
from crumple.params import Params, buffers_of, cast, evaluation_mode

# kept pullbacks hold at most about this many copies of the module outputs (measured on
# the CNN of benchmarks/general.py: 160 MiB kept for 256 MiB of outputs)
GRAPH_FACTOR = 1
VECTORS_PER_CALL = 8  # probe vectors one vmapped product takes, where that is faster


class Hessian:
    """The Hessian of the mean loss at the model's weights, as products with vectors.

    Args:
        model, loss_fn, data: as for :func:`crumple.surface`.
        parameters: the names of the trainable parameters to differentiate by (a diagonal
            block of the Hessian; the others stay fixed); default all of them.
        dtype, device: of the computation; default the model's.
        max_memory: bytes the operator may hold (default 2 GiB, as for
            :func:`crumple.surface`): the data is held while it takes at most half of it
            (else read afresh for each product), and each batch's pullback is kept while
            all of them take at most a quarter (``keep_graphs``).

    Built once, the operator serves every estimator (``eigen(H)``, ``trace(H)``,
    ``density(H)``, ``sharpness(H)``): the data is read, the loss checked for a second
    derivative and the graphs sized once, and the kept pullbacks serve them all.
    Vectors are flat (the parameters in ``names`` order, tied weights once), in the
    weights' dtype and device; a matrix of shape ``(n, m)`` is ``m`` vectors at once.
    ``len(hessian)`` is the number of parameters, ``products`` the vectors multiplied so
    far. The model runs in eval mode and is left as it was (parameters, buffers, flags);
    one whose loss changes between two passes, is not finite at the weights, or is partly
    detached from them is refused when the operator is built
    (:mod:`crumple.hessian.guardrails`).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1, bias=False).double()
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> H = Hessian(net, torch.nn.functional.mse_loss, (x, torch.zeros(2, 1)))
        >>> (H @ torch.eye(2, dtype=torch.float64)).tolist()  # 2 X^T X / n
        [[1.0, 0.0], [0.0, 4.0]]
        >>> H.keep_graphs, H.data.streamed  # the pullbacks kept, the data held
        (True, False)
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable | str,
        data: Any,
        *,
        parameters: Sequence[str] | None = None,
        dtype=None,
        device=None,
        max_memory: int | None = None,
    ) -> None:
        check_model(model)
        self.model = model
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not trainable:
            raise CrumpleError(
                "the model has no parameter that requires grad, so there is no Hessian to "
                "take; unfreeze the parameters to study (requires_grad_(True))"
            )
        budget = {} if max_memory is None else {"max_memory": max_memory}
        settings = Settings(dtype=dtype, device=device, **budget)  # names such as "float64" too
        self.max_memory = settings.max_memory
        weights = {
            n: cast(p.detach(), settings.torch_device, settings.torch_dtype)
            for n, p in model.named_parameters()
        }
        reference = weights[next(iter(trainable))]
        self.buffers = {
            n: cast(b, reference.device, reference.dtype) for n, b in buffers_of(model).items()
        }
        self.objective = Objective(model, named_functions(loss_fn))
        self.data = load(data, settings.data_budget).to(reference.device, reference.dtype)
        self.data_weight = sum(self.objective.weights(b)["loss"] for b in self.data)
        names = list(trainable) if parameters is None else list(parameters)
        unknown = [n for n in names if n not in trainable]
        if unknown or not names:
            raise CrumpleError(
                f"parameters must name one or more trainable parameters of the model, got "
                f"{parameters!r}; the trainable ones are {', '.join(trainable)}"
            )
        self._set(weights, names)
        with evaluation_mode(model):  # every pass in eval mode: the model's buffers unwritten
            self._check_twice_differentiable()
            guardrails.check(self)
            self.keep_graphs = self._graphs_fit()  # the same at any weights: decided once
        self.products = 0

    @contextmanager
    def _differentiating(self) -> Iterator[None]:
        """Eval mode with gradients on, and attention by its plain math kernel (the fused
        CPU and GPU kernels have no second derivative)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with evaluation_mode(self.model), torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            yield

    def _set(self, weights: Params, names: list[str]) -> None:
        self.names = names
        self.params = {n: weights[n] for n in names}
        self.fixed = {n: t for n, t in weights.items() if n not in self.params}
        self._pulls: list | None = None
        self._per_call: int | None = None

    def _check_twice_differentiable(self) -> None:
        """Differentiate the loss on a few samples twice, to refuse at once a loss that is
        detached from the weights (``torch.func`` would give zeros) or has an operation
        without a second derivative."""
        batch = next(iter(self.data)).rows(slice(0, 8))
        params = {n: p.detach().requires_grad_() for n, p in self.params.items()}
        with self._differentiating():
            if not self._loss(params, batch).requires_grad:
                raise CrumpleError(
                    "the loss does not depend on the trainable parameters (is it detached, "
                    "or computed from .item() or numpy?); a Hessian needs a loss that torch "
                    "can differentiate twice"
                )
            try:
                _, pull = vjp(grad(lambda p: self._loss(p, batch)), self.params)
                pull({n: torch.ones_like(p) for n, p in self.params.items()})
            except (RuntimeError, NotImplementedError) as error:
                raise CrumpleError(
                    f"the loss is not twice differentiable: differentiating its gradient "
                    f"failed with: {str(error).rstrip('.')}. A Hessian needs operations with a "
                    "second derivative (torch.cdist, for one, has none; a custom autograd.Function "
                    "needs setup_context and a differentiable backward)"
                ) from None

    def block(self, names: Sequence[str]) -> Hessian:
        """The diagonal block over the parameters ``names``, the others held fixed."""
        return self._copy({**self.params, **self.fixed}, list(names))

    def at(self, weights: Params, buffers: Params | None = None) -> Hessian:
        """The Hessian at other values of the parameters (a dict by name), same data; with
        ``buffers``, under those (BatchNorm running statistics of a later step, say)."""
        moved = {n: t.to(self.reference) for n, t in weights.items()}
        other = self._copy({**self.params, **self.fixed, **moved}, self.names)
        if buffers is not None:
            other.buffers = {
                n: cast(buffers.get(n, b), self.reference.device, b.dtype)
                for n, b in self.buffers.items()
            }
        return other

    def on(self, batch: Batch, dtype: torch.dtype) -> Hessian:
        """The Hessian of the loss on ``batch`` alone, computing in ``dtype`` (a probe)."""
        weights = {n: cast(t, None, dtype) for n, t in {**self.params, **self.fixed}.items()}
        other = self._copy(weights, self.names)
        other.buffers = {n: cast(b, None, dtype) for n, b in self.buffers.items()}
        other.data = Data([batch]).to(other.reference.device, dtype)
        other.data_weight = self.objective.weights(batch)["loss"]
        return other

    def _copy(self, weights: Params, names: list[str]) -> Hessian:
        other = object.__new__(Hessian)
        other.__dict__.update(self.__dict__)
        other._set(weights, names)
        other.products = 0
        return other

    def __len__(self) -> int:
        return sum(p.numel() for p in self.params.values())

    @property
    def reference(self) -> Tensor:
        return next(iter(self.params.values()))

    def _loss(self, params: Params, batch: Batch) -> Tensor:
        predict = functional(self.model, {**params, **self.fixed}, self.buffers)
        return self.objective.values(self.objective.call(predict, batch), batch)["loss"]

    def _batches(self):
        """(batch, its share of the mean) for each batch that the mean counts."""
        for batch in self.data:
            weight = self.objective.weights(batch)["loss"]
            if weight:
                yield batch, weight / self.data_weight

    def loss_and_gradient(self, params: Params | None = None) -> tuple[float, Params]:
        """The mean loss and its gradient (a dict by name) at ``params`` (default the
        Hessian's point)."""
        params = self.params if params is None else params
        total, gradient = 0.0, {n: torch.zeros_like(p) for n, p in params.items()}
        with self._differentiating():
            for batch, share in self._batches():
                g, value = grad_and_value(lambda p, b=batch: self._loss(p, b))(params)
                total += float(value) * share
                for n in gradient:
                    gradient[n] += g[n] * share
        return total, gradient

    def __matmul__(self, vectors: Tensor) -> Tensor:
        """``H @ vectors`` for a flat vector or an ``(n, m)`` matrix of them."""
        if vectors.dim() == 1:
            return self._products(vectors[None])[0]
        columns, parts = vectors.T, []
        if self._per_call is None and len(columns) > VECTORS_PER_CALL + 1:
            parts = self._timed(columns[: 2 + VECTORS_PER_CALL])
        per_call = self._per_call or 1
        for start in range(sum(len(p) for p in parts), len(columns), per_call):
            parts.append(self._products(columns[start : start + per_call]))
        return torch.cat(parts).T

    def _timed(self, columns: Tensor) -> list[Tensor]:
        """The products of the first vector (which may keep the pullbacks), of the second
        alone and of the rest under one vmap, the last two timed: later calls take the
        faster way (vmap wins on small models, loses on convolutions on the CPU)."""
        first = self._products(columns[:1])
        began = time.perf_counter()
        single = self._products(columns[1:2])
        alone = time.perf_counter() - began
        began = time.perf_counter()
        batched = self._products(columns[2:])
        together = (time.perf_counter() - began) / (len(columns) - 2)
        self._per_call = len(columns) - 2 if together < alone else 1
        return [first, single, batched]

    def _products(self, rows: Tensor) -> Tensor:
        """``H v`` for each row ``v`` of ``rows``, one vmapped pullback per batch."""
        tangents = self.unflatten(rows)
        out = torch.zeros_like(rows)
        with self._differentiating():
            for share, pull in self._pullbacks():
                if len(rows) == 1:
                    (product,) = pull({n: t[0] for n, t in tangents.items()})
                    product = {n: t[None] for n, t in product.items()}
                else:
                    (product,) = vmap(pull)(tangents)
                out += self.flatten(product) * share
        self.products += len(rows)
        return out

    def _pullbacks(self):
        """(share of the mean, pullback of the gradient) per batch: ``pull(v) = H_b v``
        (the Hessian is symmetric). Kept after the first pass where they fit."""
        if self._pulls is not None:
            yield from self._pulls
            return
        kept = []
        for batch, share in self._batches():
            gradient = grad(lambda p, b=batch: self._loss(p, b))
            _, pull = vjp(gradient, self.params)
            if self.keep_graphs:
                kept.append((share, pull))
            yield share, pull
        if self.keep_graphs:
            self._pulls = kept

    def _graphs_fit(self) -> bool:
        """Whether every batch's pullback may be kept: held data whose graphs take at most
        a quarter of ``max_memory``."""
        if self.data.streamed:
            return False
        first = next(iter(self.data))
        fixed = {**self.params, **self.fixed}
        per_sample = activations_per_sample(self.model, fixed, self.buffers, self.objective, first)
        samples = sum(b.size for b in self.data)
        size = GRAPH_FACTOR * per_sample * samples * self.reference.element_size()
        return size <= self.max_memory // 4

    def flatten(self, params: Params) -> Tensor:
        """Parameter dicts (each entry with a leading dimension of ``m``, or none) as flat
        vectors: ``(m, n)`` or ``(n,)``."""
        first = params[self.names[0]]
        lead = first.dim() - self.params[self.names[0]].dim()
        parts = [params[n].reshape(*first.shape[:lead], -1) for n in self.names]
        return torch.cat(parts, dim=-1)

    def unflatten(self, vectors: Tensor) -> Params:
        """Flat vectors (``(n,)`` or ``(m, n)``) as parameter dicts, views of them."""
        out, start = {}, 0
        for n in self.names:
            p = self.params[n]
            out[n] = vectors[..., start : start + p.numel()].reshape(*vectors.shape[:-1], *p.shape)
            start += p.numel()
        return out


def operator_of(
    model: nn.Module | Hessian, loss_fn: Any, data: Any, call: str, **build: Any
) -> Hessian:
    """The operator an estimator works on: ``model`` itself where it is a built
    :class:`Hessian` (then nothing that builds one may be given beside it), else one built
    from ``(model, loss_fn, data, **build)``. ``call`` shows the estimator's
    operator-first form, for the messages.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1).double()
        >>> data = (torch.ones(3, 2, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64))
        >>> H = operator_of(net, torch.nn.functional.mse_loss, data, "trace(H)")
        >>> operator_of(H, None, None, "trace(H)") is H
        True
        >>> operator_of(H, None, None, "trace(H)", dtype="float32")
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleTypeError: dtype='float32' builds an operator, and this ...
    """
    if isinstance(model, Hessian):
        beside = [(n, v) for n, v in (("loss_fn", loss_fn), ("data", data)) if v is not None]
        if beside:
            given = ", ".join(f"{n}={_brief(v)}" for n, v in beside)
            raise CrumpleTypeError(
                f"a built Hessian carries its own loss and data, so {given} cannot come "
                f"beside it; call {call} with the other arguments by keyword, or pass the "
                "model instead of the operator: (model, loss_fn, data, ...)"
            )
        options = {n: v for n, v in build.items() if v is not None}
        if options:
            given = ", ".join(f"{n}={v!r}" for n, v in options.items())
            raise CrumpleTypeError(
                f"{given} {'builds' if len(options) == 1 else 'build'} an operator, and this "
                "one is built already; give "
                f"{' and '.join(options)} to Hessian(model, loss_fn, data, ...) when building "
                f"it, then call {call}"
            )
        return model
    missing = [n for n, v in (("loss_fn", loss_fn), ("data", data)) if v is None]
    if missing:
        raise CrumpleTypeError(
            f"{' and '.join(missing)} missing: pass a Hessian built once, "
            f"H = cr.hessian.Hessian(model, loss_fn, data), and call {call}; or the model "
            "with its loss_fn and data"
        )
    return Hessian(model, loss_fn, data, **build)


def _brief(value: Any) -> str:
    """``repr(value)`` where it is short (a loss, a number), else its type (data)."""
    text = repr(value)
    return text if len(text) <= 60 and "\n" not in text else f"a {type(value).__name__}"


BLOCKINGS = names.BLOCKINGS


def blocks(names: Sequence[str], by: str | Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The parameters ``names`` in blocks: ``"parameter"`` (one each), ``"layer"`` (those
    of one module: a layer's weight and bias), ``"module"`` (those under each of the
    model's top-level children) or named groups ``{name: [parameter or module names]}``.

    Example:
        >>> names = ["0.weight", "0.bias", "2.0.weight", "2.1.weight"]
        >>> blocks(names, "layer")
        {'0': ['0.weight', '0.bias'], '2.0': ['2.0.weight'], '2.1': ['2.1.weight']}
        >>> blocks(names, "module")
        {'0': ['0.weight', '0.bias'], '2': ['2.0.weight', '2.1.weight']}
        >>> blocks(names, {"first": ["0"], "rest": ["2.0.weight", "2.1"]})
        {'first': ['0.weight', '0.bias'], 'rest': ['2.0.weight', '2.1.weight']}
    """
    if isinstance(by, Mapping):
        return {group: _members(names, group, entries) for group, entries in by.items()}
    keys = {
        "parameter": lambda n: n,
        "layer": lambda n: n.rpartition(".")[0] or "(model)",
        "module": lambda n: n.partition(".")[0] if "." in n else "(model)",
    }
    if by not in keys:
        raise CrumpleError(
            f"by must be one of {', '.join(map(repr, BLOCKINGS))} or a dict of named groups "
            f"such as {{'head': ['fc'], 'body': ['layer1', 'layer2']}}, got {by!r}"
        )
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(keys[by](n), []).append(n)
    return out


def _members(names: Sequence[str], group: str, entries: Sequence[str]) -> list[str]:
    if isinstance(entries, str):
        entries = [entries]
    if not entries:
        raise CrumpleError(f"group {group!r} is empty; give it parameter or module names")
    chosen = []
    for entry in entries:
        found = [n for n in names if n == entry or n.startswith(f"{entry}.")]
        if not found:
            raise CrumpleError(
                f"group {group!r}: {entry!r} names no trainable parameter or module of the "
                f"model; the trainable parameters are {', '.join(names)}"
            )
        chosen += [n for n in found if n not in chosen]
    return chosen


def each_block(hessian: Hessian, by, compute: Callable[[Hessian], Any]):
    """``compute(hessian)``, or with ``by`` a dict ``{block: compute(its diagonal block)}``
    (see :func:`blocks`)."""
    if by is None:
        return compute(hessian)
    return {
        name: compute(hessian.block(names)) for name, names in blocks(hessian.names, by).items()
    }
