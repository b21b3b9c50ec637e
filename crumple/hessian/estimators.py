"""Stochastic estimates from Hessian-vector products: the trace (Hutchinson, Hutch++) and
the eigenvalue spectral density (stochastic Lanczos quadrature)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from crumple.checks import whole_number
from crumple.errors import CrumpleError
from crumple.hessian.operator import Hessian, each_block, operator_of
from crumple.names import TRACE_METHODS

CHUNK = 16  # probe vectors generated and multiplied at a time
METHODS = TRACE_METHODS


@dataclass
class Trace:
    """An estimate of the Hessian's trace, its standard error, the Hessian-vector products
    it took (``probes``) and the ``method``."""

    estimate: float
    stderr: float
    probes: int
    method: str = "hutchinson"


def trace(
    model: nn.Module | Hessian,
    loss_fn: Callable | str | None = None,
    data: Any = None,
    *,
    probes: int = 100,
    method: str = "hutchinson",
    by=None,
    seed: int = 0,
    dtype=None,
    device=None,
    max_memory: int | None = None,
) -> Trace | dict[str, Trace]:
    """The trace of the Hessian of the mean loss from ``probes`` Hessian-vector products.

    ``"hutchinson"``: ``mean(z^T H z)`` over Rademacher vectors ``z``, unbiased; the
    standard error is the sample standard deviation over ``sqrt(probes)``.
    ``"hutch++"`` (Meyer et al. 2021): a third of the products sketch the top of the
    spectrum (``Q = orth(H S)``), whose part ``tr(Q^T H Q)`` is exact; Hutchinson's
    estimator on the rest (a third of the products) adds the remainder, and its standard
    error is the estimate's. Much smaller errors when a few eigenvalues dominate.
    With ``by``, a dict ``{block: Trace}`` of the diagonal blocks (as :func:`eigen`).
    ``model`` is a built :class:`~crumple.hessian.Hessian` (``trace(H, probes=30)``) or
    the model with its ``loss_fn`` and ``data``, as for :func:`eigen`.

    Example:
        >>> import torch
        >>> from crumple.hessian import Hessian
        >>> net = torch.nn.Linear(3, 1, bias=False).double()
        >>> x = torch.eye(3, dtype=torch.float64)
        >>> H = Hessian(net, torch.nn.functional.mse_loss, (x, torch.zeros(3, 1)))
        >>> t = trace(H, probes=4)
        >>> round(t.estimate, 6), t.stderr  # H = 2 I / 3: z^T H z = 2 for every sign vector
        (2.0, 0.0)
    """
    if method not in METHODS:
        raise CrumpleError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    least = 2 if method == "hutchinson" else 6
    probes = whole_number("probes", probes, least, why=f" for {method}")
    seed = whole_number("seed", seed)
    build = {"dtype": dtype, "device": device, "max_memory": max_memory}
    hessian = operator_of(model, loss_fn, data, "trace(H, probes=...)", **build)
    estimate = _hutchinson if method == "hutchinson" else _hutch_plus_plus
    return each_block(
        hessian, by, lambda h: estimate(h, probes, torch.Generator().manual_seed(seed))
    )


def _signs(hessian: Hessian, count: int, generator: torch.Generator) -> torch.Tensor:
    z = torch.randint(0, 2, (len(hessian), count), generator=generator) * 2 - 1
    return z.to(hessian.reference)


def _quadratic_forms(hessian: Hessian, count: int, generator, project=None) -> np.ndarray:
    """``z^T P H P z`` for ``count`` Rademacher ``z`` (``P`` projects, default none)."""
    out = []
    for start in range(0, count, CHUNK):
        z = _signs(hessian, min(CHUNK, count - start), generator)
        z = z if project is None else project(z)
        out.append((z * (hessian @ z)).sum(0).double().cpu().numpy())
    return np.concatenate(out)


def _hutchinson(hessian: Hessian, probes: int, generator) -> Trace:
    values = _quadratic_forms(hessian, probes, generator)
    return Trace(float(values.mean()), float(values.std(ddof=1) / math.sqrt(probes)), probes)


def _hutch_plus_plus(hessian: Hessian, probes: int, generator) -> Trace:
    third = probes // 3
    q, _ = torch.linalg.qr(hessian @ _signs(hessian, third, generator))
    top = float(torch.trace(q.T @ (hessian @ q)))
    rest = _quadratic_forms(hessian, probes - 2 * third, generator, lambda z: z - q @ (q.T @ z))
    stderr = rest.std(ddof=1) / math.sqrt(len(rest))
    return Trace(top + float(rest.mean()), float(stderr), probes, "hutch++")


def density(
    model: nn.Module | Hessian,
    loss_fn: Callable | str | None = None,
    data: Any = None,
    *,
    probes: int = 10,
    steps: int = 40,
    bins: int = 400,
    width: float | None = None,
    by=None,
    seed: int = 0,
    dtype=None,
    device=None,
    max_memory: int | None = None,
):
    """The Hessian's eigenvalue spectral density by stochastic Lanczos quadrature: for each
    random unit probe ``v``, ``steps`` Lanczos steps (fully reorthogonalised) give nodes
    ``theta_i`` and weights ``tau_i`` with ``sum tau_i f(theta_i) ~ v^T f(H) v``; their
    average over probes, smoothed by a Gaussian of ``width`` (default 1% of the spectrum's
    span), is the density on ``bins`` eigenvalues.

    Returns an ``xarray.Dataset`` with ``density`` over ``eigenvalue`` and the quadrature
    ``nodes`` and ``weights`` over (``probe``, ``node``; nodes a probe's Lanczos run did not
    reach are NaN): ``sum(weights * nodes**k) / probes``
    estimates ``tr(H^k) / n``. With ``by``, a dict ``{block: Dataset}`` of the diagonal
    blocks (as :func:`eigen`). ``model`` is a built :class:`~crumple.hessian.Hessian`
    (``density(H)``) or the model with its ``loss_fn`` and ``data``, as for :func:`eigen`.

    Example:
        >>> import torch
        >>> from crumple.hessian import Hessian
        >>> net = torch.nn.Linear(3, 1, bias=False).double()
        >>> x = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> H = Hessian(net, torch.nn.functional.mse_loss, (x, torch.zeros(3, 1)))
        >>> esd = density(H, probes=2)
        >>> esd.nodes.values[0].round(4).tolist()  # 3 steps on 3 weights: H's eigenvalues
        [0.6667, 2.6667, 6.0]
    """
    probes, steps = whole_number("probes", probes, 1), whole_number("steps", steps, 1)
    bins, seed = whole_number("bins", bins, 2), whole_number("seed", seed)
    if width is not None and not (isinstance(width, numbers.Real) and 0 < width < math.inf):
        raise CrumpleError(
            f"width must be a positive number (or None: 1% of the span), got {width!r}"
        )
    build = {"dtype": dtype, "device": device, "max_memory": max_memory}
    hessian = operator_of(model, loss_fn, data, "density(H, probes=...)", **build)
    return each_block(hessian, by, lambda h: _density(h, probes, steps, bins, width, seed))


def _density(hessian: Hessian, probes: int, steps: int, bins: int, width, seed: int):
    import xarray as xr

    n = len(hessian)
    steps = min(steps, n)
    reference = hessian.reference
    generator = torch.Generator().manual_seed(seed)
    nodes, weights = np.full((probes, steps), np.nan), np.zeros((probes, steps))
    for p in range(probes):
        v = torch.randn(n, generator=generator, dtype=torch.float64)
        basis = [v / v.norm()]
        alphas, betas = [], []
        for j in range(steps):
            w = (hessian @ basis[j].to(reference)).double().cpu()
            alphas.append(float(w @ basis[j]))
            for u in basis:  # full reorthogonalisation
                w -= (w @ u) * u
            beta = float(w.norm())
            if j == steps - 1 or beta < 1e-12 * max(abs(alphas[0]), 1.0):
                break
            betas.append(beta)
            basis.append(w / beta)
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, vectors = np.linalg.eigh(T)
        nodes[p, : len(theta)], weights[p, : len(theta)] = theta, vectors[0] ** 2
    low, high = np.nanmin(nodes), np.nanmax(nodes)  # nan: steps a probe did not need
    sigma = width if width is not None else max(0.01 * (high - low), 1e-12)
    grid = np.linspace(low - 5 * sigma, high + 5 * sigma, bins)
    kernel = np.nan_to_num(np.exp(-0.5 * ((grid[:, None, None] - nodes[None]) / sigma) ** 2))
    values = (kernel * weights[None]).sum(axis=(1, 2)) / (probes * sigma * math.sqrt(2 * math.pi))
    return xr.Dataset(
        {
            "density": ("eigenvalue", values),
            "nodes": (("probe", "node"), nodes),
            "weights": (("probe", "node"), weights),
        },
        coords={"eigenvalue": grid},
        attrs={"probes": probes, "steps": steps, "width": sigma, "n_parameters": n},
    )
