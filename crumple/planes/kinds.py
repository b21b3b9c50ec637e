"""The plane kinds crumple ships, one ``register`` call each, and the command-line options
they read. A new kind is a builder and one entry here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from crumple.errors import CrumpleError
from crumple.planes.registry import TRAJECTORY, Option, PlaneKind, Sources, register

if TYPE_CHECKING:
    from crumple.plane import Plane

# The builders (and torch) are imported inside the functions below: `crumple --help` reads
# the kinds and their options without importing torch.

NORMALIZE = Option(
    "normalize",
    "random plane normalization",
    choices=("filter", "layer", "model", "none"),
    default="filter",
)
IGNORE = Option(
    "ignore", "random plane: zero 1-D parameters", choices=("biasbn", "none"), default="biasbn"
)
SEED = Option("seed", "random plane: seed of the directions", kind="count", default=0)
ORTHOGONALIZE = Option(
    "orthogonalize", "random plane: make direction 2 orthogonal to direction 1", kind="switch"
)
TRAINABLE_ONLY = Option(
    "trainable_only",
    "random plane: leave parameters with requires_grad=False where they are",
    kind="switch",
)
AXES = Option("axes", "axes plane: two entries, e.g. fc.weight[0,3] fc.bias[1]", kind="entries")
WEIGHTS_B = Option("weights_b", "between: second model's weights", kind="weights")
WEIGHTS_C = Option("weights_c", "between: third model's weights", kind="weights")
EIGENVECTORS = Option(
    "eigenvectors",
    "hessian plane: the two eigenvectors along its axes, 0 = the largest eigenvalue's",
    kind="pair",
    default=(0, 1),
)


def random_options(sources: Sources) -> dict[str, Any]:
    """The random plane's options as :meth:`Plane.random <crumple.plane.Plane.random>`'s
    keywords ("none" read as None), for ``--plane random`` and ``--spread``."""

    def chosen(option: Option) -> str | None:
        value = sources.option(option)
        return None if value == "none" else value

    return {
        "normalize": chosen(NORMALIZE),
        "ignore": chosen(IGNORE),
        "seed": sources.option(SEED),
        "orthogonalize": bool(sources.option(ORTHOGONALIZE)),
        "trainable_only": bool(sources.option(TRAINABLE_ONLY)),
    }


def _random_from(sources: Sources) -> Plane:
    from crumple.planes.builders import random_plane

    return random_plane(sources.model, ndim=2, **random_options(sources))


def _axes_from(sources: Sources) -> Plane:
    from crumple.planes.builders import axes_plane

    names = sources.option(AXES)
    if not names:
        raise CrumpleError(
            f"an axes plane needs one or two entries in options['axes'], got {names!r}; "
            "e.g. options={'axes': ['fc.weight[0, 3]', 'fc.bias[1]']}"
        )
    return axes_plane(sources.model, tuple(names))


def _between_from(sources: Sources) -> Plane:
    from crumple.planes.builders import between_plane

    if not 1 <= len(sources.models) <= 2:
        raise CrumpleError(
            f"a between plane needs one or two more models in Sources.models, got "
            f"{len(sources.models)}; e.g. Sources(model_a, models=(model_b,))"
        )
    return between_plane(dict(zip("abc", (sources.model, *sources.models))), sources.model)


def _aligned_from(sources: Sources) -> Plane:
    import torch
    from torch import nn

    from crumple.alignment import align
    from crumple.plane import Plane
    from crumple.planes.builders import between_plane

    if len(sources.models) != 1:
        raise CrumpleError(
            f"an aligned plane needs the second model in Sources.models, got "
            f"{len(sources.models)}; e.g. Sources(model_a, models=(model_b,))"
        )
    b = sources.models[0]
    if not isinstance(b, nn.Module):  # weights: into a copy of the model's architecture
        b = _with_weights(sources.model, b)
    aligned = align(sources.model, b)
    if all(torch.equal(t, b.state_dict()[n]) for n, t in aligned.state_dict().items()):
        raise CrumpleError(
            "b's hidden units already match a's: weight matching finds no permutation, so "
            "the aligned b is b and this plane would be the line between a and b; draw that "
            "line (crumple line, or --plane between)"
        )
    points = {"a": sources.model, "b": b, "c": aligned}
    plane = between_plane(points, sources.model)
    attrs = {**plane.attrs, "kind": "aligned", "third": "b aligned"}
    attrs["axis_names"] = ("a -> b", "a -> b aligned")
    return Plane(plane.origin, plane.directions, attrs)


def _with_weights(model, weights):
    import copy

    from crumple.params import parameters_from

    other = copy.deepcopy(model)
    other.load_state_dict({**other.state_dict(), **parameters_from(weights, model, "weights_b")})
    return other


def _pca_from(sources: Sources) -> Plane:
    from crumple.planes.builders import pca_plane

    if sources.trajectory is None:
        raise CrumpleError(
            "a pca plane needs a recorded path in Sources.trajectory, got None; e.g. "
            "Sources(model, trajectory=Trajectory.load(folder))"
        )
    return pca_plane(sources.trajectory, 2, sources.model)  # through the model's weights


def _hessian_from(sources: Sources) -> Plane:
    from crumple.hessian import hessian_plane

    if sources.loss_fn is None or sources.data is None:
        raise CrumpleError(
            "a hessian plane needs the loss and the data in Sources.loss_fn and Sources.data, "
            f"got {type(sources.loss_fn).__name__} and {type(sources.data).__name__}; e.g. "
            "Sources(model, loss_fn=F.cross_entropy, data=loader)"
        )
    k = tuple(int(j) for j in sources.option(EIGENVECTORS))
    return hessian_plane(sources.model, sources.loss_fn, sources.data, k=k)


def _describe_random(attrs: Mapping[str, Any]) -> str:
    normalization = str(attrs.get("normalization", "None"))
    words = ["random", "raw" if normalization == "None" else f"{normalization}-normalized"]
    if attrs.get("trainable_only"):
        frozen = attrs.get("frozen") or []
        words.append(f"trainable parameters only ({len(frozen)} frozen left out)")
    return ", ".join(words)


def _describe_pca(attrs: Mapping[str, Any]) -> str:
    ratios = list(attrs.get("explained_variance_ratio") or [])
    shares = " + ".join(f"{float(r):.1%}" for r in ratios)
    through = f", through {attrs['through']}" if attrs.get("through") else ""
    return (f"pca, {shares} of the path's variance" if ratios else "pca") + through


def _describe_hessian(attrs: Mapping[str, Any]) -> str:
    values = " and ".join(f"{float(v):.4g}" for v in attrs.get("eigenvalues") or [])
    return f"hessian, lambda = {values}" if values else "hessian"


register(
    PlaneKind(
        "random",
        "random Gaussian directions, normalized filter by filter (Li et al. 2018)",
        _random_from,
        optional=(NORMALIZE, IGNORE, SEED, ORTHOGONALIZE, TRAINABLE_ONLY),
        comparable=True,
        describe=_describe_random,
    )
)
register(
    PlaneKind(
        "axes",
        "two weights of the model: the coordinates are their values",
        _axes_from,
        required=(AXES,),
        comparable=True,
    )
)
register(
    PlaneKind(
        "between",
        "the plane through two or three models: (0, 0) a, (1, 0) b, (0, 1) c",
        _between_from,
        required=(WEIGHTS_B,),
        optional=(WEIGHTS_C,),
    )
)
register(
    PlaneKind(
        "pca",
        "the top two principal directions of a recorded training path, through the model's "
        "weights (--weights; without it, the path's last snapshot)",
        _pca_from,
        required=(TRAJECTORY,),
        describe=_describe_pca,
    )
)
register(
    PlaneKind(
        "hessian",
        "two eigenvectors of the loss's Hessian (Lanczos), by default the top two",
        _hessian_from,
        optional=(EIGENVECTORS,),
        comparable=True,
        describe=_describe_hessian,
    )
)
register(
    PlaneKind(
        "aligned",
        "the plane through a, b and b with its hidden units permuted to match a (weight "
        "matching, the same function as b): (0, 0) a, (1, 0) b, (0, 1) b aligned",
        _aligned_from,
        required=(WEIGHTS_B,),
    )
)
