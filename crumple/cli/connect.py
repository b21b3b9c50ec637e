"""``crumple connect``: two models, the line between them, b aligned to a, a curve trained
between them, their losses against t and barriers, and the surface of the plane through
them, written to a run folder with its page."""

from __future__ import annotations

import argparse
from pathlib import Path

from crumple.cli import options as types
from crumple.errors import CrumpleError

ABOUT = (
    "two models: the line between them, aligned, a low-loss curve, and their barriers",
    "Evaluate the loss along the line from --weights (a, t=0) to --weights-b (b, t=1), along "
    "the line to b aligned to a (--align: its hidden units permuted, the same function) and "
    "along a curve trained between them (--curve); print each barrier, and write the surface "
    "of the plane through a, b and the aligned b or the curve's bend, with the lines and the "
    "curve drawn on it and a panel of the loss against t, to --out.",
)
ALIGN = ("weights", "activations")
CURVES = ("bezier", "polychain")
MARGIN = 0.25  # of the points' extent, room around them on the plane


def add(commands) -> None:
    connect = types.command(commands, "connect", ABOUT, execute)
    types.add_model_options(connect)
    types.add_evaluation_options(connect)
    add = connect.add_argument
    add("--weights-b", type=Path, required=True, help="the second model's weights (b, t=1)")
    add("--align", choices=ALIGN, help="permute b's hidden units to match a's (weight or "
        "activation matching on --data) and draw the line to the aligned b too")  # fmt: skip
    add("--curve", choices=CURVES, help="train a curve's bend between a and b (the aligned b "
        "with --align), as Garipov et al. do, on --data")  # fmt: skip
    add("--steps", type=types.int_at_least("--steps", 1), default=1000,
        help="the curve's training steps (default 1000)")  # fmt: skip
    add("--lr", type=types.positive_float("--lr"), default=0.05,
        help="the curve's learning rate (default 0.05)")  # fmt: skip
    add("--points", type=types.int_at_least("--points", 2), default=41,
        help="points of t from 0 to 1 along each line and curve (default 41)")  # fmt: skip
    add("--grid-size", type=types.int_at_least("--grid-size", 2), default=31,
        help="N x N points of the surface (default 31)")  # fmt: skip
    add("--out", type=Path, default=Path("out/connect"), help="output folder (default out/connect)")


def execute(args: argparse.Namespace) -> None:
    from crumple.run.lock import writer

    if not (args.align or args.curve):
        raise CrumpleError(
            "give --align weights|activations, --curve bezier|polychain or both; the line "
            "alone between two models is `crumple line --weights A --weights-b B`"
        )
    if args.grid_size > types.MAX_POINTS_PER_AXIS:
        raise CrumpleError(f"--grid-size must be at most {types.MAX_POINTS_PER_AXIS}")
    with writer(args.out):  # the one writer of --out, before it is read
        _write_run(args)


def _write_run(args: argparse.Namespace) -> None:
    import numpy as np

    import crumple as cr
    from crumple import plot, specs
    from crumple.connectivity import along
    from crumple.landscape import Landscape
    from crumple.names import PAGE
    from crumple.plane import Plane
    from crumple.report import covering_grid
    from crumple.run import store

    a, loss_fn, batches = types.load_inputs(args)
    b = specs.load_model(args.model, args.weights_b, "--weights-b")
    recalibrate = specs.load_data(args.recalibrate) if args.recalibrate else None
    options = {"device": args.device} if args.device else {}
    landscape = Landscape(a, loss_fn, batches, metrics=types.metrics(args), dtype=args.dtype,
                          recalibrate=recalibrate, **options)  # fmt: skip
    t = np.linspace(0.0, 1.0, args.points)
    along_t = {"line": along(landscape, cr.Curve.line(a, b), t)}
    end, plane, drawn = b, None, {}
    if args.align:
        data = batches if args.align == "activations" else None
        end = cr.align(a, b, args.align, data=data)
        along_t["aligned line"] = along(landscape, cr.Curve.line(a, end), t)
        plane = Plane.between(a, b, end)
        plane.attrs["third"] = "b aligned"
        drawn = {"line": (t, 0 * t), "aligned line": (0 * t, t)}
    if args.curve:
        curve = cr.connect(a, end, loss_fn, batches, args.curve, steps=args.steps, lr=args.lr,
                           progress=True)  # fmt: skip
        along_t[args.curve] = along(landscape, curve, t)
        plane = curve.plane
        line = "aligned line" if args.align else "line"
        drawn = {line: (t, 0 * t), args.curve: tuple(curve.coordinates(t).T)}
    paths = {name: _path(along_t[name], *xy) for name, xy in drawn.items()}
    corners = _path(along_t["line"].isel(t=[0, 0, 0]), [0.0, 1.0, 0.0], [0.0, 0.0, 1.0])
    grid = covering_grid({**paths, "": corners}, num=args.grid_size, margin=MARGIN)  # a, b, c too
    print(f"crumple connect: the surface of the plane through a, b and {_third(args)}, "
          f"grid {grid.shape[0]} x {grid.shape[1]}")  # fmt: skip
    ds = landscape.surface(plane, grid)
    store.save_run(args.out, ds, paths, plane)
    facts = {f"barrier ({name})": _barrier(v) for name, v in along_t.items()}
    figure = plot.line(along_t, title="Loss against t")
    page = plot.report(args.out / PAGE, ds, paths, title="crumple: two models connected",
                       more_facts=facts, more_figures=[figure])  # fmt: skip
    for name, said in facts.items():
        print(f"{name}: {said}")
    print(f"wrote {page} and {args.out / store.DATA}")


def _path(ds, alpha, beta):
    """A line or curve's losses as a path drawn on the plane (its points in order of t)."""
    import numpy as np
    import xarray as xr

    values = {"alpha": ("step", np.asarray(alpha)), "beta": ("step", np.asarray(beta))}
    values |= {n: ("step", ds[n].values) for n in ds.data_vars if n not in ("alpha", "beta")}
    return xr.Dataset(values, coords={"step": np.arange(ds.sizes["t"]), "t": ("step", ds.t.values)})


def _barrier(ds) -> str:
    at = ds.attrs
    return (
        f"{at['barrier']:.4g} at t = {at['barrier_t']:.3g} (loss {at['loss_a']:.4g} at a, "
        f"{at['loss_b']:.4g} at the end)"
    )


def _third(args) -> str:
    return "the curve's bend" if args.curve else "b aligned"
