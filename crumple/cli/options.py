"""How the ``crumple`` command reads its option values: each parser turns the text into a
value or raises ``argparse.ArgumentTypeError`` with what was given and what is allowed.

The options every command that evaluates a user's model shares (``--model``, ``--data``,
``--loss``, ...) are added by :func:`add_model_options` and read by :func:`load_inputs`.

This module and the parser import nothing heavy (numpy is imported inside the parsers that
return arrays), so ``crumple --help`` and a refused option take a fraction of a second; the
names the command offers come from the torch-free :mod:`crumple.names`, which the registries
read too.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from crumple.errors import CrumpleError
from crumple.names import LOSSES, OPTIMIZERS, STRATEGIES  # noqa: F401  (torch-free --help)

if TYPE_CHECKING:
    import numpy as np

MAX_POINTS_PER_AXIS = 2000
DEFAULT_AXIS = "-1:1:51"  # crumple surface's grid axis, without --grid nor --trajectory
DEFAULT_NUM = 51  # points per axis of the grid around a --trajectory's path
MEMORY_UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def command(
    commands, name: str, about: tuple[str, str], execute, *, reads_run: bool = False
) -> argparse.ArgumentParser:
    """The subcommand ``name`` (``about``: its line in ``crumple --help`` and its
    description), whose parsed arguments go to ``execute``; ``reads_run``: its first argument
    is a run folder."""
    help, description = about
    parser = commands.add_parser(name, help=help, description=description)
    parser.set_defaults(execute=execute)
    if reads_run:
        parser.add_argument("folder", type=Path, metavar="RUN", help="the run folder")
    return parser


def positive_float(name: str) -> Callable[[str], float]:
    """A parser of a finite number above 0; ``name`` is the option in its messages.

    Example:
        >>> positive_float("--lr")("0.01")
        0.01
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a positive number, got {text!r}")
        return value

    return parse


def int_at_least(name: str, low: int) -> Callable[[str], int]:
    """A parser of an integer >= ``low``; ``name`` is the option in its messages.

    Example:
        >>> int_at_least("--epochs", 0)("25")
        25
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{name} must be at least {low}, got {value}")
        return value

    return parse


def finite_float(text: str) -> float:
    """A finite number.

    Example:
        >>> finite_float("-2")
        -2.0
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def optimizers(text: str) -> tuple[str, ...]:
    """Distinct optimizer names of the demo, separated by commas.

    Example:
        >>> optimizers("sgd, adam")
        ('sgd', 'adam')
    """
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in OPTIMIZERS]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"--compare {text!r}: give distinct optimizers from {', '.join(OPTIMIZERS)}, "
            "separated by commas"
        )
    return names


class AutoGrid(NamedTuple):
    """``--grid auto[:NUM]``: let :meth:`crumple.Grid.auto` choose both axes' extent."""

    num: int


def grid_axis(text: str) -> np.ndarray | AutoGrid:
    """``START:STOP:NUM``: ``NUM`` evenly spaced coordinates from ``START`` to ``STOP``; or
    ``auto`` / ``auto:NUM``.

    Example:
        >>> grid_axis("-1:1:5")
        array([-1. , -0.5,  0. ,  0.5,  1. ])
        >>> grid_axis("auto:41")
        AutoGrid(num=41)
    """
    if text == "auto" or text.startswith("auto:"):
        num = text.partition(":")[2] or "51"
        if not num.isdigit() or not 2 <= int(num) <= MAX_POINTS_PER_AXIS:
            raise argparse.ArgumentTypeError(
                f"grid {text!r}: auto:NUM needs NUM from 2 to {MAX_POINTS_PER_AXIS}, e.g. auto:51"
            )
        return AutoGrid(int(num))
    parts = text.split(":")
    try:
        start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"grid {text!r} is not START:STOP:NUM, e.g. -1:1:51 (51 points from -1 to 1)"
        ) from None
    if not (math.isfinite(start) and math.isfinite(stop)) or stop <= start or num < 2:
        raise argparse.ArgumentTypeError(
            f"grid {text!r} needs START < STOP (finite) and NUM >= 2, e.g. -1:1:51"
        )
    if num > MAX_POINTS_PER_AXIS:
        raise argparse.ArgumentTypeError(
            f"grid {text!r} has {num} points per axis; at most {MAX_POINTS_PER_AXIS} are allowed"
        )
    import numpy as np

    return np.linspace(start, stop, num)


