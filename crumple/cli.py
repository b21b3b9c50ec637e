"""The ``crumple`` command."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crumple.errors import CrumpleError
from crumple.specs import LOSSES

MAX_POINTS_PER_AXIS = 2000
PLANES = ("random", "axes", "between", "pca")


def _positive_float(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a positive number, got {text!r}")
        return value

    return parse


def _int_at_least(name: str, low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{name} must be at least {low}, got {value}")
        return value

    return parse


def _optimizers(text: str) -> tuple[str, ...]:
    from crumple.examples.seed import OPTIMIZERS

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in OPTIMIZERS]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"--compare {text!r}: give distinct optimizers from {', '.join(OPTIMIZERS)}, "
            "separated by commas"
        )
    return names


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _grid_axis(text: str) -> np.ndarray:
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
    return np.linspace(start, stop, num)


def _memory(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
    number = text.upper().rstrip("BKMGT")
    unit = text.upper()[len(number) :].strip() or ""
    try:
        value = float(number) * units[unit if unit != "" else ""]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"--max-memory {text!r} is not a size; write e.g. 512MB or 4GB"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--max-memory must be positive, got {text!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    from crumple import __version__
    from crumple.examples.seed import OPTIMIZERS

    parser = argparse.ArgumentParser(
        prog="crumple",
        description="Loss landscapes of PyTorch models in weight space, with the optimizer's path.",
    )
    parser.add_argument("--version", action="version", version=f"crumple {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="the two-weight network of the article: surface, SGD path, HTML page",
        description="Train the article's two-weight network, compute its test-MSE surface "
        "over a grid of the two weights, and write an HTML page and the data.",
    )
    demo.add_argument(
        "--min",
        dest="w_min",
        type=_finite_float,
        default=-2.0,
        help="lowest weight value on both axes (default -2)",
    )
    demo.add_argument(
        "--max",
        dest="w_max",
        type=_finite_float,
        default=2.0,
        help="grid end, excluded as in numpy.arange (default 2)",
    )
    demo.add_argument(
        "--step",
        type=_positive_float("--step"),
        default=0.05,
        help="grid spacing (default 0.05: 80 x 80 points)",
    )
    demo.add_argument(
        "--epochs",
        type=_int_at_least("--epochs", 0),
        default=25,
        help="training epochs (default 25)",
    )
    demo.add_argument(
        "--lr", type=_positive_float("--lr"), default=1e-2, help="learning rate (default 0.01)"
    )
    demo.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="sgd",
        help="sgd, momentum (0.9) or adam (default sgd)",
    )
    demo.add_argument(
        "--compare",
        type=_optimizers,
        default=None,
        metavar="OPT,OPT,...",
        help="train each of these optimizers from the same start and draw all paths, "
        "e.g. sgd,momentum,adam",
    )
    demo.add_argument(
        "--seed",
        type=_int_at_least("--seed", 0),
        default=0,
        help="seed for the data and the batch order (default 0)",
    )
    demo.add_argument(
        "--batch-size",
        type=_int_at_least("--batch-size", 1),
        default=64,
        help="training batch size (default 64)",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)"
    )
    demo.set_defaults(run=_demo)

    surface = commands.add_parser(
        "surface",
        help="the loss landscape of any model: a plane, a grid, a page and the data",
        description="Evaluate a model's loss on a grid over a plane through its weights and "
        "write the run (landscape.zarr, plane.safetensors) and an HTML page to --out.",
    )
    surface.add_argument(
        "--model",
        required=True,
        metavar="MODULE:FACTORY",
        help="function or class that builds the model, e.g. mymodels:make_net",
    )
    surface.add_argument(
        "--weights", metavar="FILE", help="state dict to load (torch.save or .safetensors)"
    )
    surface.add_argument(
        "--data",
        required=True,
        metavar="MODULE:LOADER",
        help="a DataLoader, or a function returning one or an (x, y) pair",
    )
    surface.add_argument(
        "--loss",
        default="cross_entropy",
        help=f"{', '.join(LOSSES)} or MODULE:FUNCTION (default cross_entropy)",
    )
    surface.add_argument(
        "--metric", action="append", default=[], help="extra variable, e.g. accuracy; repeatable"
    )
    surface.add_argument(
        "--plane", choices=PLANES, default="random", help="random (default), axes, between or pca"
    )
    surface.add_argument(
        "--normalize",
        choices=["filter", "layer", "model", "none"],
        default="filter",
        help="random plane normalization (default filter)",
    )
    surface.add_argument(
        "--ignore",
        choices=["biasbn", "none"],
        default="biasbn",
        help="random plane: zero 1-D parameters (default biasbn)",
    )
    surface.add_argument("--seed", type=_int_at_least("--seed", 0), default=0)
    surface.add_argument(
        "--orthogonalize",
        action="store_true",
        help="random plane: make direction 2 orthogonal to direction 1",
    )
    surface.add_argument(
        "--axes",
        nargs=2,
        metavar="NAME",
        help="axes plane: two entries, e.g. fc.weight[0,3] fc.bias[1]",
    )
    surface.add_argument("--weights-b", metavar="FILE", help="between: second model's weights")
    surface.add_argument("--weights-c", metavar="FILE", help="between: third model's weights")
    surface.add_argument(
        "--trajectory",
        metavar="DIR",
        help="a Recorder(model, to=DIR) folder: the pca plane's path, drawn on any plane",
    )
    surface.add_argument(
        "--grid",
        type=_grid_axis,
        default=_grid_axis("-1:1:51"),
        metavar="START:STOP:NUM",
        help="alpha axis (default -1:1:51)",
    )
    surface.add_argument(
        "--grid-beta",
        type=_grid_axis,
        metavar="START:STOP:NUM",
        help="beta axis (default: as --grid)",
    )
    surface.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1")
    surface.add_argument("--dtype", choices=["float32", "float64"], default=None)
    surface.add_argument(
        "--max-memory",
        type=_memory,
        default=None,
        metavar="SIZE",
        help="memory for the points evaluated together, e.g. 4GB (default 2GB)",
    )
    surface.add_argument("--strategy", choices=["auto", "vmap", "loop"], default="auto")
    surface.add_argument(
        "--chunk-size",
        type=_int_at_least("--chunk-size", 1),
        default=None,
        metavar="POINTS",
        help="grid points per tile, also the most evaluated together (default: tiles of "
        "about 0.25 s, calls sized from the memory budget)",
    )
    surface.add_argument(
        "--dask",
        default=None,
        metavar="local:N|ADDRESS",
        help="evaluate tiles on Dask: local:4 (four local worker processes) or a scheduler "
        "address such as tcp://host:8786",
    )
    surface.add_argument(
        "--data-id",
        default=None,
        metavar="NAME",
        help="name the data in the run's fingerprint instead of hashing it",
    )
    surface.add_argument(
        "--out", type=Path, default=Path("out/surface"), help="output folder (default out/surface)"
    )
    surface.set_defaults(run=_surface)

    plot_cmd = commands.add_parser(
        "plot",
        help="draw a run again: an HTML page, PNG or PDF",
        description="Draw a run folder (from crumple surface or crumple demo) as a "
        "self-contained HTML page and/or a static figure.",
    )
    plot_cmd.add_argument("folder", type=Path, metavar="RUN", help="the run folder")
    plot_cmd.add_argument("--html", type=Path, help="write the page here")
    plot_cmd.add_argument("--png", type=Path, help="write a static PNG here")
    plot_cmd.add_argument("--pdf", type=Path, help="write a static PDF here")
    plot_cmd.add_argument("--log", action="store_true", help="draw log10 of the loss")
    plot_cmd.add_argument(
        "--zmax", type=_finite_float, default=None, help="clip the drawn loss at this value"
    )
    plot_cmd.set_defaults(run=_plot)

    info = commands.add_parser(
        "info",
        help="what a run folder holds and how complete it is",
        description="Print what a run folder holds and how complete it is; --netcdf exports "
        "the surface and the paths to one netCDF file for sharing.",
    )
    info.add_argument("folder", type=Path, metavar="RUN", help="the run folder")
    info.add_argument("--netcdf", type=Path, metavar="FILE", help="also write one netCDF file")
    info.set_defaults(run=_info)
    return parser


def _check_grid(args: argparse.Namespace) -> int:
    if args.w_max <= args.w_min:
        raise CrumpleError(
            f"the grid range is empty: --min {args.w_min:g} is not below --max {args.w_max:g}; "
            "give --min < --max"
        )
    n = len(np.arange(args.w_min, args.w_max, args.step))
    if n > MAX_POINTS_PER_AXIS:
        raise CrumpleError(
            f"--step {args.step:g} gives {n} points per axis ({n * n:,} in all); at most "
            f"{MAX_POINTS_PER_AXIS} per axis are allowed: raise --step or narrow --min/--max"
        )
    return n


def _demo(args: argparse.Namespace) -> None:
    n = _check_grid(args)
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


def _check_surface_args(args: argparse.Namespace) -> None:
    needs = {
        "axes": ("--axes", args.axes),
        "between": ("--weights-b", args.weights_b),
        "pca": ("--trajectory", args.trajectory),
    }
    if args.plane in needs and needs[args.plane][1] is None:
        option = needs[args.plane][0]
        raise CrumpleError(f"--plane {args.plane} needs {option}; see crumple surface --help")
    if args.plane == "axes" or args.weights_c is None or args.plane == "between":
        return
    raise CrumpleError("--weights-c is for --plane between only")


def _surface(args: argparse.Namespace) -> None:
    _check_surface_args(args)
    import torch

    import crumple as cr
    from crumple import plot, specs, store
    from crumple.batches import as_batches

    dtype = getattr(torch, args.dtype) if args.dtype else None
    loss_fn = specs.loss_function(args.loss)
    metrics = {
        m.rpartition(":")[2]: specs.loss_function(m, "--metric", specs.METRICS) for m in args.metric
    }
    model = specs.load_model(args.model, args.weights)
    batches = as_batches(specs.load_data(args.data))
    specs.check_fit(model, loss_fn, batches)
    trajectory = cr.Trajectory.load(args.trajectory) if args.trajectory else None
    if args.plane == "random":
        plane = cr.Plane.random(
            model,
            normalize=None if args.normalize == "none" else args.normalize,
            ignore=None if args.ignore == "none" else args.ignore,
            seed=args.seed,
            orthogonalize=args.orthogonalize,
        )
    elif args.plane == "axes":
        plane = cr.Plane.axes(model, *args.axes)
    elif args.plane == "between":
        others = [specs.load_model(args.model, w) for w in (args.weights_b, args.weights_c) if w]
        plane = cr.Plane.between(model, *others)
    else:
        plane = cr.Plane.pca(trajectory)
    grid = cr.Grid(args.grid, args.grid if args.grid_beta is None else args.grid_beta)
    options = {"max_memory": args.max_memory} if args.max_memory else {}
    print(
        f"crumple surface: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{plane.attrs['kind']} plane, grid {grid.shape[0]} x {grid.shape[1]}"
    )
    ds = cr.surface(
        model,
        loss_fn,
        batches,
        plane,
        grid,
        store=args.out,
        data_id=args.data_id,
        dask=args.dask,
        chunk_size=args.chunk_size,
        metrics=metrics,
        device=args.device,
        dtype=dtype,
        strategy=args.strategy,
        progress=True,
        **options,
    )
    paths = {}
    if trajectory is not None:
        paths["path"] = cr.project(
            trajectory, plane, model, loss_fn, batches, device=args.device, dtype=dtype
        )
    ds.attrs["n_parameters"] = sum(p.numel() for p in model.parameters())
    store.save_run(args.out, ds, paths, plane)
    page = plot.report(
        args.out / "landscape.html", ds, paths, title=f"crumple: {ds.attrs['loss_name']} landscape"
    )
    print(
        f"{grid.size:,} points in {ds.attrs['seconds']:.1f} s ({ds.attrs['strategy']}); "
        f"wrote {page} and {args.out / cr.store.DATA}"
    )


def _info(args: argparse.Namespace) -> None:
    from crumple import store

    print(store.describe(args.folder))
    if args.netcdf:
        print(f"wrote {store.export_netcdf(args.folder, args.netcdf)}")


def _plot(args: argparse.Namespace) -> None:
    if not (args.html or args.png or args.pdf):
        raise CrumpleError("say what to write: --html PAGE, --png FILE and/or --pdf FILE")
    from crumple import plot, store

    run = store.open_run(args.folder)
    ds = run.pop("surface")
    if args.html:
        page = plot.report(
            args.html, ds, run, title=f"crumple: {args.folder}", log=args.log, zmax=args.zmax
        )
        print(f"wrote {page}")
    for target in (args.png, args.pdf):
        if target:
            print(f"wrote {plot.save_static(ds, target, run, log=args.log, zmax=args.zmax)}")


def _joined_negative_values(argv: Sequence[str]) -> list[str]:
    """``--grid -1:1:51`` as ``--grid=-1:1:51``: argparse would take ``-1:1:51`` for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--grid", "--grid-beta") and arg.startswith("-"):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(_joined_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        args.run(args)
    except CrumpleError as e:
        parser.exit(2, f"crumple {args.command}: error: {e}\n")
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        kept = (
            f"; the finished tiles are kept in {out}: run the same command to resume" if out else ""
        )
        print(f"crumple {args.command}: stopped{kept}", file=sys.stderr)
        sys.exit(130)
