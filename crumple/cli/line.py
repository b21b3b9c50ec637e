"""``crumple line``: the loss along one direction through the weights (Li et al.'s first
figure: the line between two models), written to a run folder with its page."""

from __future__ import annotations

import argparse
from pathlib import Path

from crumple.cli import options as types
from crumple.cli.surface import _plane, _plane_kind
from crumple.errors import CrumpleError

ABOUT = (
    "the loss along a line: between two models, a random or Hessian direction, a path's ends",
    "Evaluate a model's loss (and --metric) along one direction through its weights and "
    "write the run (landscape.zarr, plane.safetensors) and an HTML page to --out: between "
    "--weights and --weights-b (t=0 and t=1), along a random direction (--seed), a Hessian "
    "eigenvector (--plane hessian) or a path's first principal direction (--plane pca), or "
    "between the first and last snapshots of a --trajectory.",
)
ENDS = "ends"  # the line from a trajectory's first snapshot (t=0) to its last (t=1)
KINDS = ("random", "between", "hessian", "pca")  # plane kinds whose first direction is a line
BETWEEN_GRID = "-0.25:1.25:61"  # both models, and a quarter of their distance beyond
GRID = "-1:1:51"


def add(commands) -> None:
    line = types.command(commands, "line", ABOUT, execute)
    types.add_model_options(line)
    types.add_evaluation_options(line)
    group = line.add_argument_group(
        "direction", "the line's direction; each kind reads only its own options"
    )
    group.add_argument(
        "--plane",
        choices=[*KINDS, ENDS],
        default=None,
        help="random, between (--weights-b), hessian (the first of --eigenvectors), pca (the "
        f"first principal direction of --trajectory) or {ENDS} (from the --trajectory's first "
        f"snapshot to its last); default: between with --weights-b, {ENDS} with --trajectory, "
        "else random",
    )
    types.add_plane_kind_options(group, leave_out=("axes", "weights_c", "orthogonalize"))
    line.add_argument(
        "--grid",
        type=types.grid_axis,
        default=None,
        metavar="START:STOP:NUM",
        help=f"the line's coordinate t (default {BETWEEN_GRID} between two models or a path's "
        f"ends, else {GRID}); the models' own points are added to it",
    )
    line.add_argument(
        "--out", type=Path, default=Path("out/line"), help="output folder (default out/line)"
    )


def execute(args: argparse.Namespace) -> None:
    from crumple.run.lock import writer

    if args.plane is None:
        args.plane = "between" if args.weights_b else ENDS if args.trajectory else "random"
    if args.plane == ENDS:
        _check_ends(args)
    else:
        _plane_kind(args)  # its options given, no other kind's
    if isinstance(args.grid, types.AutoGrid):
        raise CrumpleError(
            f"--grid auto: crumple line takes START:STOP:NUM, e.g. {BETWEEN_GRID} (both "
            "models and a quarter of their distance beyond)"
        )
    with writer(args.out):  # the one writer of --out, before it is read
        _write_run(args)


def _check_ends(args: argparse.Namespace) -> None:
    """``--plane ends`` needs ``--trajectory`` and takes no option of a plane kind."""
    from crumple import planes

    if not args.trajectory:
        raise CrumpleError(
            f"--plane {ENDS} needs --trajectory DIR, the path whose first and last snapshots "
            "the line joins"
        )
    for option in planes.options().values():
        if option.name != "trajectory" and getattr(args, option.name) not in (None, False):
            raise CrumpleError(
                f"{types.flag(option)} does not apply to --plane {ENDS}, the line between the "
                f"--trajectory's ends; drop {types.flag(option)}"
            )


