"""A line or plane through weight space: an origin and one or two directions.

Geometry only: the weights at given coordinates, a copy on another device, a file. The
builders that read a model, a path or data live in :mod:`crumple.planes`, which imports
this module; the classmethods here import them when called (see that module's docstring).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from crumple.errors import CrumpleError
from crumple.files import save_tensors
from crumple.params import Params, cast


@dataclass(frozen=True)
class Plane:
    """The weights ``origin + a * directions[0] (+ b * directions[1])``.

    Attributes:
        origin: the weights at coordinate 0, one tensor per parameter name.
        directions: one or two dicts with the same names and shapes as ``origin``.
        attrs: facts about the plane: ``kind`` and ``axis_names`` at least.

    Example:
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> plane = Plane.axes(net, "weight")
        >>> plane.at(0.5)["weight"]
        tensor([[0.5000]])
    """

    origin: Params
    directions: tuple[Params, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    touched: tuple[frozenset[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.directions) not in (1, 2):
            raise CrumpleError(
                f"a plane has 1 or 2 directions, got {len(self.directions)}; "
                "use one for a line, two for a plane"
            )
        for k, direction in enumerate(self.directions):
            if direction.keys() != self.origin.keys() or any(
                direction[n].shape != self.origin[n].shape for n in self.origin
            ):
                raise CrumpleError(
                    f"direction {k} must have the origin's parameter names and shapes"
                )
        # the names each direction moves; the others stay shared along that axis
        touched = tuple(
            frozenset(n for n, d in direction.items() if bool(d.any()))
            for direction in self.directions
        )
        object.__setattr__(self, "touched", touched)
        for k, names in enumerate(touched):
            if not names:
                raise CrumpleError(
                    f"direction {k + 1} is zero everywhere, so the plane is degenerate: "
                    "Plane.between needs models whose weights differ, Plane.random a model "
                    "with parameters it does not ignore"
                )

    @property
    def ndim(self) -> int:
        """1 for a line, 2 for a plane."""
        return len(self.directions)

    def __repr__(self) -> str:
        """One line, not the tensors (a model's plane holds millions of numbers).

        Example:
            >>> Plane.axes(torch.nn.Linear(2, 1, bias=False), "weight[0, 1]")
            Plane(axes; 1 direction over 1 tensor, 2 weights)
        """
        from crumple.planes import describe

        n = len(self.origin)
        size = sum(t.numel() for t in self.origin.values())
        lines = "direction" if self.ndim == 1 else "directions"
        return (
            f"Plane({describe(self.attrs)}; {self.ndim} {lines} over {n} "
            f"tensor{'s' * (n != 1)}, {size:,} weight{'s' * (size != 1)})"
        )

    @classmethod
    def axes(cls, model: nn.Module, name_a: str, name_b: str | None = None) -> Plane:
        """The plane whose coordinates are two weights of the model themselves.

        Every other weight keeps the model's value. ``name_a`` and ``name_b`` name a
        parameter with one entry, or one entry of a larger one as ``"name[i, j]"``.

        Example:
            >>> net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
            >>> Plane.axes(net, "0.weight", "1.weight").attrs["axis_names"]
            ('0.weight', '1.weight')
        """
        from crumple.planes import axes_plane  # the builders import this module

        return axes_plane(model, (name_a,) if name_b is None else (name_a, name_b))

    @classmethod
    def random(
        cls,
        model: nn.Module,
        *,
        normalize: str | None = "filter",
        ignore: str | None = "biasbn",
        seed: int | Iterable[int] = 0,
        ndim: int = 2,
        orthogonalize: bool = False,
        trainable_only: bool = False,
    ) -> Plane | list[Plane]:
        """Random Gaussian directions through the model's weights (Li et al. 2018).

        Args:
            model: the origin is its current weights.
            normalize: ``"filter"`` rescales each filter of a direction (a slice along dim 0)
                to the norm of the matching weight filter; ``"layer"`` each tensor to the
                weight tensor's norm; ``"model"`` the whole direction to the weights' norm;
                ``None`` keeps the raw Gaussian.
            ignore: ``"biasbn"`` zeroes the directions of 1-D parameters (biases, norm-layer
                affine weights); with ``None`` they are a copy of the weight, as in Li et al.
                (or Gaussian when ``normalize`` is ``None``).
            seed: seed of the Gaussian draws; the same seed gives the same plane. A list
                (or ``range``) of distinct seeds gives a list of planes, one per seed, that
                share one origin tensor per parameter: the directions of
                :func:`crumple.spread`. Seed ``s``'s first direction is the same for
                ``ndim=1`` and ``ndim=2``.
            ndim: 2 for a plane, 1 for a line.
            orthogonalize: make direction 2 orthogonal to direction 1 (Gram-Schmidt), keeping
                its overall norm.
            trainable_only: leave out the parameters with ``requires_grad=False``: their
                directions are zero, so frozen weights keep their values everywhere on the
                plane (``attrs["frozen"]`` names them; ``"model"`` normalization then uses
                the trainable weights' norm). Off by default, as in Li et al., and because a
                model frozen for inference has no parameter that requires grad.

        The cosine between the two directions is in ``plane.attrs["cosine"]``.

        Example:
            >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
            >>> plane = Plane.random(net, seed=1)
            >>> float(plane.directions[0]["0.bias"].abs().sum())
            0.0
            >>> [p.attrs["seed"] for p in Plane.random(net, seed=range(3), ndim=1)]
            [0, 1, 2]
            >>> _ = net[0].requires_grad_(False)
            >>> Plane.random(net, trainable_only=True).attrs["frozen"]
            ['0.weight', '0.bias']
        """
        from crumple.planes import random_plane, random_planes  # they import this module

        options = (normalize, ignore, ndim, orthogonalize, trainable_only)
        if isinstance(seed, Integral) and not isinstance(seed, bool):
            return random_plane(model, normalize, ignore, int(seed), *options[2:])
        return random_planes(model, seed, *options)

    @classmethod
    def between(
        cls,
        a: nn.Module | Params,
        b: nn.Module | Params,
        c: nn.Module | Params | None = None,
        *,
        model: nn.Module | None = None,
    ) -> Plane:
        """The line through two models' weights, or the plane through three.

        Coordinates ``(0, 0)``, ``(1, 0)`` and ``(0, 1)`` are ``a``, ``b`` and ``c``.
        Each is a model, or a dict of its weights: a ``state_dict()``, or a ``{name:
        tensor}`` dict of its parameters (a ``Trajectory`` snapshot). A state dict also
        holds buffers and each tied parameter under all its names, so it is read by the
        parameter names of a model: ``model``, or else the first of ``a``, ``b``, ``c`` that
        is one. A plane holds parameters only: buffers (BatchNorm running statistics) are
        those of the model passed to :func:`crumple.surface`.

        Example:
            >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
            >>> line = Plane.between(a, b)
            >>> torch.allclose(line.at(1.0)["weight"], b.weight.detach())
            True
            >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
            >>> other = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
            >>> Plane.between(net, other.state_dict()).attrs["kind"]
            'between'
        """
        from crumple.planes import between_plane  # the builders import this module

        points = {k: m for k, m in zip("abc", (a, b, c)) if m is not None}
        return between_plane(points, model)

    @classmethod
    def pca(cls, trajectory, ndim: int = 2, *, origin: nn.Module | Params | None = None) -> Plane:
        """The top principal directions of a training path, through ``origin`` (a model, or
        a ``{name: tensor}`` dict of its weights) or, by default, the path's last point.

        Works on the ``T x T`` Gram matrix of the (centred) weight changes, so the cost is
        ``T^2`` dot products, whatever the number of parameters. The explained-variance
        ratio of each axis is in ``plane.attrs["explained_variance_ratio"]`` and in the
        axis names (``"PC1 (87.3%)"``). ``trajectory``: a :class:`crumple.Trajectory` or the
        folder a :class:`crumple.Recorder` wrote (``to=``). ``plane.attrs["through"]`` says
        which weights the plane passes through.

        Example:
            >>> from crumple.trajectory import Trajectory
            >>> steps = [{"w": torch.tensor([float(t), 2.0 * t, 0.1 * t * t])} for t in range(5)]
            >>> plane = Plane.pca(Trajectory(list(range(5)), steps, [0.0] * 5))
            >>> plane.attrs["axis_names"][0], plane.attrs["through"]
            ('PC1 (99.7%)', "the path's last snapshot (step 4)")
            >>> Plane.pca(Trajectory(list(range(5)), steps, [0.0] * 5),
            ...           origin={"w": torch.zeros(3)}).origin
            {'w': tensor([0., 0., 0.])}
        """
        from crumple.planes import pca_plane  # the builders import this module

        return pca_plane(trajectory, ndim, origin)

    @classmethod
    def hessian(cls, model: nn.Module, loss_fn, data, k: tuple[int, int] = (0, 1), **options):
        """The plane through the model's weights along two Hessian eigenvectors of the mean
        loss (``k``: their ranks from the top, 0 = the largest eigenvalue; unit vectors, so
        coordinates are distances in weight space). The eigenvalues are in
        ``plane.attrs["eigenvalues"]`` and the axis names (``"v1 (lambda = 195.5)"``);
        ``options`` are those of :func:`crumple.hessian.eigen` (``tol``, ``seed``, ...).

        Example:
            >>> net = torch.nn.Linear(3, 1, bias=False).double()
            >>> x = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
            >>> plane = Plane.hessian(net, torch.nn.functional.mse_loss, (x, torch.zeros(3, 1)))
            >>> plane.attrs["axis_names"]
            ('v1 (lambda = 6)', 'v2 (lambda = 2.667)')
        """
        from crumple.planes import hessian_plane  # the builders import this module

        return hessian_plane(model, loss_fn, data, k, **options)

    def save(self, path: str | Path) -> Path:
        """Write the plane (origin, directions, attrs) to a safetensors file; no pickle.

        Example:
            >>> import tempfile
            >>> plane = Plane.axes(torch.nn.Linear(1, 1), "weight", "bias")
            >>> again = Plane.load(plane.save(f"{tempfile.mkdtemp()}/plane.safetensors"))
            >>> again.attrs == plane.attrs
            True
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"origin/{n}": t.contiguous() for n, t in self.origin.items()}
        for k, direction in enumerate(self.directions):
            tensors |= {f"direction{k}/{n}": t.contiguous() for n, t in direction.items()}
        save_tensors(tensors, path, metadata={"crumple_plane": json.dumps(self.attrs)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plane:
        """Read a plane written by :meth:`save`.

        Example:
            >>> import tempfile
            >>> plane = Plane.random(torch.nn.Linear(3, 2), seed=4)
            >>> Plane.load(plane.save(f"{tempfile.mkdtemp()}/p.safetensors")).attrs["seed"]
            4
        """
        from safetensors import safe_open

        fix = "write it again with plane.save(path) (crumple surface writes it with the run)"
        if not Path(path).is_file():
            raise CrumpleError(f"no plane at {str(path)!r}: there is no such file; {fix}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = (f.metadata() or {}).get("crumple_plane")
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        except Exception as e:
            said = str(e).splitlines()[0][:200] if str(e) else ""
            raise CrumpleError(
                f"cannot read a plane from {str(path)!r} ({type(e).__name__}: {said}): it is "
                f"truncated or damaged; {fix}"
            ) from e
        if meta is None:
            raise CrumpleError(f"{str(path)!r} is a safetensors file but not a crumple plane")
        try:
            return cls._from_parts(tensors, meta)
        except (CrumpleError, ValueError) as e:
            raise CrumpleError(f"the plane in {str(path)!r} is damaged: {e}; {fix}") from e

    @classmethod
    def _from_parts(cls, tensors: Params, meta: str) -> Plane:
        """The plane of a file's tensors (``origin/NAME``, ``directionK/NAME``) and its
        ``crumple_plane`` metadata; a ``ValueError`` (or :class:`CrumpleError`) if they are
        not a plane's."""
        try:
            attrs = json.loads(meta)
        except ValueError:
            raise ValueError(f"its metadata {meta[:80]!r} is not JSON") from None
        if not isinstance(attrs, dict) or not isinstance(attrs.get("axis_names", []), list):
            raise ValueError(f"its metadata {meta[:80]!r} is not a plane's (with axis_names)")
        attrs["axis_names"] = tuple(attrs.get("axis_names", ()))
        parts: dict[str, Params] = {}
        for key, t in tensors.items():
            part, _, name = key.partition("/")
            parts.setdefault(part, {})[name] = t
        ndim = len(parts) - 1
        expected = {"origin", *(f"direction{k}" for k in range(ndim))}
        if parts.keys() != expected or ndim < 1:
            raise ValueError(f"it holds the tensors of {sorted(parts)}, not origin, direction0..")
        return cls(parts["origin"], tuple(parts[f"direction{k}"] for k in range(ndim)), attrs)

    def at(self, *coords: Tensor | float) -> Params:
        """The weights at the given coordinates (works under ``torch.func.vmap``).

        Parameters a direction does not touch stay the origin's tensors, so under nested
        vmap everything computed from them is shared across that axis.

        Example:
            >>> net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
            >>> w = Plane.axes(net, "0.weight", "1.weight").at(0.5, -2.0)
            >>> float(w["0.weight"]), float(w["1.weight"])
            (0.5, -2.0)
        """
        if len(coords) != self.ndim:
            raise CrumpleError(f"a {self.ndim}-D plane needs {self.ndim} coordinates")
        params = self.origin
        for k, c in enumerate(coords):
            params = self.shifted(params, k, c)
        return params

    def shifted(
        self, params: Params, k: int, c: Tensor | float, skip: Collection[str] = ()
    ) -> Params:
        """``params + c * directions[k]``, touching only the parameters that direction moves
        and leaving the names in ``skip`` as they are in ``params``.

        Example:
            >>> plane = Plane.axes(torch.nn.Linear(1, 1, bias=False), "weight")
            >>> plane.shifted(plane.origin, 0, 2.0)["weight"]
            tensor([[2.]])
        """
        direction = self.directions[k]
        moved = self.touched[k] - set(skip) if skip else self.touched[k]
        if isinstance(c, float):  # one fused pass
            return {
                n: torch.add(p, direction[n], alpha=c) if n in moved else p
                for n, p in params.items()
            }
        return {n: p + c * direction[n] if n in moved else p for n, p in params.items()}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """A copy with floating-point tensors moved to ``device`` and cast to ``dtype``.

        Example:
            >>> plane = Plane.axes(torch.nn.Linear(1, 1), "weight")
            >>> plane.to(dtype=torch.float64).origin["bias"].dtype
            torch.float64
        """

        def move(params: Params) -> Params:
            return {n: cast(t, device, dtype) for n, t in params.items()}

        return Plane(move(self.origin), tuple(move(d) for d in self.directions), dict(self.attrs))


def cosine(u: Params, v: Params) -> float:
    """The cosine of the angle between two directions, over all their entries.

    Example:
        >>> cosine({"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([1.0, 1.0])})
        0.7071067811865475
    """
    dot = sum(float((u[n].double() * v[n].double()).sum()) for n in u)
    return dot / (norm(u) * norm(v))


def norm(d: Params) -> float:
    """The Euclidean norm of a direction, over all its entries.

    Example:
        >>> norm({"w": torch.tensor([3.0]), "b": torch.tensor([4.0])})
        5.0
    """
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in d.values()))
