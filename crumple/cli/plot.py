"""``crumple plot``: draw a run folder again, as a page or a static figure."""

from __future__ import annotations

import argparse
from pathlib import Path

from crumple.cli import options as types
from crumple.errors import CrumpleError

ABOUT = (
    "draw a run again: an HTML page, PNG or PDF",
    "Draw a run folder (from crumple surface or crumple demo) as a "
    "self-contained HTML page and/or a static figure.",
)


def add(commands) -> None:
    plot = types.command(commands, "plot", ABOUT, execute, reads_run=True)
    plot.add_argument("--html", type=Path, help="write the page here")
    plot.add_argument("--png", type=Path, help="write a static PNG here")
    plot.add_argument("--pdf", type=Path, help="write a static PDF here")
    plot.add_argument(
        "--var",
        default="loss",
        metavar="NAME",
        help="the variable to draw: loss (default) or a metric of the run, e.g. accuracy",
    )
    plot.add_argument("--log", action="store_true", help="draw log10 of the loss")
    plot.add_argument(
        "--zmax", type=types.finite_float, default=None, help="clip the drawn loss at this value"
    )


def execute(args: argparse.Namespace) -> None:
    if not (args.html or args.png or args.pdf):
        raise CrumpleError("say what to write: --html PAGE, --png FILE and/or --pdf FILE")
    from crumple import plot
    from crumple.plot.metrics import check_var, full_range, in_loss_place
    from crumple.plot.static import static_path
    from crumple.run import store

    static = [  # each file's suffix is its option's format, checked before anything is written
        static_path(target, option, f".{option[2:]}")
        for target, option in ((args.png, "--png"), (args.pdf, "--pdf"))
        if target
    ]
    run = store.open_run(args.folder)
    ds = run.pop("surface")
    run.pop("sharpness", None)  # drawn from the stores beside the surface
    check_var(ds, args.var, "--var")
    if args.html:
        options = dict(log=args.log, zmax=args.zmax, var=args.var, **store.beside(args.folder))
        page = plot.report(args.html, ds, run, title=f"crumple: {args.folder}", **options)
        print(f"wrote {page}")
    shown, paths = in_loss_place(ds, run, args.var) if args.var != "loss" else (ds, run)
    # a metric drawn over its whole range, as on the page
    zmax = full_range(shown.loss) if args.zmax is None and args.var != "loss" else args.zmax
    for target in static:
        print(f"wrote {plot.save_static(shown, target, paths, log=args.log, zmax=zmax)}")
