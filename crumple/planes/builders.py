"""The builders behind ``Plane.axes``, ``.random``, ``.between`` and ``.pca``: they read a
model, the weights of other models or a recorded path, and return a :class:`Plane`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Integral
from pathlib import Path

import torch
from torch import Tensor, nn

from crumple.errors import CrumpleError, CrumpleTypeError
from crumple.params import Params, differences, parameters_from, parameters_of, parse_entry
from crumple.plane import Plane, cosine, norm
from crumple.trajectory import Trajectory

NORMALIZATIONS = ("filter", "layer", "model", None)


def axes_plane(model: nn.Module, names: tuple[str, ...]) -> Plane:
    """The work of :meth:`Plane.axes <crumple.plane.Plane.axes>`: one direction per entry.

    Example:
        >>> axes_plane(torch.nn.Linear(1, 1), ("weight",)).at(2.0)["weight"]
        tensor([[2.]])
    """
    origin = parameters_of(model)
    entries = [parse_entry(spec, origin) for spec in names]
    if len(entries) == 2 and entries[0] == entries[1]:
        raise CrumpleError(f"{names[0]!r} and {names[1]!r} are the same entry; name two")
    directions = []
    for name, index in entries:
        origin[name][index] = 0
        direction = {n: torch.zeros_like(p) for n, p in origin.items()}
        direction[name][index] = 1
        directions.append(direction)
    labels = tuple(spec.strip() for spec in names)
    return Plane(origin, tuple(directions), {"kind": "axes", "axis_names": labels})


def random_plane(
    model: nn.Module,
    normalize,
    ignore,
    seed: int,
    ndim: int,
    orthogonalize,
    trainable_only,
    origin: Params | None = None,
) -> Plane:
    """The work of :meth:`Plane.random <crumple.plane.Plane.random>` (see there).

    Every parameter gets its Gaussian draw, so the same seed gives the same directions
    on the parameters that move, whichever are left out. ``origin``: the model's weights
    as :func:`~crumple.params.parameters_of` copies them, when the caller has them already.

    Example:
        >>> random_plane(torch.nn.Linear(2, 2), "filter", "biasbn", 0, 1, False, False).ndim
        1
    """
    if normalize not in NORMALIZATIONS:
        raise CrumpleError(
            f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}; "
            "'filter' is the usual choice for networks (Li et al. 2018)"
        )
    if ignore not in (None, "biasbn"):
        raise CrumpleError(f"ignore must be 'biasbn' or None, got {ignore!r}")
    if ndim not in (1, 2):
        raise CrumpleError(f"ndim must be 1 (a line) or 2 (a plane), got {ndim!r}")
    origin = parameters_of(model) if origin is None else origin
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    frozen = frozen if trainable_only else []
    if frozen and len(frozen) == len(origin):
        raise CrumpleError(
            "trainable_only=True, but no parameter of the model requires grad, so nothing "
            "would move; unfreeze the layers to study (requires_grad_(True)) or leave "
            "trainable_only False"
        )
    moved = {n: p for n, p in origin.items() if n not in frozen}
    generator = torch.Generator().manual_seed(seed)
    directions = []
    for _ in range(ndim):
        draws = {
            n: torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p)
            for n, p in origin.items()
        }
        d = _normalized({n: draws[n] for n in moved}, moved, normalize, ignore)
        directions.append({n: d[n] if n in d else torch.zeros_like(p) for n, p in origin.items()})
    if orthogonalize and ndim == 2:
        directions[1] = _orthogonalized(directions[1], directions[0])
    label = f"{normalize}-normalized" if normalize else "raw"
    attrs = {
        "kind": "random",
        "normalization": str(normalize),
        "ignore": str(ignore),
        "seed": seed,
        "orthogonalized": bool(orthogonalize),
        "trainable_only": bool(trainable_only),
        "axis_names": tuple(f"random direction {k + 1} ({label})" for k in range(ndim)),
    }
    if trainable_only:
        attrs["frozen"] = frozen  # left out: zero in every direction
    return _with_cosine(Plane(origin, tuple(directions), attrs))


def random_planes(
    model: nn.Module, seeds, normalize, ignore, ndim: int, orthogonalize, trainable_only
) -> list[Plane]:
    """One random plane per seed (:meth:`Plane.random <crumple.plane.Plane.random>` given a
    list of seeds), all through one copy of the model's weights.

    Example:
        >>> planes = random_planes(torch.nn.Linear(2, 2), [3, 5], "filter", None, 1, False, False)
        >>> [p.attrs["seed"] for p in planes], planes[0].origin is planes[1].origin
        ([3, 5], True)
    """
    seeds = check_seeds(seeds)
    origin = parameters_of(model)
    options = (normalize, ignore)
    return [
        random_plane(model, *options, s, ndim, orthogonalize, trainable_only, origin) for s in seeds
    ]


def check_seeds(seeds) -> list[int]:
    """``seeds`` as a list of distinct integers, or a :class:`CrumpleError` saying why not.

    Example:
        >>> check_seeds(range(3))
        [0, 1, 2]
        >>> check_seeds([1, 1])
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: seed=[1, 1] repeats 1: equal seeds give equal directions, ...
    """
    fix = "give an integer, or a list of distinct integers such as seed=range(10)"
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise CrumpleError(f"seed={seeds!r} is not an integer or a list of integers; {fix}")
    given = list(seeds)
    wrong = [s for s in given if isinstance(s, bool) or not isinstance(s, Integral)]
    if wrong:
        raise CrumpleError(f"seed={given!r} holds {wrong[0]!r}, not an integer; {fix}")
    if not given:
        raise CrumpleError(f"seed={given!r} is an empty list, so there is no plane to make; {fix}")
    values = [int(s) for s in given]
    repeated = sorted({s for s in values if values.count(s) > 1})
    if repeated:
        raise CrumpleError(
            f"seed={given!r} repeats {', '.join(map(str, repeated))}: equal seeds give equal "
            "directions, so a spread over them would look narrower than it is; give distinct "
            "seeds, e.g. seed=range(10)"
        )
    return values


def between_plane(points: Mapping[str, nn.Module | Params], model: nn.Module | None) -> Plane:
    """The work of :meth:`Plane.between <crumple.plane.Plane.between>`: ``points`` maps the
    labels ``"a"``, ``"b"`` (and ``"c"``) to models or dicts of their weights.

    Example:
        >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
        >>> between_plane({"a": a, "b": b.state_dict()}, None).attrs["axis_names"]
        ('a -> b',)
    """
    reference = model or next((m for m in points.values() if isinstance(m, nn.Module)), None)
    weights = {k: _weights_of(m, k, reference) for k, m in points.items()}
    origin = weights.pop("a")
    for label, point in weights.items():
        _check_same_layout(origin, point, label)
    directions = tuple({n: point[n] - origin[n] for n in origin} for point in weights.values())
    attrs = {"kind": "between", "axis_names": ("a -> b", "a -> c")[: len(directions)]}
    return _with_cosine(Plane(origin, directions, attrs))


def trajectory_of(given) -> Trajectory:
    """``given`` itself if it is a :class:`crumple.Trajectory`, or the one a folder holds
    (the ``to=`` of a :class:`crumple.Recorder`).

    Example:
        >>> trajectory_of("no_such_folder")
        Traceback (most recent call last):
        crumple.errors.CrumpleError: 'no_such_folder' holds no trajectory ...
    """
    if isinstance(given, Trajectory):
        return given
    if isinstance(given, (str, Path)):
        return Trajectory.load(given)
    raise CrumpleTypeError(
        f"trajectory must be a crumple.Trajectory (Recorder(model).trajectory) or the folder "
        f"a Recorder wrote (to=...), got {type(given).__name__}"
    )


def pca_plane(trajectory, ndim: int, origin: nn.Module | Params | None = None) -> Plane:
    """The work of :meth:`Plane.pca <crumple.plane.Plane.pca>` (see there).

    Example:
        >>> from crumple.trajectory import Trajectory
        >>> steps = [{"w": torch.tensor([float(t), t * t, 1.0])} for t in range(4)]
        >>> pca_plane(Trajectory(list(range(4)), steps, [0.0] * 4), 2).ndim
        2
    """
    trajectory = trajectory_of(trajectory)
    n = len(trajectory)
    if ndim not in (1, 2) or n < ndim + 1:
        raise CrumpleError(
            f"a {ndim}-D PCA plane needs at least {ndim + 1} recorded steps, the trajectory "
            f"has {n}; record more often (Recorder(model, every=...))"
        )
    names = trajectory.names()

    def centred_changes(name: str) -> Tensor:  # (T, numel) in float64
        series = trajectory.series(name).double().reshape(n, -1)
        changes = series - series[-1]
        return changes - changes.mean(dim=0)

    gram = sum(m @ m.T for m in map(centred_changes, names))
    values, vectors = torch.linalg.eigh(gram)
    values, vectors = values.flip(0), vectors.flip(1)
    total = float(values.clamp(min=0).sum())
    if total == 0 or float(values[ndim - 1]) <= 1e-12 * total:
        raise CrumpleError(
            f"the path spans fewer than {ndim} directions (the weights barely change); "
            "train longer, or use Plane.random"
        )
    ratios = [float(v) / total for v in values[:ndim]]
    final = trajectory.snapshot(n - 1)
    through = f"the path's last snapshot (step {trajectory.steps[-1]})"
    weights = final if origin is None else _pca_origin(origin, final)
    if any(not torch.equal(weights[n].to(final[n]), final[n]) for n in final):
        final, through = weights, "the weights given"
    directions: tuple[Params, ...] = tuple({} for _ in range(ndim))
    for name in names:
        m = centred_changes(name)
        for k in range(ndim):
            d = m.T @ vectors[:, k] / values[k].sqrt()
            directions[k][name] = d.reshape(final[name].shape).to(final[name])
    attrs = {
        "kind": "pca",
        "explained_variance_ratio": ratios,
        "axis_names": tuple(f"PC{k + 1} ({r:.1%})" for k, r in enumerate(ratios)),
        "through": through,
    }
    return Plane(final, directions, attrs)


def _pca_origin(origin: nn.Module | Params, last: Params) -> Params:
    """The weights a PCA plane passes through: a model's parameters, or those of a
    ``{name: tensor}`` dict (a state dict's buffers left aside), by the path's names."""
    if isinstance(origin, nn.Module):
        weights = parameters_of(origin)
    elif isinstance(origin, Mapping) and all(isinstance(t, Tensor) for t in origin.values()):
        weights = {n: t.detach().clone() for n, t in origin.items() if n in last}
    else:
        raise CrumpleTypeError(
            f"origin must be a model (nn.Module), a {{name: tensor}} dict of its weights or "
            f"None (the path's last snapshot), got {type(origin).__name__}"
        )
    differs = differences(weights, last, "the origin", "the path")
    if differs:
        raise CrumpleError(
            f"the origin given does not match the path's snapshots: {differs}; give the model "
            "the path was recorded from"
        )
    return weights


def _with_cosine(plane: Plane) -> Plane:
    """The plane with the cosine between its directions in its attrs, once the plane's own
    checks (no zero direction) have passed; directions along one line are refused (the
    plane would be a line drawn as a surface)."""
    if plane.ndim == 2:
        plane.attrs["cosine"] = cosine(*plane.directions)
        if abs(plane.attrs["cosine"]) > 1 - 1e-9:
            raise CrumpleError(
                f"the plane's two directions are parallel (cosine {plane.attrs['cosine']:.6f}): "
                "for Plane.between, models b and c lie on one line through a; give a third "
                "model off that line, or draw the line Plane.between(a, b)"
            )
    return plane


def _normalized(direction: Params, weights: Params, normalize, ignore) -> Params:
    out = {}
    for name, d in direction.items():
        w = weights[name]
        if d.dim() <= 1:
            if ignore == "biasbn":
                d = torch.zeros_like(d)
            elif normalize is not None:
                d = w.clone()
        elif normalize == "filter":
            norms_w = w.reshape(len(w), -1).norm(dim=1)
            norms_d = d.reshape(len(d), -1).norm(dim=1)
            d = d * (norms_w / (norms_d + 1e-10)).reshape(-1, *([1] * (d.dim() - 1)))
        elif normalize == "layer":
            d = d * (w.norm() / (d.norm() + 1e-10))
        out[name] = d
    if normalize == "model":
        multi = [n for n in out if out[n].dim() > 1]
        scale = norm({n: weights[n] for n in multi}) / (norm({n: out[n] for n in multi}) + 1e-10)
        out = {n: d * scale if n in multi else d for n, d in out.items()}
    return out


def _orthogonalized(v: Params, u: Params) -> Params:
    """``v`` minus its component along ``u``, rescaled to ``v``'s norm."""
    uu = sum(float((t.double() ** 2).sum()) for t in u.values())
    uv = sum(float((u[n].double() * v[n].double()).sum()) for n in u)
    w = {n: v[n] - (uv / uu) * u[n] for n in v}
    scale = norm(v) / norm(w)
    return {n: t * scale for n, t in w.items()}


def _weights_of(point: nn.Module | Params, label: str, reference: nn.Module | None) -> Params:
    if isinstance(point, nn.Module):
        return parameters_of(point)
    if not isinstance(point, Mapping) or not all(isinstance(t, Tensor) for t in point.values()):
        raise CrumpleTypeError(
            f"model {label} must be an nn.Module or a {{name: tensor}} dict of its weights, "
            f"got {type(point).__name__}"
        )
    if reference is not None:
        return parameters_from(point, reference, f"model {label}'s state dict")
    shared = _shared_names(point)
    others = [n for n, t in point.items() if not t.is_floating_point()] + shared
    if others:
        raise CrumpleError(
            f"model {label} is a dict with entries that are not parameters of their own "
            f"({others}): a state_dict() also holds buffers (BatchNorm statistics) and tied "
            "parameters under each of their names, which the dict alone cannot tell apart; "
            "pass the models (nn.Module) instead, or one of them to read the names from: "
            "Plane.between(state_a, state_b, model=net)"
        )
    return {n: t.detach().clone() for n, t in point.items()}


def _shared_names(state: Mapping[str, Tensor]) -> list[str]:
    """Names after the first of tensors that share their memory (tied weights)."""
    seen: set[tuple] = set()
    shared = []
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.device)
        if t.numel() and key in seen:
            shared.append(name)
        seen.add(key)
    return shared


def _check_same_layout(a: Params, b: Params, label: str) -> None:
    if a.keys() != b.keys():
        raise CrumpleError(
            f"model {label} has other parameters than model a: only in a "
            f"{sorted(a.keys() - b.keys())}, only in {label} {sorted(b.keys() - a.keys())}; "
            "the models must share one architecture"
        )
    resized = [n for n in a if a[n].shape != b[n].shape]
    if resized:
        raise CrumpleError(
            f"model {label} has parameters of other shapes than model a: {resized}; "
            "the models must share one architecture"
        )
