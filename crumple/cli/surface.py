"""``crumple surface``: the loss landscape of any model on a plane from the registry of plane
kinds, written to a run folder with its page (and ``--spread``: :mod:`crumple.cli.spread`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from crumple.cli import options as types
from crumple.cli import spread
from crumple.errors import CrumpleError

ABOUT = (
    "the loss landscape of any model: a plane, a grid, a page and the data",
    "Evaluate a model's loss on a grid over a plane through its weights and "
    "write the run (landscape.zarr, plane.safetensors) and an HTML page to --out.",
)


def add(commands) -> None:
    surface = types.command(commands, "surface", ABOUT, execute)
    types.add_model_options(surface)
    types.add_evaluation_options(surface)
    add = surface.add_argument
    add("--curvature", action="store_true", help="also the extreme Hessian eigenvalues per point")
    _add_plane_options(surface)
    spread.add(surface)
    add(
        "--grid",
        type=types.grid_axis,
        metavar="START:STOP:NUM|auto[:NUM]",
        help=f"alpha axis (default {types.DEFAULT_AXIS}, or with --trajectory {types.DEFAULT_NUM} "
        "points per axis around the path, with room); auto: both axes reach where the loss has "
        "risen --rise times over the centre, widened to hold the --trajectory's path",
    )
    add("--rise", type=types.positive_float("--rise"), help="for --grid auto (default 2)")
    add(
        "--grid-beta",
        type=types.grid_axis,
        metavar="START:STOP:NUM",
        help="beta axis (default: as --grid)",
    )
    add(
        "--max-memory",
        type=types.memory,
        default=None,
        metavar="SIZE",
        help="memory for the points evaluated together, e.g. 4GB (default 2GB)",
    )
    add("--strategy", choices=["auto", *types.STRATEGIES], default="auto")
    add(
        "--chunk-size",
        type=types.int_at_least("--chunk-size", 1),
        default=None,
        metavar="POINTS",
        help="grid points per tile, also the most evaluated together "
        "(default: tiles of about 0.25 s, calls sized from the memory budget)",
    )
    add(
        "--dask",
        default=None,
        metavar="local:N|ADDRESS",
        help="evaluate tiles on Dask: local:4 (four local worker processes) or a scheduler "
        "address such as tcp://host:8786",
    )
    add(
        "--data-id",
        default=None,
        metavar="NAME",
        help="name the data in the run's fingerprint instead of hashing it",
    )
    add("--out", type=Path, default=Path("out/surface"), help="output folder (default out/surface)")


def _add_plane_options(surface: argparse.ArgumentParser) -> None:
    """``--plane`` and every option of every plane kind, from the registry."""
    from crumple import planes

    group = surface.add_argument_group(
        "plane", "the plane through the weights; each kind reads only its own options"
    )
    kinds = "; ".join(f"{k.name}: {k.summary}" for k in planes.KINDS.values())
    group.add_argument(
        "--plane", choices=list(planes.KINDS), default="random", help=f"{kinds} (default random)"
    )
    types.add_plane_kind_options(group)


def _plane_kind(args: argparse.Namespace):
    """The ``--plane`` kind, once its required options are given and no option of another
    kind is."""
    from crumple import planes

    kind = planes.get(args.plane)
    given = [o for o in planes.options().values() if getattr(args, o.name) not in (None, False)]
    for option in given:
        if option not in kind.options + planes.COMMON:
            users = [k.name for k in planes.KINDS.values() if option in k.options]
            raise CrumpleError(
                f"{types.flag(option)} does not apply to --plane {kind.name}: it is for "
                f"--plane {' or '.join(users)}; drop {types.flag(option)}, or choose --plane "
                f"{users[0]}"
            )
    for option in kind.required:
        if option not in given:
            raise CrumpleError(
                f"--plane {kind.name} needs {types.flag(option)}; see crumple surface --help"
            )
    return kind


def _plane(args: argparse.Namespace, kind, model, loss_fn, batches, trajectory):
    """Build the plane from the command line: ``--weights-*`` options become more models."""
    from crumple import planes, specs

    models = tuple(
        specs.load_model(args.model, getattr(args, o.name), types.flag(o))
        for o in kind.options
        if o.kind == "weights" and getattr(args, o.name)
    )
    values = {o.name: getattr(args, o.name) for o in kind.options}
    sources = planes.Sources(model, models, trajectory, loss_fn, batches, values)
    return kind.build(sources)


def _at_path_end(model, trajectory) -> None:
    """Give ``model`` the weights (and the buffers, where recorded) of the trajectory's last
    snapshot, and say so."""
    import torch

    from crumple.params import differences

    k = len(trajectory) - 1
    weights, buffers = trajectory.snapshot(k), trajectory.snapshot_buffers(k)
    own = dict(model.named_parameters())
    differs = differences(own, weights, "the model", "the snapshots")
    if differs:
        raise CrumpleError(
            f"the --trajectory's snapshots do not fit --model: {differs}; give the model the "
            "path was recorded from"
        )
    with torch.no_grad():
        for name, tensor in [*own.items(), *model.named_buffers()]:
            tensor.copy_((weights | buffers).get(name, tensor))
    print(
        f"model: the --trajectory's last snapshot (step {trajectory.steps[k]}), which the pca "
        "plane passes through; give --weights to centre it on other weights"
    )


def execute(args: argparse.Namespace) -> None:
    from crumple.run.lock import writer

    kind = _plane_kind(args)
    if kind.name == "between" and args.weights_b and not args.weights_c:
        raise CrumpleError(
            "--plane between with --weights-b alone has one direction: a line, not a plane; "
            "draw it with crumple line --weights A --weights-b B, or add --weights-c C for "
            "the plane through three models"
        )
    with writer(args.out):  # the one writer of --out, before it is read: another is refused
        _write_run(args, kind)


def _write_run(args: argparse.Namespace, kind) -> None:
    """The run of ``execute``: inputs, plane, grid, surface, spread and page."""
    import crumple as cr
    from crumple import report, specs
    from crumple.landscape import OPTIONS, Landscape

    metrics = types.metrics(args)
    model, loss_fn, batches = types.load_inputs(args)
    trajectory = cr.Trajectory.load(args.trajectory) if args.trajectory else None
    if kind.name == "pca" and not args.weights and trajectory is not None and len(trajectory):
        _at_path_end(model, trajectory)  # the plane passes through the model's weights
    plane = _plane(args, kind, model, loss_fn, batches, trajectory)
    # how evaluation runs: cr.surface's options as given (unset ones left to it); those
    # the command reads itself (the data to recalibrate with, metrics, ...) are passed below
    read_here = ("recalibrate", "metrics", "curvature", "store", "progress", "check")
    options = {
        n: getattr(args, n)
        for n in OPTIONS
        if n not in read_here and getattr(args, n, None) is not None
    }
    recalibrate = specs.load_data(args.recalibrate) if args.recalibrate else None
    options |= {"dtype": args.dtype, "recalibrate": recalibrate}
    landscape = Landscape(
        model,
        loss_fn,
        batches,
        store=args.out,
        metrics=metrics,
        progress=True,
        curvature=args.curvature,
        **options,
    )  # the options parsed once, the data read once for the grid, the path and the surface
    grid, paths = types.surface_grid(args, landscape, plane, trajectory)
    print(
        f"crumple surface: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{plane.attrs['kind']} plane, grid {grid.shape[0]} x {grid.shape[1]}"
    )
    history = None if trajectory is None else trajectory.sharpness()  # curvature in training
    ds, paths = report.save_surface(
        args.out, landscape, plane, grid, paths=paths, sharpness=history
    )
    spread.execute(args, model, loss_fn, batches, grid, options)
    page = report.write_page(args.out, ds, paths)
    print(
        f"{grid.size:,} points in {ds.attrs['seconds']:.1f} s ({ds.attrs['strategy']}); "
        f"wrote {page} and {args.out / cr.store.DATA}"
    )
