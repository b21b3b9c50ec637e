"""The Hessian's spectrum from its products with vectors: the extreme eigenpairs by
Lanczos, the trace by Hutchinson's estimator, the density by stochastic Lanczos
quadrature, and the plane along two eigenvectors."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from crumple.errors import CrumpleError
from crumple.hessian.operator import Hessian
from crumple.params import Params
from crumple.plane import Plane


@dataclass
class Eigen:
    """Eigenpairs of the Hessian: ``eigenvalues`` (descending for ``"largest"``, ascending
    for ``"smallest"``), ``eigenvectors`` as parameter dicts (like plane directions),
    ``residuals`` ``|Hv - lambda v| / |lambda|`` of each pair, and the products used."""

    eigenvalues: np.ndarray
    eigenvectors: list[Params]
    residuals: np.ndarray
    products: int


def eigen(
    model: nn.Module,
    loss_fn: Callable | str,
    data: Any,
    k: int = 5,
    which: str = "largest",
    *,
    tol: float = 1e-10,
    seed: int = 0,
    dtype=None,
    device=None,
) -> Eigen:
    """The ``k`` largest (or smallest) eigenvalues of the Hessian of the mean loss, by
    Lanczos (``scipy.sparse.linalg.eigsh``) on Hessian-vector products.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1, bias=False).double()
        >>> x = torch.eye(3, dtype=torch.float64)
        >>> e = eigen(net, torch.nn.functional.mse_loss, (x, torch.zeros(3, 1)), k=2)
        >>> [round(float(v), 6) for v in e.eigenvalues]  # H = 2 I / 3
        [0.666667, 0.666667]
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    hessian = Hessian(model, loss_fn, data, dtype=dtype, device=device)
    n = len(hessian)
    kinds = {"largest": "LA", "smallest": "SA"}
    if which not in kinds:
        raise CrumpleError(f"which must be 'largest' or 'smallest', got {which!r}")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < n:
        raise CrumpleError(
            f"k must be a whole number from 1 to {n - 1} (the model has {n:,} parameters, and "
            f"Lanczos finds fewer eigenvalues than that), got {k!r}"
        )
    reference = next(iter(hessian.params.values()))

    def apply(v: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.asarray(v).reshape(-1), dtype=reference.dtype)
        return (hessian @ t.to(reference.device)).double().cpu().numpy()

    operator = LinearOperator((n, n), matvec=apply, dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(n)
    values, vectors = eigsh(operator, k=k, which=kinds[which], tol=tol, v0=start)
    order = np.argsort(-values if which == "largest" else values)
    values, vectors = values[order], vectors[:, order]
    residuals = np.empty(k)
    for j in range(k):
        hv = apply(vectors[:, j])
        residuals[j] = np.linalg.norm(hv - values[j] * vectors[:, j]) / max(abs(values[j]), 1e-300)
    eigenvectors = [
        {
            n: t.clone()
            for n, t in hessian.unflatten(
                torch.as_tensor(vectors[:, j], dtype=reference.dtype).to(reference.device)
            ).items()
        }
        for j in range(k)
    ]
    return Eigen(values, eigenvectors, residuals, hessian.products)


@dataclass
class Trace:
    """Hutchinson's estimate of the Hessian's trace with its standard error."""

    estimate: float
    stderr: float
    probes: int


def trace(
    model: nn.Module,
    loss_fn: Callable | str,
    data: Any,
    *,
    probes: int = 100,
    seed: int = 0,
    dtype=None,
    device=None,
) -> Trace:
    """Hutchinson's estimator ``mean(z^T H z)`` over Rademacher vectors ``z``; its standard
    error is the sample standard deviation over the square root of the number of probes.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1, bias=False).double()
        >>> x = torch.eye(3, dtype=torch.float64)
        >>> t = trace(net, torch.nn.functional.mse_loss, (x, torch.zeros(3, 1)), probes=4)
        >>> round(t.estimate, 6), t.stderr  # H = 2 I / 3: z^T H z = 2 for every sign vector
        (2.0, 0.0)
    """
    if not isinstance(probes, int) or isinstance(probes, bool) or probes < 2:
        raise CrumpleError(f"probes must be a whole number >= 2, got {probes!r}")
    hessian = Hessian(model, loss_fn, data, dtype=dtype, device=device)
    reference = next(iter(hessian.params.values()))
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(probes):
        z = torch.randint(0, 2, (len(hessian),), generator=generator) * 2 - 1
        z = z.to(device=reference.device, dtype=reference.dtype)
        samples.append(float(z @ (hessian @ z)))
    values = np.array(samples)
    return Trace(float(values.mean()), float(values.std(ddof=1) / math.sqrt(probes)), probes)


def hessian_plane(
    model: nn.Module, loss_fn: Callable | str, data: Any, k: tuple[int, int] = (0, 1), **options
) -> Plane:
    """The work of :meth:`Plane.hessian <crumple.plane.Plane.hessian>` (see there)."""
    if not (isinstance(k, tuple) and len(k) == 2 and all(isinstance(j, int) for j in k)):
        raise CrumpleError(f"k must be two eigenvector indices such as (0, 1), got {k!r}")
    if k[0] == k[1] or min(k) < 0:
        raise CrumpleError(f"k must name two different eigenvectors (0 = the top), got {k!r}")
    found = eigen(model, loss_fn, data, k=max(k) + 1, **options)
    origin = {n: p.detach().clone() for n, p in model.named_parameters()}
    directions = []
    for j in k:
        vector = found.eigenvectors[j]
        directions.append(
            {
                n: vector[n].to(p.dtype) if n in vector else torch.zeros_like(p)
                for n, p in origin.items()
            }
        )
    values = [float(found.eigenvalues[j]) for j in k]
    attrs = {
        "kind": "hessian",
        "eigenvalues": values,
        "eigenvector_index": list(k),
        "axis_names": tuple(f"v{j + 1} (lambda = {v:.4g})" for j, v in zip(k, values)),
    }
    return Plane(origin, tuple(directions), attrs)


def density(
    model: nn.Module,
    loss_fn: Callable | str,
    data: Any,
    *,
    probes: int = 10,
    steps: int = 40,
    bins: int = 400,
    width: float | None = None,
    seed: int = 0,
    dtype=None,
    device=None,
):
    """The Hessian's eigenvalue spectral density by stochastic Lanczos quadrature: for each
    random unit probe ``v``, ``steps`` Lanczos steps (fully reorthogonalised) give nodes
    ``theta_i`` and weights ``tau_i`` with ``sum tau_i f(theta_i) ~ v^T f(H) v``; their
    average over probes, smoothed by a Gaussian of ``width`` (default 1% of the spectrum's
    span), is the density on ``bins`` eigenvalues.

    Returns an ``xarray.Dataset`` with ``density`` over ``eigenvalue`` and the quadrature
    ``nodes`` and ``weights`` over (``probe``, ``node``): ``sum(weights * nodes**k) / probes``
    estimates ``tr(H^k) / n``.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1, bias=False).double()
        >>> x = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> esd = density(net, torch.nn.functional.mse_loss, (x, torch.zeros(3, 1)), probes=2)
        >>> esd.nodes.values[0].round(4).tolist()  # 3 steps on 3 weights: H's eigenvalues
        [0.6667, 2.6667, 6.0]
    """
    import xarray as xr

    hessian = Hessian(model, loss_fn, data, dtype=dtype, device=device)
    n = len(hessian)
    steps = min(steps, n)
    reference = next(iter(hessian.params.values()))
    generator = torch.Generator().manual_seed(seed)
    nodes, weights = np.zeros((probes, steps)), np.zeros((probes, steps))
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
    span = nodes.max() - nodes.min()
    sigma = width if width is not None else max(0.01 * span, 1e-12)
    grid = np.linspace(nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, bins)
    kernel = np.exp(-0.5 * ((grid[:, None, None] - nodes[None]) / sigma) ** 2)
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