def _line_plane(args: argparse.Namespace, model, loss_fn, batches, trajectory):
    """The plane whose first direction is the line: between ``--weights`` and
    ``--weights-b``, between the trajectory's first and last snapshots, or from ``--plane``
    (a kind of the registry)."""
    from crumple import planes, specs

    if args.plane == "between":
        return _between(model, specs.load_model(args.model, args.weights_b, "--weights-b"), model)
    if args.plane != ENDS:
        return _plane(args, planes.get(args.plane), model, loss_fn, batches, trajectory)
    if len(trajectory) < 2:
        raise CrumpleError(
            f"--trajectory {str(args.trajectory)!r} holds {len(trajectory)} snapshot(s); the "
            "line between its ends needs two: record more steps"
        )
    last = len(trajectory) - 1
    name = f"step {trajectory.steps[0]} -> step {trajectory.steps[last]}"
    return _between(trajectory.snapshot(0), trajectory.snapshot(last), model, name)


def _between(a, b, model, name: str | None = None):
    """The line from ``a`` to ``b`` (models, or dicts of their weights), its direction taken
    in float64: t=1 is ``b`` itself, not ``b`` rounded through ``b - a`` in float32;
    ``name``: its axis's name (default ``a -> b``)."""
    from torch import nn

    from crumple import planes
    from crumple.plane import Plane

    def wide(point):
        if isinstance(point, nn.Module):
            return {n: p.detach().double() for n, p in point.named_parameters()}
        return {n: t.double() if t.is_floating_point() else t for n, t in point.items()}

    plane = planes.between_plane({"a": wide(a), "b": wide(b)}, model)
    names = (name,) if name else plane.attrs["axis_names"]
    return Plane(plane.origin, plane.directions, {**plane.attrs, "axis_names": names})


def line_coordinates(grid, kind: str):
    """The line's coordinates: ``grid`` (or the default of ``kind``) with the models' own
    points, t=0 (and t=1 on a line between two models), in it exactly.

    Example:
        >>> line_coordinates(None, "between")[[0, 10, 50, -1]].tolist()
        [-0.25, 0.0, 1.0, 1.25]
        >>> line_coordinates(types.grid_axis("0.5:2:4"), "random").tolist()
        [0.0, 0.5, 1.0, 1.5, 2.0]
    """
    import numpy as np

    two = kind in ("between", ENDS)
    t = np.array(types.grid_axis(BETWEEN_GRID if two else GRID) if grid is None else grid)
    for point in (0.0, 1.0) if two else (0.0,):
        near = int(np.argmin(np.abs(t - point)))
        if abs(t[near] - point) <= 1e-9 * (t[-1] - t[0]):
            t[near] = point
        else:
            t = np.sort(np.append(t, point))
    return t


def _write_run(args: argparse.Namespace) -> None:
    """The run of ``execute``: inputs, line, path, data and page."""
    import crumple as cr
    from crumple import report, specs
    from crumple.landscape import Landscape
    from crumple.run import store

    model, loss_fn, batches = types.load_inputs(args)
    trajectory = cr.Trajectory.load(args.trajectory) if args.trajectory else None
    plane = _line_plane(args, model, loss_fn, batches, trajectory)
    t = line_coordinates(args.grid, args.plane)
    options = {"device": args.device} if args.device else {}
    recalibrate = specs.load_data(args.recalibrate) if args.recalibrate else None
    landscape = Landscape(
        model,
        loss_fn,
        batches,
        store=args.out,
        metrics=types.metrics(args),
        progress=True,
        dtype=args.dtype,
        recalibrate=recalibrate,
        **options,
    )
    print(
        f"crumple line: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{args.plane} line, {t.size} points from {t[0]:g} to {t[-1]:g}"
    )
    ds = landscape.line(plane, t)
    paths = {} if trajectory is None else {"path": landscape.project(trajectory, plane)}
    store.save_run(args.out, ds, paths, plane)
    loss = ds.attrs.get("loss_name", "loss")
    page = report.write_page(args.out, ds, paths, title=f"crumple: {loss} along a line")
    marked = (0.0, 1.0) if args.plane in ("between", ENDS) else (0.0,)
    at = ", ".join(f"{float(ds.loss.sel(alpha=x)):.6g} at t={x:g}" for x in marked)
    print(f"loss {at}; {t.size} points in {ds.attrs['seconds']:.1f} s")
    print(f"wrote {page} and {args.out / cr.store.DATA}")