def memory(text: str) -> int:
    """A size in bytes, as ``512MB`` or ``4GB`` (powers of 1024) or a plain number.

    Example:
        >>> memory("2GB")
        2147483648
    """
    number = text.upper().rstrip("BKMGT")
    unit = text.upper()[len(number) :].strip()
    try:
        value = float(number) * MEMORY_UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"--max-memory {text!r} is not a size; write e.g. 512MB or 4GB"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--max-memory must be positive, got {text!r}")
    return int(value)


def flag(option) -> str:
    """The command line's flag of a plane kind's option.

    Example:
        >>> from crumple import planes
        >>> flag(planes.options()["weights_b"])
        '--weights-b'
    """
    return "--" + option.name.replace("_", "-")


def plane_argument(option) -> dict[str, Any]:
    """``add_argument`` keywords for a plane kind's :class:`~crumple.planes.Option`.

    Every default is ``None`` (off for a switch), so that the command can tell which options
    were given; the kind applies the option's own default.

    Example:
        >>> from crumple import planes
        >>> plane_argument(planes.options()["axes"])["nargs"]
        2
    """
    default = f" (default {option.default})" if option.default is not None else ""
    common = {"default": None, "help": option.help + default}
    kinds = {
        "choice": {"choices": option.choices},
        "count": {"type": int_at_least(flag(option), 0), "metavar": "N"},
        "switch": {"action": "store_true"},
        "entries": {"nargs": 2, "metavar": "NAME"},
        "pair": {"nargs": 2, "type": int_at_least(flag(option), 0), "metavar": "K"},
        "weights": {"metavar": "FILE"},
        "trajectory": {"metavar": "DIR"},
    }
    if option.kind not in kinds:
        raise CrumpleError(
            f"plane option {flag(option)} has kind {option.kind!r}; the command reads "
            f"{', '.join(kinds)}"
        )
    return common | kinds[option.kind] | {"dest": option.name}


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--weights``, ``--data``, ``--loss``, ``--device`` and ``--dtype``: the
    options of a command that evaluates a user's model (:func:`load_inputs` reads them).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_model_options(parser)
        >>> parser.parse_args(["--model", "m:f", "--data", "d:l"]).loss
        'cross_entropy'
    """
    add = parser.add_argument
    add(
        "--model",
        required=True,
        metavar="MODULE:FACTORY",
        help="function or class that builds the model, e.g. mymodels:make_net, or "
        "hf:FOLDER, a Hugging Face model saved with save_pretrained",
    )
    add(
        "--weights",
        metavar="FILE",
        help="state dict to load (torch.save, .safetensors or a Lightning .ckpt)",
    )
    add(
        "--data",
        required=True,
        metavar="MODULE:LOADER",
        help="a DataLoader (of (x, y) pairs, tuples or dicts), or a function returning one",
    )
    add(
        "--loss",
        default="cross_entropy",
        help=f"{', '.join(LOSSES)}, model (the loss the model computes, e.g. a Hugging "
        "Face model given labels) or MODULE:FUNCTION (default cross_entropy)",
    )
    add("--device", default=None, help="e.g. cpu, cuda, cuda:1")
    add(
        "--dtype",
        choices=["float32", "float64"],
        default=None,
        help="the precision to compute in (default: the model's own, float32 for most models)",
    )


def add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    """``--recalibrate`` and ``--metric``: what a command that evaluates the model computes
    beside the loss (:func:`metrics` reads ``--metric``).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_evaluation_options(parser)
        >>> parser.parse_args(["--metric", "accuracy"]).metric
        ['accuracy']
    """
    add = parser.add_argument
    add(
        "--recalibrate",
        default=None,
        metavar="MODULE:LOADER",
        help="recompute BatchNorm statistics at each point from this loader's inputs",
    )
    add("--metric", action="append", default=[], help="extra variable, e.g. accuracy; repeatable")


def metrics(args: argparse.Namespace) -> dict[str, Callable]:
    """The ``--metric`` functions by the name each variable takes.

    Example:
        >>> list(metrics(argparse.Namespace(metric=["accuracy"])))
        ['accuracy']
    """
    from crumple import specs
    from crumple.checks import check_name

    return {
        check_name(m.rpartition(":")[2], "--metric"): specs.loss_function(
            m, "--metric", specs.METRICS
        )
        for m in args.metric
    }


def add_plane_kind_options(group, leave_out: Sequence[str] = ()) -> None:
    """The options of every plane kind from the registry (:mod:`crumple.planes`), but those
    named in ``leave_out``, which still read as ``None``.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_plane_kind_options(parser, leave_out=["axes"])
        >>> args = parser.parse_args(["--seed", "3"])
        >>> args.seed, args.axes
        (3, None)
    """
    from crumple import planes

    for option in planes.options().values():
        if option.name in leave_out:
            group.set_defaults(**{option.name: None})
        else:
            group.add_argument(flag(option), **plane_argument(option))


def load_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The model, the loss function and the data (read once) that the options of
    :func:`add_model_options` name, after a run of the model and the loss on two samples
    (:func:`crumple.specs.check_fit`) that turns shape errors into a clear message."""
    from crumple import specs
    from crumple.batches import load

    loss_fn = specs.loss_function(args.loss)
    model = specs.load_model(args.model, args.weights)
    batches = load(specs.load_data(args.data))
    specs.check_fit(model, loss_fn, batches, data_name="--data", loss_name="--loss")
    return model, loss_fn, batches


