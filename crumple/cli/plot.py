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
    plot.add_argument("--log", action="store_true", help="draw log10 of the loss")
    plot.add_argument(
        "--zmax", type=types.finite_float, default=None, help="clip the drawn loss at this value"
    )


def execute(args: argparse.Namespace) -> None:
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
