"""The checks a Hessian operator makes once, when it is built, before any product (the
model in eval mode): the surface's determinism probe, a finite loss and gradient at the
weights, and a gradient that is the loss's own.

A loss partly detached from the weights (``ce + (p.detach() * p).mean()``) has a gradient,
and a Hessian, of only part of it; torch cannot tell. So the autograd derivative along a
direction ``v`` (the gradient's and a random one's) is compared with the central difference
of the loss itself, ``(L(w + h v) - L(w - h v)) / 2h``, on the first samples, in float64
where the model runs in it (else in its own dtype, more loosely), at steps from 1e-2 to
1e-6: an honest loss agrees at one step at least, a detached part differs at every one.
Measured in float64, the best step's relative difference: 1e-11 to 7e-9 on an MLP, a small
GPT, ResNet-20 and a ReLU CNN with BatchNorm on digits (whose ReLUs, on the digits' blank
background, put it at 3e-4 for steps of 1e-3 and more), 2e-6 on a model that rounds to
float32 inside (RMSNorm as LLaMA's, 3e-3 at the smallest step); with 1% of the loss
detached as above, 4e-4 to 3e-3; with all of it, 0.13 to 0.33.
"""

from __future__ import annotations

import math

import torch
from torch.func import grad_and_value

from crumple.errors import CrumpleError
from crumple.evaluation.probes import check_deterministic

PROBE_SAMPLES = 64  # samples the gradient check differentiates
# per dtype: the steps h along a direction of norm 1 (small ones for piecewise-linear
# models, whose kinks a large step crosses; large ones for models that round to float32
# inside), and the relative difference allowed at one of them at least
FINITE_DIFFERENCE = {
    torch.float64: ((1e-2, 1e-3, 1e-4, 1e-5, 1e-6), 1e-4),
    torch.float32: ((1e-1, 1e-2, 1e-3), 5e-2),
}
ROUNDING = 8  # the central difference's rounding error is about this many eps * |L| / h


def check(hessian) -> None:
    """Every check, in order; a model that fails one is refused with what to fix."""
    batch = hessian.data.first
    weights = {**hessian.params, **hessian.fixed}
    check_deterministic(hessian.model, weights, hessian.buffers, hessian.objective, batch)
    check_finite(hessian)
    check_gradient(hessian, batch.rows(slice(0, PROBE_SAMPLES)))


def check_finite(hessian) -> None:
    """Refuse weights, a mean loss or a gradient at the weights that hold nan or inf, naming
    the parameter or the first batch whose loss is not finite (data with nan or inf is
    refused when read).

    Example:
        >>> from crumple.hessian import Hessian
        >>> net, x = torch.nn.Linear(2, 1).double(), torch.eye(2, dtype=torch.float64)
        >>> Hessian(net, lambda p, y: torch.log(p - p - 1).mean(), (x, torch.zeros(2, 1)))
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: at the model's weights the mean loss is nan (first on ...
    """
    for name, p in {**hessian.params, **hessian.fixed}.items():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise CrumpleError(
                f"the model's parameter {name!r} holds nan or inf; a Hessian at such weights "
                "is nan. Give weights from before the training diverged"
            )
    loss, gradient = hessian.loss_and_gradient()
    bad = [n for n, g in gradient.items() if not bool(torch.isfinite(g).all())]
    if math.isfinite(loss) and not bad:
        return
    what = f"the mean loss is {loss!r}"
    if math.isfinite(loss):
        what = f"the loss's gradient by {bad[0]!r} is not finite"
    where = ""
    with hessian._differentiating(), torch.no_grad():
        for k, batch in enumerate(hessian.data):
            value = float(hessian._loss(hessian.params, batch))
            if not math.isfinite(value):
                where = f" (first on batch {k}, whose loss is {value!r}; the data is finite)"
                break
    raise CrumpleError(
        f"at the model's weights {what}{where}, so its Hessian would be nan; check the loss "
        "for log(0), a division by zero or an overflow (a log-softmax instead of log(softmax), "
        "a larger eps), or give weights where the loss is finite"
    )


def check_gradient(hessian, batch) -> None:
    """Refuse a loss whose autograd derivative along a direction differs from the central
    differences of its values at every step: a part of it is detached.

    Example:
        >>> from crumple.hessian import Hessian
        >>> net, x = torch.nn.Linear(2, 1).double(), torch.eye(2, dtype=torch.float64)
        >>> def loss(p, y):
        ...     return ((p - y) ** 2).mean() + (p.detach() * p).mean()
        >>> Hessian(net, loss, (x, torch.zeros(2, 1)))
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: the loss's gradient is not its own: along a direction ...
    """
    try:
        dtype = torch.float64
        derivative, differences = _derivatives(hessian.on(batch, dtype))
    except (RuntimeError, TypeError):  # the model does not run in float64
        dtype = hessian.reference.dtype
        if dtype not in FINITE_DIFFERENCE:
            return  # half precision: differences too coarse to tell
        derivative, differences = _derivatives(hessian.on(batch, dtype))
    tolerance = FINITE_DIFFERENCE[dtype][1]
    for difference, noise in differences:
        if abs(derivative - difference) <= tolerance * abs(derivative) + noise:
            return
    raise CrumpleError(
        f"the loss's gradient is not its own: along a direction (half the gradient's, half "
        f"random) autograd gives the derivative {derivative:.6g}, while the loss's values "
        f"change at the rate "
        f"{difference:.6g} (a central difference, in {str(dtype).removeprefix('torch.')}). A part "
        "of the loss is detached from the weights (.detach(), .item(), .data or numpy inside "
        "it), so its gradient and Hessian would be those of the rest only; compute the whole "
        "loss with torch operations on the model's output"
    )


def _derivatives(hessian) -> tuple[float, list[tuple[float, float]]]:
    """The autograd derivative of the loss along a direction of norm 1 (the gradient's and
    a seeded random one's, halfway), and its central difference at each step with the size
    of its rounding error, in ``hessian``'s dtype."""
    (batch,) = hessian.data

    def loss(p):
        return hessian._loss(p, batch)

    random = torch.randn(len(hessian), generator=torch.Generator().manual_seed(0))
    eps = torch.finfo(hessian.reference.dtype).eps
    differences = []
    with hessian._differentiating():
        gradient, value = grad_and_value(loss)(hessian.params)
        flat = hessian.flatten(gradient).double().cpu()
        direction = random.double() / random.norm() + flat / max(float(flat.norm()), 1e-300)
        direction /= direction.norm()
        along = hessian.unflatten(direction.to(hessian.reference))
        with torch.no_grad():
            for h in FINITE_DIFFERENCE[hessian.reference.dtype][0]:
                ahead, behind = (
                    loss({n: p + s * h * along[n] for n, p in hessian.params.items()})
                    for s in (1, -1)
                )
                change = float(ahead.double() - behind.double())
                differences.append((change / (2 * h), ROUNDING * eps * abs(float(value)) / h))
    return float(flat @ direction), differences
