"""Hessian-vector products of the exact mean loss over the data.

The loss is the one :func:`crumple.surface` draws: the exact mean over the data (batches
weighed by their samples, or target tokens for ``loss_fn="model"``), in eval mode, the
model untouched. A product is ``torch.func.vjp`` of ``torch.func.grad`` per batch, weighed
like the loss (forward-over-reverse, ``jvp`` of ``grad``, fails on ``F.mse_loss`` in
torch 2.13).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, vjp

from crumple.batches import load
from crumple.errors import CrumpleError
from crumple.evaluation.probes import functional
from crumple.inputs import check_model, named_functions
from crumple.losses import Objective
from crumple.params import Params, buffers_of, cast, evaluation_mode


class Hessian:
    """The Hessian of the mean loss at the model's weights, as products with vectors.

    Vectors are flat (the trainable parameters in ``names`` order, tied weights once), in
    the weights' dtype and device. ``len(hessian)`` is the number of parameters.
    """

    def __init__(
        self, model: nn.Module, loss_fn: Callable | str, data: Any, *, dtype=None, device=None
    ) -> None:
        check_model(model)
        self.model = model
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not params:
            raise CrumpleError(
                "the model has no parameter that requires grad, so there is no Hessian to "
                "take; unfreeze the parameters to study (requires_grad_(True))"
            )
        self.params = {n: cast(p.detach(), device, dtype) for n, p in params.items()}
        reference = next(iter(self.params.values()))
        self.frozen = {
            n: cast(p.detach(), reference.device, reference.dtype)
            for n, p in model.named_parameters()
            if n not in params
        }
        self.buffers = {
            n: cast(b, reference.device, reference.dtype) for n, b in buffers_of(model).items()
        }
        self.names = list(self.params)
        self.objective = Objective(model, named_functions(loss_fn))
        self.batches = list(load(data).to(reference.device, reference.dtype))
        self.weights = [self.objective.weights(b)["loss"] for b in self.batches]
        self.total = sum(self.weights)
        self.products = 0

    def __len__(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def _loss(self, params: Params, batch) -> Tensor:
        predict = functional(self.model, {**params, **self.frozen}, self.buffers)
        return self.objective.values(self.objective.call(predict, batch), batch)["loss"]

    def __matmul__(self, vector: Tensor) -> Tensor:
        """``H @ vector`` for a flat vector."""
        tangent = self.unflatten(vector)
        out = torch.zeros_like(vector)
        with evaluation_mode(self.model), torch.enable_grad():
            for batch, weight in zip(self.batches, self.weights):
                if weight == 0:
                    continue
                gradient = grad(lambda p, b=batch: self._loss(p, b))
                _, pull = vjp(gradient, self.params)  # H is symmetric: H v = v^T H
                (product,) = pull(tangent)
                out += self.flatten(product) * (weight / self.total)
        self.products += 1
        return out

    def flatten(self, params: Params) -> Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, vector: Tensor) -> Params:
        out, start = {}, 0
        for n in self.names:
            p = self.params[n]
            out[n] = vector[start : start + p.numel()].view_as(p)
            start += p.numel()
        return out
