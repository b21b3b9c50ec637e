"""The Hessian's extreme eigenpairs by Lanczos on its products with vectors, and the plane
along two eigenvectors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from crumple.checks import whole_number
from crumple.errors import CrumpleError
from crumple.hessian.operator import Hessian, each_block, operator_of
from crumple.params import Params
from crumple.plane import Plane

DENSE_SIZE = 256  # blocks this small are multiplied out and solved densely
TOLERANCE = {torch.float64: 1e-6}  # Lanczos's residual tolerance; 1e-4 for other dtypes
WHICH = ("largest", "smallest", "both")


@dataclass
class Eigen:
    """Eigenpairs of the Hessian: ``eigenvalues`` (descending for ``"largest"`` and
    ``"both"``, ascending for ``"smallest"``), ``eigenvectors`` as parameter dicts (like
    plane directions), ``residuals`` ``|Hv - lambda v| / |lambda|`` of each pair, and the
    Hessian-vector products used."""

    eigenvalues: np.ndarray
    eigenvectors: list[Params]
    residuals: np.ndarray
    products: int

    def __repr__(self) -> str:
        """The numbers, and the eigenvectors by their shapes only.

        Example:
            >>> Eigen(np.array([2.0]), [{"w": torch.zeros(2, 3)}], np.array([0.0]), 12)
            Eigen(eigenvalues=[2.], eigenvectors=1 x {w: (2, 3)}, residuals=[0.], products=12)
        """
        first = next(iter(self.eigenvectors), {})
        shapes = ", ".join(f"{n}: {tuple(t.shape)}" for n, t in first.items())
        return (
            f"Eigen(eigenvalues={self.eigenvalues}, eigenvectors={len(self.eigenvectors)} x "
            f"{{{shapes}}}, residuals={self.residuals}, products={self.products})"
        )


def eigen(
    model: nn.Module | Hessian,
    loss_fn: Callable | str | None = None,
    data: Any = None,
    k: int = 5,
    which: str = "largest",
    *,
    by=None,
    tol: float | None = None,
    seed: int = 0,
    dtype=None,
    device=None,
    max_memory: int | None = None,
) -> Eigen | dict[str, Eigen]:
    """The ``k`` largest or smallest eigenvalues (``which="both"``: the ``k`` largest and
    the ``k`` smallest) of the Hessian of the mean loss, with their eigenvectors, by
    Lanczos (``scipy.sparse.linalg.eigsh``) on Hessian-vector products.

    ``model`` is a :class:`~crumple.hessian.Hessian` built once (``eigen(H, k=5)``; the
    other arguments by keyword), or the model with its ``loss_fn`` and ``data`` (an
    operator is then built from them with ``dtype``, ``device`` and ``max_memory``, as
    :class:`~crumple.hessian.Hessian` takes them): the same numbers either way.

    With ``by`` (``"parameter"``, ``"layer"``, ``"module"`` or ``{group: [names]}``, see
    :func:`crumple.hessian.operator.blocks`), a dict ``{block: Eigen}`` of the diagonal
    blocks' eigenpairs; a block with ``k`` or fewer parameters gives all of its own.
    Blocks of up to 256 parameters are solved densely. ``tol`` is Lanczos's relative
    residual (the eigenvalues' error is about its square times the spectrum's width):
    default 1e-6 in float64, 1e-4 in lower precision. A Hessian that is zero (a loss linear
    in the weights) has eigenvalues 0, with unit vectors for eigenvectors.

    Example:
        >>> import torch
        >>> from crumple.hessian import Hessian
        >>> net = torch.nn.Linear(3, 1, bias=False).double()
        >>> x = torch.eye(3, dtype=torch.float64)
        >>> H = Hessian(net, torch.nn.functional.mse_loss, (x, torch.zeros(3, 1)))
        >>> e = eigen(H, k=2)
        >>> [round(float(v), 6) for v in e.eigenvalues]  # H = 2 I / 3
        [0.666667, 0.666667]
        >>> e2 = eigen(net, torch.nn.functional.mse_loss, (x, torch.zeros(3, 1)), k=2)
        >>> bool((e2.eigenvalues == e.eigenvalues).all())  # model-first: the same numbers
        True
    """
    if which not in WHICH:
        raise CrumpleError(f"which must be one of {', '.join(map(repr, WHICH))}, got {which!r}")
    build = {"dtype": dtype, "device": device, "max_memory": max_memory}
    hessian = operator_of(model, loss_fn, data, "eigen(H, k=5, which=...)", **build)
    n = len(hessian)
    both = which == "both"
    why = f" (the model has {n:,} trainable parameters{', and both ends take 2k' if both else ''})"
    k = whole_number("k", k, 1, n // (1 + both), why)
    seed = whole_number("seed", seed)
    tol = default_tol(hessian) if tol is None else tol
    if not isinstance(tol, float) or not 0 < tol < 1:
        raise CrumpleError(f"tol must be a float between 0 and 1, got {tol!r}")
    return each_block(hessian, by, lambda h: eigenpairs(h, k, which, tol, seed))


def default_tol(hessian: Hessian) -> float:
    return TOLERANCE.get(hessian.reference.dtype, 1e-4)


def eigenpairs(hessian: Hessian, k: int, which: str, tol: float, seed: int) -> Eigen:
    """The work of :func:`eigen` on one operator (``k`` is cut to what it holds)."""
    n, before = len(hessian), hessian.products
    count = min(2 * k if which == "both" else k, n)
    if n <= max(DENSE_SIZE, count + 1):
        values, vectors = _dense(hessian)
        picked = {
            "largest": np.arange(n - 1, n - 1 - count, -1),
            "smallest": np.arange(count),
            "both": np.r_[
                np.arange(n - 1, n - 1 - count // 2, -1), np.arange(count - count // 2)[::-1]
            ],
        }[which]
        values, vectors = values[picked], vectors[:, picked]
    else:
        values, vectors = _lanczos(hessian, count, which, tol, seed)
    reference = hessian.reference
    basis = torch.as_tensor(vectors, dtype=reference.dtype).to(reference.device)
    products = (hessian @ basis).double().cpu().numpy()
    residuals = np.linalg.norm(products - vectors * values, axis=0) / np.maximum(
        np.abs(values), 1e-300
    )
    eigenvectors = [
        {n: t.clone() for n, t in hessian.unflatten(basis[:, j]).items()} for j in range(count)
    ]
    return Eigen(values, eigenvectors, residuals, hessian.products - before)


def _dense(hessian: Hessian) -> tuple[np.ndarray, np.ndarray]:
    """All eigenpairs (ascending) of the Hessian multiplied out column by column."""
    reference = hessian.reference
    identity = torch.eye(len(hessian), dtype=reference.dtype, device=reference.device)
    matrix = (hessian @ identity).double().cpu().numpy()
    return np.linalg.eigh((matrix + matrix.T) / 2)


def _lanczos(hessian: Hessian, count: int, which: str, tol: float, seed: int, shift=None):
    """Eigenpairs by ``eigsh``, sorted as :class:`Eigen` says. ``"both"`` is two runs (one
    for each end converges where ARPACK's mode for both ends stalls on clustered
    eigenvalues). The smallest are the largest of ``shift - H``, ``shift`` about the top
    eigenvalue: the same Krylov space, but ARPACK's accuracy is then relative to the
    spectrum's width, not to eigenvalues near 0 that it could never meet."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

    if which == "both":
        top = _lanczos(hessian, count - count // 2, "largest", tol, seed)
        bottom = _lanczos(hessian, count // 2, "smallest", tol, seed, top[0][0])
        return np.r_[top[0], bottom[0][::-1]], np.c_[top[1], bottom[1][:, ::-1]]
    if which == "smallest" and shift is None:
        shift = _lanczos(hessian, 1, "largest", 1e-2, seed)[0][0]
    n, reference, sign = len(hessian), hessian.reference, -1.0 if which == "smallest" else 1.0
    before = hessian.products

    def apply(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v).reshape(-1)
        t = torch.as_tensor(v, dtype=reference.dtype).to(reference.device)
        product = (hessian @ t).double().cpu().numpy()
        return product if shift is None else shift * v - product

    operator = LinearOperator((n, n), matvec=apply, dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(n)
    try:
        values, vectors = eigsh(operator, k=count, which="LA", tol=tol, v0=start)
    except ArpackNoConvergence as error:
        raise _not_converged(error, count, which, tol, hessian.products - before) from None
    except ArpackError:  # -9, "starting vector is zero": H v0 = 0, so H = 0 (almost surely)
        if np.any(apply(start)):
            raise
        ends = np.arange(count) if sign > 0 else np.arange(n - count, n)  # "both": apart
        return np.zeros(count), np.eye(n)[:, ends]  # every vector is an eigenvector of 0
    if shift is not None:
        values = shift - values
    order = np.argsort(sign * -values)
    return values[order], vectors[:, order]


def _not_converged(error, count: int, which: str, tol: float, products: int) -> CrumpleError:
    return CrumpleError(
        f"Lanczos did not find the {count} {which} eigenvalues to tol={tol:g} within "
        f"{products:,} Hessian-vector products ({len(error.eigenvalues)} converged); "
        "pass a looser tol (1e-4 is plenty to three digits) or a smaller k"
    )


def hessian_plane(
    model: nn.Module | Hessian,
    loss_fn: Callable | str | None = None,
    data: Any = None,
    k: tuple[int, int] = (0, 1),
    **options,
) -> Plane:
    """The work of :meth:`Plane.hessian <crumple.plane.Plane.hessian>` (see there); also
    on a built operator, ``hessian_plane(H, k=(0, 1))``, whose weights are the plane's
    origin (in the model's dtype).

    Example:
        >>> import torch
        >>> from crumple.hessian import Hessian
        >>> net = torch.nn.Linear(2, 1, bias=False).double()
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> H = Hessian(net, torch.nn.functional.mse_loss, (x, torch.zeros(2, 1)))
        >>> hessian_plane(H).attrs["eigenvalues"]  # H = diag(1, 4)
        [4.0, 1.0]
    """
    if not (isinstance(k, tuple) and len(k) == 2 and all(isinstance(j, int) for j in k)):
        raise CrumpleError(f"k must be two eigenvector indices such as (0, 1), got {k!r}")
    if "which" in options:
        raise CrumpleError(
            "Plane.hessian spans the top eigenvectors (k=(0, 1): the two largest "
            "eigenvalues'); it takes no which="
        )
    if k[0] == k[1] or min(k) < 0:
        raise CrumpleError(f"k must name two different eigenvectors (0 = the top), got {k!r}")
    found = eigen(model, loss_fn, data, k=max(k) + 1, **options)
    if isinstance(model, Hessian):
        at = {**model.params, **model.fixed}
        origin = {n: at[n].to(p).clone() for n, p in model.model.named_parameters()}
    else:
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
