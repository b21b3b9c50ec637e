"""The ``crumple`` command: one parser builder and one function per subcommand. Nothing heavy
(torch, numpy, xarray, plotly) is imported before parsing: the subcommands import it."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from crumple import cli_export, cli_hessian, cli_lm, cli_spread
from crumple import cli_types as types
from crumple.errors import CrumpleError

# each subcommand's line in `crumple --help`, and its description
ABOUT = {
    "demo": (
        "the two-weight network of the article: surface, SGD path, HTML page",
        "Train the article's two-weight network, compute its test-MSE surface "
        "over a grid of the two weights, and write an HTML page and the data.",
    ),
    "surface": (
        "the loss landscape of any model: a plane, a grid, a page and the data",
        "Evaluate a model's loss on a grid over a plane through its weights and "
        "write the run (landscape.zarr, plane.safetensors) and an HTML page to --out.",
    ),
    "plot": (
        "draw a run again: an HTML page, PNG or PDF",
        "Draw a run folder (from crumple surface or crumple demo) as a "
        "self-contained HTML page and/or a static figure.",
    ),
    "info": (
        "what a run folder holds and how complete it is",
        "Print what a run folder holds and how complete it is; --netcdf exports "
        "the surface and the paths to one netCDF file for sharing.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``crumple`` command and its subcommands.

    Example:
        >>> build_parser().parse_args(["info", "run"]).folder
        PosixPath('run')
    """
    from crumple.version import __version__

    parser = argparse.ArgumentParser(
        prog="crumple",
        description="Loss landscapes of PyTorch models in weight space, with the optimizer's path.",
    )
    parser.add_argument("--version", action="version", version=f"crumple {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_demo, _add_surface, cli_hessian.add, _add_plot, cli_export.add, _add_info):
        add(commands)
    return parser


def _command(commands, name: str, run) -> argparse.ArgumentParser:
    """The subcommand ``name``, whose arguments go to ``run``."""
    help, description = ABOUT[name]
    parser = commands.add_parser(name, help=help, description=description)
    parser.set_defaults(run=run)
    return parser


def _add_demo(commands) -> None:
    demo = _command(commands, "demo", _demo)
    add = demo.add_argument
    number, positive, count = types.finite_float, types.positive_float, types.int_at_least
    for flag, dest, default, text in (
        ("--min", "w_min", -2.0, "lowest weight value on both axes (default -2)"),
        ("--max", "w_max", 2.0, "grid end, excluded as in numpy.arange (default 2)"),
    ):
        add(flag, dest=dest, type=number, default=default, help=text)
    add(
        "--step",
        type=positive("--step"),
        default=0.05,
        help="grid spacing (default 0.05: 80 x 80 points)",
    )
    add("--epochs", type=count("--epochs", 0), default=25, help="training epochs (default 25)")
    add("--lr", type=positive("--lr"), default=1e-2, help="learning rate (default 0.01)")
    add(
        "--optimizer",
        choices=types.OPTIMIZERS,
        default="sgd",
        help="sgd, momentum (0.9) or adam (default sgd)",
    )
    add(
        "--compare",
        type=types.optimizers,
        metavar="OPT,OPT,...",
        help="train each of these optimizers from the same start and draw all paths, "
        "e.g. sgd,momentum,adam",
    )
    add(
        "--seed",
        type=count("--seed", 0),
        default=0,
        help="seed for the data and the batch order (default 0)",
    )
    add(
        "--batch-size",
        type=count("--batch-size", 1),
        default=64,
        help="training batch size (default 64)",
    )
    add("--out", type=Path, help="output folder (default out/demo, or out/lm with --lm)")
    cli_lm.add_options(demo)


def _add_surface(commands) -> None:
    surface = _command(commands, "surface", _surface)
    types.add_model_options(surface)
    add = surface.add_argument
    add(
        "--recalibrate",
        default=None,
        metavar="MODULE:LOADER",
        help="recompute BatchNorm statistics at each point from this loader's inputs",
    )
    add("--metric", action="append", default=[], help="extra variable, e.g. accuracy; repeatable")
    add("--curvature", action="store_true", help="also the extreme Hessian eigenvalues per point")
    _add_plane_options(surface)
    cli_spread.add(surface)
    add(
        "--grid",
        type=types.grid_axis,
        default="-1:1:51",  # argparse passes a default given as text through type=
        metavar="START:STOP:NUM|auto[:NUM]",
        help="alpha axis (default -1:1:51); auto: both axes reach where the loss has risen "
        "--rise times over the centre, widened to hold the --trajectory's path",
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
    for option in planes.options().values():
        group.add_argument(types.flag(option), **types.plane_argument(option))


def _add_plot(commands) -> None:
    plot = _command(commands, "plot", _plot)
    plot.add_argument("folder", type=Path, metavar="RUN", help="the run folder")
    plot.add_argument("--html", type=Path, help="write the page here")
    plot.add_argument("--png", type=Path, help="write a static PNG here")
    plot.add_argument("--pdf", type=Path, help="write a static PDF here")
    plot.add_argument("--log", action="store_true", help="draw log10 of the loss")
    plot.add_argument(
        "--zmax", type=types.finite_float, default=None, help="clip the drawn loss at this value"
    )


def _add_info(commands) -> None:
    info = _command(commands, "info", _info)
    info.add_argument("folder", type=Path, metavar="RUN", help="the run folder")
    info.add_argument("--netcdf", type=Path, metavar="FILE", help="also write one netCDF file")


def _demo(args: argparse.Namespace) -> None:
    if cli_lm.chosen(args):
        return cli_lm.run(args)
    n = types.demo_grid_size(args.w_min, args.w_max, args.step)
    args.out.mkdir(parents=True, exist_ok=True)

    from crumple.examples import seed

    optimizers = args.compare or (args.optimizer,)
    print(
        f"crumple demo: {n} x {n} grid, {args.epochs} epochs of {', '.join(optimizers)}, "
        f"lr {args.lr:g}"
    )
    start = time.perf_counter()
    result = seed.run(
        w_min=args.w_min,
        w_max=args.w_max,
        step=args.step,
        epochs=args.epochs,
        lr=args.lr,
        optimizers=optimizers,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    page_path, data_path = seed.write(result, args.out)
    ds = result.surface
    print(
        f"surface: {ds.loss.size:,} points in {ds.attrs['seconds'] * 1e3:.0f} ms; final test MSE "
        + ", ".join(f"{name} {float(p.loss[-1]):.4f}" for name, p in result.paths.items())
        + f"; total {time.perf_counter() - start:.1f} s"
    )
    outside = seed.points_outside(result)
    if outside:
        print(f"{outside} path points lie outside the grid; widen --min/--max to see them on it")
    print(f"wrote {page_path} and {data_path}")


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
        specs.load_model(args.model, getattr(args, o.name))
        for o in kind.options
        if o.kind == "weights" and getattr(args, o.name)
    )
    values = {o.name: getattr(args, o.name) for o in kind.options}
    sources = planes.Sources(model, models, trajectory, loss_fn, batches, values)
    return kind.build(sources)


def _surface(args: argparse.Namespace) -> None:
    kind = _plane_kind(args)
    import crumple as cr
    from crumple import report, specs

    model, loss_fn, batches = types.load_inputs(args)
    metrics = {
        m.rpartition(":")[2]: specs.loss_function(m, "--metric", specs.METRICS) for m in args.metric
    }
    trajectory = cr.Trajectory.load(args.trajectory) if args.trajectory else None
    plane = _plane(args, kind, model, loss_fn, batches, trajectory)
    # how evaluation runs: the options as cr.surface names them (unset ones left to it)
    names = ("data_id", "dask", "chunk_size", "device", "strategy", "max_memory")
    options = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    recalibrate = specs.load_data(args.recalibrate) if args.recalibrate else None
    options |= {"dtype": args.dtype, "recalibrate": recalibrate}
    grid, paths = types.surface_grid(args, model, loss_fn, batches, plane, trajectory, options)
    print(
        f"crumple surface: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{plane.attrs['kind']} plane, grid {grid.shape[0]} x {grid.shape[1]}"
    )
    ds, paths = report.save_surface(
        args.out,
        model,
        loss_fn,
        batches,
        plane,
        grid,
        trajectory=None if paths else trajectory,
        paths=paths,
        store=args.out,
        metrics=metrics,
        progress=True,
        curvature=args.curvature,
        **options,
    )
    cli_spread.run(args, model, loss_fn, batches, grid, options)
    page = report.write_page(args.out, ds, paths)
    print(
        f"{grid.size:,} points in {ds.attrs['seconds']:.1f} s ({ds.attrs['strategy']}); "
        f"wrote {page} and {args.out / cr.store.DATA}"
    )


def _info(args: argparse.Namespace) -> None:
    from crumple.cli_info import describe
    from crumple.run import store

    print(describe(args.folder))
    if args.netcdf:
        print(f"wrote {store.export_netcdf(args.folder, args.netcdf)}")


def _plot(args: argparse.Namespace) -> None:
    if not (args.html or args.png or args.pdf):
        raise CrumpleError("say what to write: --html PAGE, --png FILE and/or --pdf FILE")
    from crumple import plot
    from crumple.plot.static import static_path
    from crumple.run import store

    static = [  # each file's suffix is its option's format, checked before anything is written
        static_path(target, option, f".{option[2:]}")
        for target, option in ((args.png, "--png"), (args.pdf, "--pdf"))
        if target
    ]
    run = store.open_run(args.folder)
    ds = run.pop("surface")
    if args.html:
        options = dict(log=args.log, zmax=args.zmax, **store.beside(args.folder))
        page = plot.report(args.html, ds, run, title=f"crumple: {args.folder}", **options)
        print(f"wrote {page}")
    for target in static:
        print(f"wrote {plot.save_static(ds, target, run, log=args.log, zmax=args.zmax)}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(types.joined_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        args.run(args)
    except CrumpleError as e:
        parser.exit(2, f"crumple {args.command}: error: {e}\n")
    except KeyboardInterrupt:
        out = args.out if args.command == "surface" else None  # the one that resumes
        kept = (
            f"; the finished tiles are kept in {out}: run the same command to resume" if out else ""
        )
        print(f"crumple {args.command}: stopped{kept}", file=sys.stderr)
        sys.exit(130)
