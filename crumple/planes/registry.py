"""The registry of plane kinds: what a kind is (:class:`PlaneKind`), what it is built from
(:class:`Sources`), the options it reads (:class:`Option`), and the look-ups the CLI, the
figures and the page use."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crumple.errors import CrumpleError

if TYPE_CHECKING:  # annotations only: the registry loads without torch, for `crumple --help`
    from torch import nn

    from crumple.plane import Plane


@dataclass(frozen=True)
class Option:
    """An option that plane kinds read (the command line's flag is ``--`` and the name with
    dashes: ``weights_b`` is ``--weights-b``).

    Attributes:
        name: the option's key in ``Sources.options``, e.g. ``"normalize"``.
        help: one line for ``--help``.
        kind: how the value is read: ``"choice"`` (one of ``choices``), ``"count"`` (an
            integer >= 0), ``"pair"`` (two integers >= 0), ``"switch"`` (on when given),
            ``"entries"`` (two parameter entries), ``"weights"`` (a weights file: one more
            model in ``Sources.models``) or ``"trajectory"`` (a ``Recorder`` folder:
            ``Sources.trajectory``).
        choices: the allowed values of a ``"choice"``.
        default: the value when the option is not given.

    Example:
        >>> Option("weights_b", "second model", kind="weights").kind
        'weights'
    """

    name: str
    help: str
    kind: str = "choice"
    choices: tuple[str, ...] = ()
    default: Any = None


@dataclass(frozen=True)
class Sources:
    """What a plane kind is built from; a kind reads the parts it needs.

    Attributes:
        model: the model whose weights the plane passes through.
        models: more models (``between``), in order.
        trajectory: a recorded training path (``pca``), or ``None``.
        loss_fn, data: the loss and the data, for kinds that evaluate the model.
        options: option values by :attr:`Option.name`; one missing or ``None`` takes the
            option's default.

    Example:
        >>> import torch
        >>> seed = Option("seed", "seed of the directions", kind="count", default=0)
        >>> Sources(torch.nn.Linear(1, 1), options={"seed": 3}).option(seed)
        3
    """

    model: nn.Module
    models: tuple[nn.Module, ...] = ()
    trajectory: Any = None
    loss_fn: Any = None
    data: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, option: Option) -> Any:
        """The option's value, or its default when it was not given."""
        value = self.options.get(option.name)
        return option.default if value is None else value


@dataclass(frozen=True)
class PlaneKind:
    """One kind of plane: how to build it and what to know about its coordinates.

    Attributes:
        name: the ``plane.attrs["kind"]`` of its planes and the ``--plane`` choice.
        summary: one line for people.
        build: makes the plane from :class:`Sources`.
        required: options the kind cannot do without.
        optional: options it also reads; any other plane option is refused for it.
        comparable: a unit along each axis is the same length in weight space, and means the
            same in another run of this kind, so figures draw both axes to one scale.
        describe: the words for a plane of this kind given its attrs (``None``: its name).

    Example:
        >>> get("between").required[0].name
        'weights_b'
    """

    name: str
    summary: str
    build: Callable[[Sources], Plane]
    required: tuple[Option, ...] = ()
    optional: tuple[Option, ...] = ()
    comparable: bool = False
    describe: Callable[[Mapping[str, Any]], str] | None = None

    @property
    def options(self) -> tuple[Option, ...]:
        """The options this kind reads, required ones first."""
        return self.required + self.optional


KINDS: dict[str, PlaneKind] = {}
TRAJECTORY = Option(
    "trajectory",
    "a Recorder(model, to=DIR) folder: the pca plane's path, drawn on any plane",
    kind="trajectory",
)
COMMON = (TRAJECTORY,)  # options every kind accepts: a recorded path is drawn on any plane


def register(kind: PlaneKind) -> PlaneKind:
    """Add a kind to :data:`KINDS`; an option name must mean the same in every kind.

    Example:
        >>> fixed = PlaneKind("fixed", "two given directions", build=lambda s: None)
        >>> register(fixed).name in KINDS
        True
        >>> del KINDS["fixed"]
    """
    if kind.name in KINDS:
        raise CrumpleError(f"a plane kind named {kind.name!r} is registered already")
    known = options()
    for option in kind.options:
        if known.get(option.name, option) != option:
            raise CrumpleError(
                f"plane kind {kind.name!r} defines option {option.name!r} differently from the "
                "kinds registered before; reuse their Option"
            )
    KINDS[kind.name] = kind
    return kind


def get(name: str) -> PlaneKind:
    """The registered kind called ``name``.

    Example:
        >>> get("axes").comparable
        True
    """
    if name not in KINDS:
        raise CrumpleError(
            f"unknown plane kind {name!r}; the kinds are {', '.join(KINDS)} "
            "(add one with crumple.planes.register)"
        )
    return KINDS[name]


def options() -> dict[str, Option]:
    """Every option of every kind, and the common ones, by name.

    Example:
        >>> "axes" in options() and "trajectory" in options()
        True
    """
    return {o.name: o for kind in KINDS.values() for o in kind.options} | {
        o.name: o for o in COMMON
    }


def build(name: str, sources: Sources) -> Plane:
    """A plane of the kind called ``name``.

    Example:
        >>> import torch
        >>> build("random", Sources(torch.nn.Linear(2, 2), options={"seed": 1})).attrs["seed"]
        1
    """
    return get(name).build(sources)


def comparable(name: str | None) -> bool:
    """Whether planes of this kind draw both axes to one scale (``False`` for unknown kinds).

    Example:
        >>> comparable("random"), comparable("pca"), comparable("custom")
        (True, False, False)
    """
    return name in KINDS and KINDS[name].comparable


def describe(attrs: Mapping[str, Any]) -> str:
    """A plane in words, from its attrs (``plane.attrs``, or a dataset's ``plane_*`` attrs
    with the prefix taken off).

    Example:
        >>> describe({"kind": "random", "normalization": "filter"})
        'random, filter-normalized'
    """
    name = str(attrs.get("kind", "custom"))
    kind = KINDS.get(name)
    return kind.describe(attrs) if kind is not None and kind.describe else name
