"""Curvature of the exact mean loss over the data: Hessian-vector products
(:class:`Hessian`), the extreme eigenpairs by Lanczos (:func:`eigen`), the trace by
Hutchinson's estimator (:func:`trace`) and the eigenvalue density by stochastic Lanczos
quadrature (:func:`density`).

The loss is the one :func:`crumple.surface` draws: the exact mean over the data (batches
weighed by their samples, or target tokens for ``loss_fn="model"``), in eval mode, the
model untouched. The operator is built once (the data read, the checks run) and passed
to each estimator; ``eigen(model, loss_fn, data, k=1)`` and the like build one for a
single call.

Example:
    >>> import torch, crumple as cr
    >>> net = torch.nn.Linear(2, 1, bias=False).double()
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> H = cr.hessian.Hessian(net, torch.nn.functional.mse_loss, (x, torch.zeros(2, 1)))
    >>> top = cr.hessian.eigen(H, k=1)
    >>> round(float(top.eigenvalues[0]), 6)  # H = 2 X^T X / n = diag(1, 4)
    4.0
    >>> round(cr.hessian.trace(H, probes=4).estimate, 6)  # the same operator: 1 + 4
    5.0
"""

from crumple.hessian.estimators import Trace, density, trace
from crumple.hessian.operator import Hessian, blocks
from crumple.hessian.sharpness import (
    AdaptiveSharpness,
    EpsilonSharpness,
    Sharpness,
    adaptive_sharpness,
    epsilon_sharpness,
    sharpness,
)
from crumple.hessian.spectrum import Eigen, eigen, hessian_plane
from crumple.hessian.tracking import Tracking, stability_threshold

__all__ = [
    "AdaptiveSharpness",
    "Eigen",
    "EpsilonSharpness",
    "Hessian",
    "Sharpness",
    "Trace",
    "Tracking",
    "adaptive_sharpness",
    "blocks",
    "density",
    "eigen",
    "epsilon_sharpness",
    "hessian_plane",
    "sharpness",
    "stability_threshold",
    "trace",
]
