"""The top eigenpair of a symmetric operator by Lanczos from a given start: started from
the previous step's eigenvector, a Hessian that moved a little needs a few products."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Top:
    """The largest eigenvalue, its unit eigenvector, the relative residual
    ``|Av - value v| / |value|``, the products with the operator taken, and whether it
    converged (else it stopped at the most products allowed)."""

    value: float
    vector: Tensor
    residual: float
    products: int
    converged: bool = True


def top_eigenpair(apply: Callable[[Tensor], Tensor], start: Tensor, tol: float, most: int) -> Top:
    """Lanczos with full reorthogonalisation from ``start``, until the top Ritz pair's
    residual (``beta_m |s_m|``, exact for a reorthogonalised basis) is at most ``tol``
    relative to its value (to a thousandth of the largest Ritz value in magnitude, for a
    value nearer 0), or ``most`` products are taken, or the Krylov space is whole. The
    residual returned is relative to the top value itself.

    Example:
        >>> A = torch.diag(torch.tensor([3.0, 1.0, -5.0], dtype=torch.float64))
        >>> top = top_eigenpair(lambda v: A @ v, torch.ones(3, dtype=torch.float64), 1e-10, 10)
        >>> round(top.value, 12), [round(x, 12) for x in top.vector.abs().tolist()]
        (3.0, [1.0, 0.0, 0.0])
        >>> again = top_eigenpair(lambda v: A @ v, top.vector, 1e-10, 10)  # warm: one product
        >>> again.products
        1
    """
    norm = start.norm()
    if not torch.isfinite(norm) or norm == 0:
        start = torch.ones_like(start)
        norm = start.norm()
    basis = [start / norm]
    alphas: list[float] = []
    betas: list[float] = []
    n = start.numel()
    while True:
        w = apply(basis[-1])
        alphas.append(float(w @ basis[-1]))
        stacked = torch.stack(basis)
        for _ in range(2):  # twice is enough (Giraud et al. 2005)
            w = w - stacked.T @ (stacked @ w)
        beta = float(w.norm())
        values, vectors = np.linalg.eigh(_tridiagonal(alphas, betas))
        value, ritz = float(values[-1]), vectors[:, -1]
        scale = max(abs(value), float(np.abs(values).max()), 1e-300)
        residual = beta * abs(float(ritz[-1])) / max(abs(value), 1e-300)
        # relative to the value, or to a thousandth of the spectrum's width for a top
        # eigenvalue closer to 0 than that (it could never meet a tolerance of its own)
        small = beta * abs(float(ritz[-1])) <= tol * max(abs(value), 1e-3 * scale)
        whole = beta <= 1e-12 * scale or len(basis) >= n  # an invariant subspace
        if small or whole or len(basis) >= most or not np.isfinite(beta):
            coefficients = torch.as_tensor(ritz, dtype=stacked.dtype, device=stacked.device)
            vector = stacked.T @ coefficients
            vector = vector / vector.norm()
            residual = 0.0 if beta <= 1e-12 * scale else residual
            return Top(value, vector, residual, len(basis), small or whole)
        betas.append(beta)
        basis.append(w / beta)


def _tridiagonal(alphas: list[float], betas: list[float]) -> np.ndarray:
    return np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
