"""Curvature measured while the model trains: the top Hessian eigenvalue every few steps
(Lanczos started from the previous step's eigenvector), the curvature along the last
update, the Hutchinson trace, Adam's preconditioned top eigenvalue and the optimizer's
stability threshold. Given to :class:`crumple.Recorder` (``curvature=``) and the training
callbacks, which keep each row with the trajectory."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from crumple.batches import load
from crumple.checks import named_functions, whole_number
from crumple.errors import CrumpleError, CrumpleTypeError, user_code
from crumple.hessian.estimators import _hutchinson
from crumple.hessian.lanczos import top_eigenpair
from crumple.hessian.operator import VECTORS_PER_CALL, Hessian
from crumple.hessian.spectrum import default_tol
from crumple.params import flatten

WARM_MIX = 0.01  # the random part of a warm start


class Tracking:
    """How the curvature is measured as a model trains, for ``Recorder(model,
    curvature=Tracking(...))`` and the callbacks' ``curvature=``.

    Every ``every`` steps (step 0 included) the Hessian of the mean loss on ``data`` (as
    :class:`crumple.hessian.Hessian` takes it: eval mode, the model untouched, the exact
    mean over the data) at the current weights and buffers gives:

    - ``lambda_max``: its top eigenvalue, by Lanczos started from the previous
      measurement's eigenvector with a 1% random part (``warm=False``: from the random
      vector alone), to a relative residual ``tol`` (default 1e-6 in float64, 1e-4
      otherwise), recorded as ``lambda_max_residual``; on the edge-of-stability run of
      :mod:`crumple.examples.eos` that takes 10 products where a random start takes 15
      (``make bench``);
    - ``directional`` (``directional=True``): ``d^T H d / d^T d`` along the last update
      ``d`` (the weights now minus those one step before), one product;
    - ``trace`` and ``trace_stderr`` (``trace=N``): Hutchinson's estimate from ``N`` products;
    - ``threshold``: the optimizer's stability threshold at its current learning rate
      (:func:`stability_threshold`: ``2/lr`` for SGD, ``(2 + 2 beta)/lr`` with momentum
      ``beta``, less coupled weight decay; for Adam that of the preconditioned Hessian), and
      ``preconditioned``: the top eigenvalue of ``P^-1 H`` with Adam's preconditioner ``P``
      (after its first step);
    - ``loss``: the training loss the loop handed over, and ``products``, those taken.

    Args:
        loss_fn: ``loss_fn(pred, y)`` returning the batch mean, or ``"model"``.
        data: the data the Hessian is taken on (a DataLoader, batches, or one ``(x, y)``
            pair); ``None``: the training batch given to ``record(batch=...)`` at each
            measured step (checked at the first).
        every: measure every this many steps.
        optimizer: the training's optimizer, for ``threshold`` and ``preconditioned``
            (the callbacks find their trainer's).
        most: the most products one eigenvalue may take (memory: up to two vectors of
            the parameters' size per product).
        seed: of the random start vectors and the trace's probes.
        dtype, device, max_memory: as :class:`crumple.hessian.Hessian` takes them.

    Example:
        >>> import torch, crumple as cr
        >>> _ = torch.manual_seed(0); net = torch.nn.Linear(3, 1).double()
        >>> x, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
        >>> loss_fn = torch.nn.functional.mse_loss
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> rec = cr.Recorder(net, curvature=Tracking(loss_fn, (x, y), every=2, optimizer=opt))
        >>> for step in range(4):
        ...     opt.zero_grad(); loss = loss_fn(net(x), y); loss.backward(); opt.step()
        ...     rec.record(loss=loss)
        >>> s = rec.sharpness()
        >>> s.step.values.tolist(), s.threshold.values.tolist()  # 2 / lr
        ([0, 2, 4], [20.0, 20.0, 20.0])
    """

    def __init__(
        self,
        loss_fn: Callable | str,
        data: Any = None,
        *,
        every: int = 10,
        directional: bool = True,
        trace: int = 0,
        optimizer: torch.optim.Optimizer | None = None,
        tol: float | None = None,
        most: int = 100,
        warm: bool = True,
        seed: int = 0,
        dtype=None,
        device=None,
        max_memory: int | None = None,
    ) -> None:
        named_functions(loss_fn)
        self.every = whole_number("every", every, 1, why=" (steps between measurements)")
        self.trace = whole_number("trace", trace, why=" (Hutchinson probes; 0: no trace)")
        if self.trace == 1:
            raise CrumpleError("trace must be 0 (no trace) or at least 2 probes, got 1")
        self.most = whole_number("most", most, 1, why=" (products per eigenvalue)")
        self.seed = whole_number("seed", seed)
        for name, flag in (("directional", directional), ("warm", warm)):
            if not isinstance(flag, bool):
                raise CrumpleTypeError(f"{name} must be True or False, got {flag!r}")
        if tol is not None and (not isinstance(tol, float) or not 0 < tol < 1):
            raise CrumpleError(f"tol must be a float between 0 and 1, got {tol!r}")
        self.optimizer = check_optimizer(optimizer)
        self.loss_fn, self.data, self.directional, self.warm, self.tol = (
            loss_fn,
            data,
            directional,
            warm,
            tol,
        )
        self.build = {"dtype": dtype, "device": device, "max_memory": max_memory}
        self.operator: Hessian | None = None
        self.vectors: dict[str, Tensor] = {}  # the last eigenvectors: the next warm starts
        self.previous: tuple[int, Tensor] | None = None  # weights one step before a measurement
        self.warned = False
        self.eval_mode: str | None = None  # what eval mode changes in the model, if anything

    def start(self, model: nn.Module, optimizer=None, resume: bool = False) -> None:
        """Training (re)starts: build the operator on ``data`` (its checks refuse a loss
        without a second derivative now), take the ``optimizer`` if given; a new run
        (``resume=False``) starts cold."""
        if optimizer is not None:
            self.optimizer = check_optimizer(optimizer)
        _check_trains(self.optimizer, model)
        if not resume:
            self.vectors, self.previous, self.warned = {}, None, False
        self.operator = None
        changing = [type(m).__name__ for m in model.modules() if _changed_in_eval(m)]
        self.eval_mode = None
        if changing:
            self.eval_mode = (
                f"measured in eval mode, as the surface is: the model's "
                f"{', '.join(sorted(set(changing)))} compute otherwise in training (BatchNorm "
                "from the batch's statistics), so lambda_max and the threshold compare only "
                "roughly"
            )
        adam = self.optimizer is not None and _of(self.optimizer) == "preconditioned"
        if changing and adam:
            self.eval_mode += (
                "; with Adam, a parameter whose gradient the batch statistics cancel (a bias "
                "before BatchNorm) has P near eps and can make preconditioned far too large"
            )
        if self.data is not None:
            with user_code("the curvature on Tracking's data (checked when training starts)"):
                self.operator = Hessian(model, self.loss_fn, self.data, **self.build)

    def attrs(self) -> dict[str, Any]:
        """How the curvature is measured, for the history's attributes."""
        out = {
            "every": self.every,
            "data": "the training batch" if self.data is None else "held data",
            "warm_start": "yes" if self.warm else "no",
            "trace_probes": self.trace,
        }
        if self.optimizer is not None:
            out["optimizer"] = type(self.optimizer).__name__
            out["threshold_formula"] = stability_threshold(self.optimizer)[2]
        if self.eval_mode:
            out["eval_mode"] = self.eval_mode
        return out

    def after_step(
        self, model: nn.Module, step: int, loss: Any, batch: Any = None, measure: bool = True
    ):
        """The row measured at ``step`` if it is due (and ``measure``), else ``None``; the
        weights are kept when the next step is due (its update is the difference)."""
        due = measure and step % self.every == 0
        row = self._measure(model, step, loss, batch) if due else None
        if self.directional and (step + 1) % self.every == 0:
            params = {n: p.detach() for n, p in model.named_parameters()}
            self.previous = (step, flatten(params, self._names(model)).clone())
        return row

    def _names(self, model: nn.Module) -> list[str]:
        if self.operator is not None:
            return self.operator.names
        return [n for n, p in model.named_parameters() if p.requires_grad]

    def _at(self, model: nn.Module, batch: Any) -> Hessian:
        """The operator at the model's weights and buffers now."""
        weights = {n: p.detach() for n, p in model.named_parameters()}
        buffers = dict(model.named_buffers())
        if self.data is not None:
            return self.operator.at(weights, buffers)
        if batch is None:
            raise CrumpleError(
                "the curvature is tracked on the training batch (Tracking without data), and "
                "this step was recorded without one; pass record(loss=..., batch=(x, y)), or "
                "give Tracking(loss_fn, data) the data to measure on"
            )
        if self.operator is None:
            self.operator = Hessian(model, self.loss_fn, batch, **self.build)
            return self.operator
        held = list(load(batch))  # the raw (x, y) as a Batch, checked (finite, sized)
        if len(held) != 1:  # several batches: an operator of their own, checked again
            return Hessian(model, self.loss_fn, batch, **self.build)
        return self.operator.at(weights, buffers).on(held[0], self.operator.reference.dtype)

    def _measure(self, model: nn.Module, step: int, loss: Any, batch: Any) -> dict:
        h = self._at(model, batch)
        h._per_call = VECTORS_PER_CALL  # the trace's products batched alike in every run
        value = math.nan if loss is None else float(torch.as_tensor(loss).detach())
        row: dict[str, float | int] = {"step": step, "loss": value}
        top = self._top(h, "lambda_max", lambda v: h @ v)
        row |= {"lambda_max": top.value, "lambda_max_residual": top.residual}
        if self.directional:
            row["directional"] = self._directional(h, step)
        if self.trace:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            estimate = _hutchinson(h, self.trace, generator)
            row |= {"trace": estimate.estimate, "trace_stderr": estimate.stderr}
        if self.optimizer is not None:
            threshold, of, _ = stability_threshold(self.optimizer)
            row["threshold"] = threshold
            if of == "preconditioned":
                scale = adam_scale(self.optimizer, model, h)
                if scale is not None:
                    row["preconditioned"] = self._top(
                        h, "preconditioned", lambda v: scale * (h @ (scale * v))
                    ).value
        row["products"] = h.products
        return row

    def _top(self, h: Hessian, key: str, apply):
        generator = torch.Generator().manual_seed(self.seed)
        start = torch.randn(len(h), generator=generator, dtype=torch.float64).to(h.reference)
        previous = self.vectors.get(key) if self.warm else None
        if previous is not None and previous.numel() == len(h):
            # the last eigenvector, and a little of every direction: an eigenvalue that
            # overtakes it elsewhere (another block of the Hessian) is still found
            start = previous.to(h.reference) + WARM_MIX * start / start.norm()
        tol = default_tol(h) if self.tol is None else self.tol
        top = top_eigenpair(apply, start, tol, self.most)
        self.vectors[key] = top.vector
        if not top.converged and not self.warned:
            self.warned = True
            warnings.warn(
                f"crumple: the {key} eigenvalue did not reach the residual {tol:g} in "
                f"{self.most} products (it is {top.residual:.2g}, recorded beside it); "
                "give Tracking(most=...) more",
                stacklevel=4,
            )
        return top

    def _directional(self, h: Hessian, step: int) -> float:
        if self.previous is None or self.previous[0] != step - 1:
            return math.nan
        d = h.flatten(h.params) - self.previous[1].to(h.reference)
        size = float(d @ d)
        return float(d @ (h @ d)) / size if size > 0 else math.nan

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (tensors and numbers): the warm starts and the weights
        kept for the next update."""
        previous = None if self.previous is None else [self.previous[0], self.previous[1]]
        return {"vectors": dict(self.vectors), "previous": previous}

    def load(self, state: dict[str, Any]) -> None:
        """Take up a checkpoint's :meth:`state`."""
        self.vectors = dict(state.get("vectors") or {})
        previous = state.get("previous")
        self.previous = None if previous is None else (int(previous[0]), previous[1])


def _changed_in_eval(module: nn.Module) -> bool:
    """Whether ``module`` computes otherwise in eval mode, where every curvature is measured."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _check_trains(optimizer, model: nn.Module) -> None:
    """Refuse an optimizer that trains none of the model's parameters (its threshold and
    preconditioner would be another training's)."""
    if optimizer is None:
        return
    mine = {id(p) for p in model.parameters() if p.requires_grad}
    theirs = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if mine and not mine & theirs:
        raise CrumpleError(
            f"optimizer= ({type(optimizer).__name__}) trains none of the model's parameters: "
            "give the optimizer that trains this model, made from its parameters"
        )


def check_optimizer(optimizer):
    """The optimizer itself (unwrapped from accelerate's or Lightning's wrapper), or a
    refusal of what is not one."""
    inner = getattr(optimizer, "optimizer", None)
    while isinstance(inner, torch.optim.Optimizer):
        optimizer, inner = inner, getattr(inner, "optimizer", None)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise CrumpleTypeError(
            f"optimizer must be a torch.optim.Optimizer (the one training the model), got "
            f"{type(optimizer).__name__}"
        )
    return optimizer


def stability_threshold(optimizer: torch.optim.Optimizer) -> tuple[float, str, str]:
    """The largest curvature at which the optimizer's step is stable on a quadratic (Cohen
    et al. 2021, 2022), at its current learning rate: ``(value, of, formula)``, ``of``
    being ``"lambda_max"`` or ``"preconditioned"`` (Adam's ``P^-1 H``). Heavy-ball SGD:
    ``(2 + 2 beta) / ((1 - dampening) lr)`` less the coupled weight decay; Nesterov:
    ``(2 + 2 beta) / ((1 + 2 beta) lr)``; Adam and AdamW: ``(2 + 2 beta1) / ((1 - beta1)
    lr)``. nan for other optimizers, and for parameter groups with different settings.

    Example:
        >>> net = torch.nn.Linear(1, 1)
        >>> stability_threshold(torch.optim.SGD(net.parameters(), lr=0.05))[:2]
        (40.0, 'lambda_max')
        >>> heavy_ball = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        >>> round(stability_threshold(heavy_ball)[0], 9)
        38.0
        >>> stability_threshold(torch.optim.Adam(net.parameters(), lr=0.001))[1:]
        ('preconditioned', '(2 + 2 beta1) / ((1 - beta1) lr) of P^-1 H')
    """
    groups = optimizer.param_groups
    keys = ("lr", "momentum", "dampening", "nesterov", "weight_decay", "betas")
    settings = {tuple(str(g.get(k)) for k in keys) for g in groups}
    group = groups[0]
    lr = float(group["lr"])
    if len(settings) > 1:
        return math.nan, "lambda_max", "none: the parameter groups have different settings"
    if lr == 0:  # a schedule at its end: any curvature is stable
        return math.inf, _of(optimizer), "none: the learning rate is 0"
    if isinstance(optimizer, torch.optim.SGD):
        beta, damp = float(group["momentum"]), float(group["dampening"])
        decay = float(group["weight_decay"])
        if group["nesterov"]:
            value, formula = (
                (2 + 2 * beta) / ((1 + 2 * beta) * lr),
                "(2 + 2 beta) / ((1 + 2 beta) lr)",
            )
        elif beta:
            value, formula = (
                (2 + 2 * beta) / ((1 - damp) * lr),
                "(2 + 2 beta) / ((1 - dampening) lr)",
            )
        else:
            value, formula = 2 / lr, "2 / lr"
        return value - decay, "lambda_max", formula + (" - weight_decay" if decay else "")
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        beta1 = float(group["betas"][0])
        formula = "(2 + 2 beta1) / ((1 - beta1) lr) of P^-1 H"
        return (2 + 2 * beta1) / ((1 - beta1) * lr), "preconditioned", formula
    return math.nan, "lambda_max", f"none known for {type(optimizer).__name__}"


def _of(optimizer) -> str:
    adam = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
    return "preconditioned" if adam else "lambda_max"


def adam_scale(optimizer: torch.optim.Optimizer, model: nn.Module, h: Hessian) -> Tensor | None:
    """``P^-1/2`` as a flat vector, for Adam's preconditioner ``P = (1 - beta1^t)
    (sqrt(v_t / (1 - beta2^t)) + eps)`` (Cohen et al. 2022); ``None`` before its first
    step or where it does not hold every parameter of the operator."""
    group = optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    params = dict(model.named_parameters())
    parts = []
    for name in h.names:
        state = optimizer.state.get(params[name], {})
        second = state.get("max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq")
        if second is None or "step" not in state:
            return None
        t = float(state["step"])
        p = (1 - beta1**t) * ((second / (1 - beta2**t)).sqrt() + group["eps"])
        parts.append(p.detach().reshape(-1).to(h.reference))
    return torch.cat(parts).rsqrt()
