"""What ``crumple info`` prints about a run folder: text for people, kept with the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

from crumple import planes
from crumple.cli import options as types
from crumple.errors import CrumpleError
from crumple.names import HESSIAN, HESSIAN_PAGE, PLANE, SHARPNESS, SPREAD

ABOUT = (
    "what a run folder holds and how complete it is",
    "Print what a run folder holds and how complete it is; --netcdf exports "
    "the surface and the paths to one netCDF file for sharing.",
)


def add(commands) -> None:
    info = types.command(commands, "info", ABOUT, execute, reads_run=True)
    info.add_argument("--netcdf", type=Path, metavar="FILE", help="also write one netCDF file")


def execute(args: argparse.Namespace) -> None:
    from crumple.report import export_netcdf

    print(describe(args.folder))
    if args.netcdf:
        print(f"wrote {export_netcdf(args.folder, args.netcdf)}")


def describe(folder: str | Path) -> str:
    """What a run folder holds and how complete it is, as text.

    Example:
        >>> import tempfile, numpy as np, xarray as xr
        >>> from crumple.run.store import save_run
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.zeros((2, 3)))},
        ...                 coords={"alpha": [0.0, 1.0], "beta": [0.0, 1.0, 2.0]})
        >>> print(describe(save_run(tempfile.mkdtemp(), ds)).splitlines()[1])
        surface: loss over alpha 2 x beta 3, complete
    """
    import numpy as np

    from crumple.grid import Grid
    from crumple.run.store import open_run

    run = open_run(folder)
    surface = run.pop("surface")
    history = run.pop("sharpness", None)
    values = surface.loss.values
    missing = int(np.isnan(values).sum())
    done = surface.attrs.get("tiles_done")  # "25 of 27", in a run stored tile by tile
    broken = int(surface.attrs.get("tiles_damaged", 0))  # shown as nan by open_run
    whole = missing == 0 and not broken
    state = "complete" if whole else f"{values.size - missing} of {values.size} points"
    if done and not whole:
        rerun = "run the same command again to resume"
        if broken:
            rerun = f"{broken} tile(s) damaged: rerun the same command to recompute them"
        state += f" ({done} tiles done; {rerun})"
    dims = " x ".join(f"{d} {surface.sizes[d]}" for d in surface.loss.dims)
    lines = [
        f"run {str(folder)!r}",
        f"surface: {', '.join(surface.data_vars)} over {dims}, {state}",
    ]
    if "tiles_unverified" in surface.attrs:
        lines.append(
            f"  unverified: {surface.attrs['tiles_unverified']} tiles, written by a crumple "
            "that kept no digests: a changed value in them cannot be detected"
        )
    plane = {
        k.removeprefix("plane_"): v for k, v in surface.attrs.items() if k.startswith("plane_")
    }
    lines.append(f"  plane: {planes.describe(plane)}")
    for key in (
        "loss_name",
        "n_samples",
        "n_target_tokens",
        "data",
        "recalibrated",
        "batchnorm",
        "precision",
        "points_per_call_halved",
        "dtype",
        "strategy",
        "batching",
        "data_cast",
        "seconds",
        "crumple_version",
    ):
        if key in surface.attrs:
            value = surface.attrs[key]
            lines.append(f"  {key}: {f'{value:.3g}' if key == 'seconds' else value}")
    for d in surface.loss.dims:
        a = surface[d].values
        lines.append(f"  {d} ({surface[d].attrs.get('long_name', d)}): {a[0]:g} .. {a[-1]:g}")
    grid = Grid(*(surface[d].values for d in surface.loss.dims))
    for name, path in run.items():
        away, steps = grid.outside(path), path.sizes["step"]
        said = f", {away} of {steps} points outside the grid" if away else ""
        lines.append(f"path {name!r}: {steps} steps{said}")
        if "statistics" in path.attrs:  # which BatchNorm statistics its losses use
            lines.append(f"  statistics: {path.attrs['statistics']}")
    if (Path(folder) / PLANE).is_file():
        lines.append(f"plane: {PLANE}")
    if history is not None:
        lines += _curvature(history)
    return "\n".join(lines + _beside(folder))


def _curvature(history) -> list[str]:
    """The lines on the curvature measured in training: where, how often, and the facts
    its page gives (:func:`crumple.plot.sharpness.history_facts`)."""
    from crumple.plot.sharpness import history_facts

    steps = history.step.values
    where = f"{SHARPNESS}, {steps.size} measurements, steps {steps[0]} .. {steps[-1]}"
    return [f"curvature in training: {where}"] + [
        f"  {name}: {said}" for name, said in history_facts(history).items()
    ]


def _beside(folder: str | Path) -> list[str]:
    """The lines on the stores beside the surface: what each holds, or what is wrong with it."""
    from crumple.run.store import open_hessian, open_spread

    lines = []
    for name, opener in (("hessian", open_hessian), ("spread", open_spread)):
        try:
            ds = opener(folder)
        except CrumpleError as e:
            lines.append(f"{name}: {e}")
            continue
        if ds is not None and name == "hessian":
            lines.append(f"hessian: {HESSIAN} (crumple hessian; its page is {HESSIAN_PAGE})")
            if "batchnorm" in ds.attrs:
                lines.append(f"hessian BatchNorm: {ds.attrs['batchnorm']}")
        elif ds is not None:
            seeds = ds.attrs.get("seeds", [])
            lines.append(
                f"spread: {SPREAD}, {ds.sizes['direction']} random directions (seeds {seeds}) "
                f"over {' x '.join(f'{d} {ds.sizes[d]}' for d in ds.loss.dims[1:])}"
            )
    return lines