def surface_grid(args, landscape, plane, trajectory):
    """The grid ``--grid`` and ``--grid-beta`` give (-1:1:51 without either), with a warning
    naming how many points of the trajectory's path it leaves out; without them but with a
    trajectory, one around its path (:func:`crumple.report.covering_grid`); for ``--grid
    auto``, the one :meth:`crumple.Grid.auto` chooses, widened to hold the path. The path is
    projected first, and returned as the run's paths."""
    import crumple as cr
    from crumple import report

    auto = isinstance(args.grid, AutoGrid)
    if isinstance(args.grid_beta, AutoGrid) and not auto:
        raise CrumpleError("--grid-beta auto: give --grid auto, which chooses both axes")
    if args.rise is not None and not auto:
        raise CrumpleError("--rise is for --grid auto: add --grid auto, or drop --rise")
    if auto and args.grid_beta is not None:
        raise CrumpleError(
            "--grid-beta does not go with --grid auto, which chooses both axes: drop "
            "--grid-beta, or give --grid START:STOP:NUM too"
        )
    if auto and plane.ndim != 2:
        raise CrumpleError(
            f"--grid auto: the {plane.attrs.get('kind', 'given')} plane has one direction, and "
            "crumple surface draws two (--plane between needs --weights-c for a plane)"
        )
    paths = {} if trajectory is None else {"path": landscape.project(trajectory, plane)}
    if auto:
        rise = 2.0 if args.rise is None else args.rise
        grid = report.choose_grid("auto", landscape, plane, paths, num=args.grid.num, rise=rise)
    elif paths and args.grid is None and args.grid_beta is None:
        grid = report.choose_grid(None, landscape, plane, paths, num=DEFAULT_NUM)
    else:
        alpha = grid_axis(DEFAULT_AXIS) if args.grid is None else args.grid
        grid = cr.Grid(alpha, alpha if args.grid_beta is None else args.grid_beta)
        return report.choose_grid(grid, landscape, plane, paths), paths  # warns of points out
    print(f"grid: {grid.chosen}")
    return grid, paths


def demo_grid_size(w_min: float, w_max: float, step: float) -> int:
    """Points per axis of the demo's grid ``arange(w_min, w_max, step)``, within the limit.

    Example:
        >>> demo_grid_size(-2, 2, 0.05)
        80
    """
    if w_max <= w_min:
        raise CrumpleError(
            f"the grid range is empty: --min {w_min:g} is not below --max {w_max:g}; "
            "give --min < --max"
        )
    import numpy as np

    n = len(np.arange(w_min, w_max, step))
    if n > MAX_POINTS_PER_AXIS:
        raise CrumpleError(
            f"--step {step:g} gives {n} points per axis ({n * n:,} in all); at most "
            f"{MAX_POINTS_PER_AXIS} per axis are allowed: raise --step or narrow --min/--max"
        )
    return n


def joined_negative_values(argv: Sequence[str]) -> list[str]:
    """``--grid -1:1:51`` as ``--grid=-1:1:51``: argparse would take ``-1:1:51`` for an option.

    Example:
        >>> joined_negative_values(["--grid", "-1:1:5", "--seed", "2"])
        ['--grid=-1:1:5', '--seed', '2']
    """
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--grid", "--grid-beta") and arg.startswith("-"):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out
