"""The common sharpness measures side by side: the largest Hessian eigenvalue, the Hessian's
trace, Keskar et al.'s epsilon-sharpness and Kwon et al.'s / Andriushchenko et al.'s
adaptive sharpness.

The loss is the one :func:`crumple.surface` draws: the exact mean over the data, in eval
mode. Only the trainable parameters are perturbed (buffers and frozen parameters stay),
and the model is left untouched: the perturbed losses are functional calls through
:class:`~crumple.hessian.Hessian`. Each measure takes a built operator
(``sharpness(H)``) or the model with its loss and data (``sharpness(model, loss_fn,
data)``, which builds one operator for all four measures).

The two worst-case measures are maxima of the loss over a set of perturbations, found by
projected gradient ascent in normalised coordinates ``u = delta / c`` (elementwise, with
``c = |w| + 1`` or ``|w| + eta``): from a random point of the set (``seed``), each step
moves ``u`` by ``s * r`` along the steepest ascent direction of the set's norm (the
gradient's signs for a box, the normalised gradient for a ball; ``r`` the radius) and
projects back onto the set (clipping, or rescaling). ``s`` starts at 2 (a step across the
set, as in Andriushchenko et al.'s APGD) and halves whenever a step does not raise the
loss; the ascent then stays at the best point so far. It stops after ``steps``
loss-and-gradient evaluations, or earlier where a step no longer moves. The increase
reported is the best seen, ``L(w)`` itself included, so it is never negative. Like any
such ascent it finds a local maximum, a lower bound on the true one; on a quadratic at its
minimum it is exact for a box where the Hessian is diagonal (one step reaches the
corner), and for a ball given enough steps (the ascent is then a power iteration on
``diag(c) H diag(c)``).

The maxima are of the whole data's mean loss ("n-sharpness"); Andriushchenko et al.
report the mean over batches of each batch's maximum ("m-sharpness", m = 128 in their
CIFAR-10 runs).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from crumple.checks import whole_number
from crumple.errors import CrumpleError
from crumple.hessian.estimators import trace
from crumple.hessian.operator import Hessian, operator_of
from crumple.hessian.spectrum import eigen
from crumple.params import Params

STEPS = 20  # ascent evaluations by default, as Andriushchenko et al.'s n_iters
FIRST_STEP = 2.0  # the first step, in radii: across the whole set
SMALLEST_STEP = 2.0**-20  # below this the ascent stops


@dataclass
class EpsilonSharpness:
    """Keskar et al.'s epsilon-sharpness: ``value`` (in percent) is
    ``100 * increase / (1 + loss)``, ``increase`` the largest ``L(w + z) - L(w)`` found over
    the box, ``loss`` ``L(w)``, ``steps`` the ascent's evaluations, ``perturbation`` the
    ``z`` found (a dict by parameter name)."""

    value: float
    increase: float
    loss: float
    steps: int
    epsilon: float
    perturbation: Params


@dataclass
class AdaptiveSharpness:
    """Adaptive sharpness: ``value`` is the largest ``L(w + delta) - L(w)`` found over the
    set, ``loss`` ``L(w)``, ``steps`` the ascent's evaluations, ``perturbation`` the
    ``delta`` found (a dict by parameter name)."""

    value: float
    loss: float
    steps: int
    rho: float
    p: float
    eta: float
    perturbation: Params


@dataclass
class Sharpness:
    """The four measures at one point: the largest Hessian eigenvalue, Hutchinson's
    estimate of the trace with its standard error, epsilon- and adaptive sharpness."""

    eigenvalue: float
    trace: float
    trace_stderr: float
    epsilon: EpsilonSharpness
    adaptive: AdaptiveSharpness

    def as_dict(self) -> dict[str, float]:
        """The measures and their settings as flat floats (for attrs, or printing).

        Example:
            >>> e = EpsilonSharpness(1.0, 0.01, 0.0, 1, 1e-3, {})
            >>> a = AdaptiveSharpness(0.02, 0.0, 1, 0.5, 2.0, 0.0, {})
            >>> Sharpness(4.0, 5.0, 0.0, e, a).as_dict()["adaptive_sharpness"]
            0.02
        """
        return {
            "loss": self.epsilon.loss,
            "lambda_max": self.eigenvalue,
            "trace": self.trace,
            "trace_stderr": self.trace_stderr,
            "epsilon_sharpness": self.epsilon.value,
            "epsilon_increase": self.epsilon.increase,
            "epsilon": self.epsilon.epsilon,
            "adaptive_sharpness": self.adaptive.value,
            "rho": self.adaptive.rho,
            "p": self.adaptive.p,
            "eta": self.adaptive.eta,
        }


def epsilon_sharpness(
    model: nn.Module | Hessian,
    loss_fn: Callable | str | None = None,
    data: Any = None,
    epsilon: float = 1e-3,
    *,
    steps: int = STEPS,
    seed: int = 0,
    dtype=None,
    device=None,
    max_memory: int | None = None,
) -> EpsilonSharpness:
    """Keskar et al. (2017), "On large-batch training for deep learning: generalization gap
    and sharp minima", metric (2.1) with ``A = I`` (the full space)::

        phi = 100 * (max_{z in C} L(w + z) - L(w)) / (1 + L(w)),
        C = {z : |z_i| <= epsilon * (|w_i| + 1)}

    over the trainable parameters ``w``. Keskar et al. report ``epsilon`` = 1e-3 and 5e-4
    (the default is 1e-3) and maximise with L-BFGS-B; here the box is climbed by signed
    gradient steps clipped to it (see the module's notes), ``steps`` evaluations at most.
    ``model`` is a built :class:`~crumple.hessian.Hessian` (``epsilon_sharpness(H,
    epsilon=1e-3)``) or the model with its ``loss_fn`` and ``data``, as for
    :func:`~crumple.hessian.eigen`.

    Example:
        >>> import torch
        >>> from crumple.hessian import Hessian
        >>> net = torch.nn.Linear(2, 1, bias=False).double()
        >>> with torch.no_grad():
        ...     _ = net.weight.zero_()  # the minimum of L = (w1^2 + 4 w2^2) / 2
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> H = Hessian(net, torch.nn.functional.mse_loss, (x, torch.zeros(2, 1)))
        >>> s = epsilon_sharpness(H, epsilon=0.1)
        >>> round(s.increase, 9), round(s.value, 6)  # the corner: (1 + 4) * 0.1^2 / 2
        (0.025, 2.5)
    """
    _check_positive("epsilon", epsilon, "the box's half-width relative to |w| + 1, e.g. 1e-3")
    _check_steps(steps)
    build = {"dtype": dtype, "device": device, "max_memory": max_memory}
    hessian = operator_of(model, loss_fn, data, "epsilon_sharpness(H, epsilon=...)", **build)
    return _epsilon(hessian, epsilon, steps, seed)


def _epsilon(hessian: Hessian, epsilon: float, steps: int, seed: int) -> EpsilonSharpness:
    scale = hessian.flatten(hessian.params).abs() + 1
    loss, increase, delta, used = _ascend(hessian, scale, epsilon, math.inf, steps, seed)
    value = 100 * increase / (1 + loss)
    return EpsilonSharpness(value, increase, loss, used, float(epsilon), delta)


def adaptive_sharpness(
    model: nn.Module | Hessian,
    loss_fn: Callable | str | None = None,
    data: Any = None,
    rho: float | None = None,
    p: float = 2,
    *,
    eta: float = 0.0,
    steps: int = STEPS,
    seed: int = 0,
    dtype=None,
    device=None,
    max_memory: int | None = None,
) -> AdaptiveSharpness:
    """Adaptive (worst-case) sharpness, Kwon et al. (2021), "ASAM: adaptive
    sharpness-aware minimization for scale-invariant learning of deep neural networks",
    as measured by Andriushchenko et al. (2023), "A modern look at the relationship between
    sharpness and generalization"::

        S = max_{||delta / c||_p <= rho} L(w + delta) - L(w),   c_i = |w_i| + eta

    over the trainable parameters ``w``, the division elementwise, ``p`` 2 (one ball over
    all parameters together) or ``float("inf")`` (a box). Andriushchenko et al. take
    ``c = |w|`` (``eta = 0``, the default): the measure is then invariant to rescaling the
    weights elementwise (a ReLU layer's weights by ``a`` and the next by ``1 / a``), and a
    weight at exactly 0 is not perturbed. Kwon et al.'s ASAM adds ``eta = 0.01`` (their
    code only to parameters named ``weight``; here to all). ``rho`` defaults to 0.5 for
    ``p = 2`` (ASAM's default, inside Andriushchenko et al.'s 0.25-2 for ResNets) and 0.002
    for ``p = inf`` (their 0.001-0.008). The ascent: see the module's notes. ``model`` is
    a built :class:`~crumple.hessian.Hessian` (``adaptive_sharpness(H, rho=0.5)``) or the
    model with its ``loss_fn`` and ``data``, as for :func:`~crumple.hessian.eigen`.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1, bias=False).double()
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(1.0)  # L = ((1 + d1)^2 + 4 (1 + d2)^2) / 2
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> data = (x, torch.zeros(2, 1))
        >>> s = adaptive_sharpness(net, torch.nn.functional.mse_loss, data, 0.1, float("inf"))
        >>> round(s.value, 9)  # the corner d = (0.1, 0.1): 5 (2 * 0.1 + 0.1^2) / 2
        0.525
    """
    rho = _check_adaptive(rho, p, eta)
    _check_steps(steps)
    build = {"dtype": dtype, "device": device, "max_memory": max_memory}
    hessian = operator_of(model, loss_fn, data, "adaptive_sharpness(H, rho=...)", **build)
    return _adaptive(hessian, rho, p, eta, steps, seed)


def _adaptive(
    hessian: Hessian, rho: float, p: float, eta: float, steps: int, seed: int
) -> AdaptiveSharpness:
    scale = hessian.flatten(hessian.params).abs() + eta
    loss, increase, delta, used = _ascend(hessian, scale, rho, p, steps, seed)
    return AdaptiveSharpness(increase, loss, used, float(rho), float(p), float(eta), delta)


def sharpness(
    model: nn.Module | Hessian,
    loss_fn: Callable | str | None = None,
    data: Any = None,
    *,
    epsilon: float = 1e-3,
    rho: float | None = None,
    p: float = 2,
    eta: float = 0.0,
    steps: int = STEPS,
    probes: int = 100,
    seed: int = 0,
    dtype=None,
    device=None,
    max_memory: int | None = None,
) -> Sharpness:
    """The common sharpness measures side by side: the largest Hessian eigenvalue
    (:func:`eigen` with ``k=1``), the trace (:func:`trace`, ``probes`` Rademacher vectors,
    with its standard error), :func:`epsilon_sharpness` (``epsilon``) and
    :func:`adaptive_sharpness` (``rho``, ``p``, ``eta``), each with ``seed``, all four on
    one operator: ``model`` is a built :class:`~crumple.hessian.Hessian`
    (``sharpness(H)``), or the model with its ``loss_fn`` and ``data`` (one operator is
    built from them with ``dtype``, ``device`` and ``max_memory``).

    Example:
        >>> import torch
        >>> from crumple.hessian import Hessian
        >>> net = torch.nn.Linear(2, 1, bias=False).double()
        >>> with torch.no_grad():
        ...     _ = net.weight.zero_()
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> H = Hessian(net, torch.nn.functional.mse_loss, (x, torch.zeros(2, 1)))
        >>> s = sharpness(H, probes=4)
        >>> round(s.eigenvalue, 6), s.trace, round(s.epsilon.value, 8)  # H = diag(1, 4)
        (4.0, 5.0, 0.00025)
    """
    _check_positive("epsilon", epsilon, "the box's half-width relative to |w| + 1, e.g. 1e-3")
    rho = _check_adaptive(rho, p, eta)
    _check_steps(steps)
    build = {"dtype": dtype, "device": device, "max_memory": max_memory}
    hessian = operator_of(model, loss_fn, data, "sharpness(H, probes=...)", **build)
    top = eigen(hessian, k=1, seed=seed)
    estimate = trace(hessian, probes=probes, seed=seed)
    return Sharpness(
        float(top.eigenvalues[0]),
        estimate.estimate,
        estimate.stderr,
        _epsilon(hessian, epsilon, steps, seed),
        _adaptive(hessian, rho, p, eta, steps, seed),
    )


def _ascend(
    hessian: Hessian, scale: Tensor, radius: float, p: float, steps: int, seed: int
) -> tuple[float, float, Params, int]:
    """Projected gradient ascent of ``L(w + scale * u)`` over ``||u||_p <= radius``:
    ``L(w)``, the largest increase found, its ``delta = scale * u`` (a dict by name) and
    the evaluations used."""
    w = hessian.flatten(hessian.params)

    def evaluate(u: Tensor) -> tuple[float, Tensor]:
        value, gradient = hessian.loss_and_gradient(hessian.unflatten(w + scale * u))
        return value, scale * hessian.flatten(gradient)  # the gradient in u

    loss, _ = evaluate(torch.zeros_like(w))
    u = _start(scale, radius, p, seed)
    value, slope = evaluate(u)
    step, used = FIRST_STEP, 0
    while used < steps and step >= SMALLEST_STEP:
        if p == math.inf:
            direction = slope.sign()
        else:
            size = slope.norm()
            if size == 0:
                break
            direction = slope / size
        moved = _project(u + step * radius * direction, radius, p)
        if float((moved - u).abs().max()) <= 1e-9 * radius:
            break  # a fixed point of the projected step
        new_value, new_slope = evaluate(moved)
        used += 1
        if new_value > value:
            u, value, slope = moved, new_value, new_slope
        else:
            step /= 2  # stay at the best point, with a shorter step
    if value <= loss:
        u, value = torch.zeros_like(u), loss  # nothing found above L(w): delta = 0
    delta = {n: t.clone() for n, t in hessian.unflatten(scale * u).items()}
    return loss, value - loss, delta, used


def _start(scale: Tensor, radius: float, p: float, seed: int) -> Tensor:
    """A random point of the set, uniform in it, zero where ``scale`` is (those
    coordinates cannot move, and would only take up the ball's room)."""
    generator = torch.Generator().manual_seed(seed)
    n = len(scale)
    if p == math.inf:
        u = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * radius
    else:
        u = torch.randn(n, generator=generator, dtype=torch.float64)
        length = radius * float(torch.rand(1, generator=generator, dtype=torch.float64)) ** (1 / n)
        u = u / u.norm() * length
    return u.to(scale) * (scale != 0)


def _project(u: Tensor, radius: float, p: float) -> Tensor:
    """The nearest point of ``{||u||_p <= radius}``: clipped for a box, rescaled for a ball."""
    if p == math.inf:
        return u.clamp(-radius, radius)
    size = float(u.norm())
    return u * (radius / size) if size > radius else u


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_positive(name: str, value: object, meaning: str) -> None:
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise CrumpleError(f"{name} must be a positive number ({meaning}), got {value!r}")


def _check_steps(steps: object) -> None:
    why = f" (the ascent's loss-and-gradient evaluations, e.g. {STEPS})"
    whole_number("steps", steps, 1, why=why)


def _check_adaptive(rho: object, p: object, eta: object) -> float:
    """Check ``p`` and ``eta``, and ``rho`` (its default for ``p`` where None)."""
    if not (_is_number(p) and p in (2, math.inf)):
        raise CrumpleError(
            f"p must be 2 (a ball) or float('inf') (a box), the norm of the adaptive "
            f"sharpness set, got {p!r}"
        )
    if rho is None:
        rho = 0.5 if p == 2 else 0.002
    _check_positive(
        "rho", rho, "the set's radius relative to |w|: e.g. 0.5 for p=2, 0.002 for p=inf"
    )
    if not (_is_number(eta) and math.isfinite(eta) and eta >= 0):
        raise CrumpleError(
            f"eta must be a number >= 0 (added to |w| in the normalisation: 0, or 0.01 as in "
            f"ASAM), got {eta!r}"
        )
    return float(rho)
