"""``crumple export``: a run's landscape as mesh files, for ParaView (VTK), 3-D printing
(STL) and Blender (OBJ, GLB), at the heights the page draws
(:func:`crumple.plot.save_mesh`). Nothing heavy is imported before the arguments are
parsed; an existing file is replaced, as ``crumple plot`` and ``crumple info --netcdf`` do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crumple.cli import options as types
from crumple.errors import CrumpleError

HELP = "a run's landscape as mesh files: VTK (ParaView), STL (3-D printing), OBJ and GLB"
DESCRIPTION = (
    "Write the surface of a run folder as mesh files, the format following each option: "
    "--vtk (.vtu or legacy .vtk: the grid nodes, quads, the loss and every other variable "
    "as point data), --stl (a closed, watertight solid with walls and a flat base), --obj "
    "and --glb (the surface coloured by loss; --solid closes them too). Heights are the "
    "page's drawn values (clipped at its cap; --log, --zmax as for crumple plot) times "
    "--z-scale; by default the drawn range is half the larger alpha/beta span, as in the "
    "page's 3-D box. alpha and beta are kept as they are. Existing files are replaced."
)
# each file option: the suffixes it takes
FILES = {
    "--vtk": (".vtu", ".vtk"),
    "--stl": (".stl",),
    "--obj": (".obj",),
    "--glb": (".glb",),
}


def add(commands) -> None:
    """The ``export`` subcommand and its options."""
    parser = types.command(commands, "export", (HELP, DESCRIPTION), execute, reads_run=True)
    add = parser.add_argument
    add("--vtk", type=Path, metavar="FILE", help="VTK for ParaView: FILE.vtu or FILE.vtk")
    add("--stl", type=Path, metavar="FILE", help="a closed solid for 3-D printing: FILE.stl")
    add("--obj", type=Path, metavar="FILE", help="the surface, coloured by loss: FILE.obj")
    add("--glb", type=Path, metavar="FILE", help="the surface, coloured by loss (glTF): FILE.glb")
    add("--log", action="store_true", help="heights from log10 of the loss, as crumple plot --log")
    add(
        "--zmax",
        type=types.finite_float,
        default=None,
        help="cap the drawn loss at this value (default: the page's cap from the values' spread)",
    )
    add(
        "--z-scale",
        type=z_scale,
        default=None,
        metavar="auto|FACTOR",
        help="height per drawn unit (default auto: the drawn range is half the larger "
        "alpha/beta span; 1: heights in loss units)",
    )
    add(
        "--base",
        type=types.positive_float("--base"),
        default=None,
        metavar="DEPTH",
        help="depth of the solid's flat base below its lowest point, in the mesh's units "
        "(default a tenth of the larger alpha/beta span)",
    )
    add("--solid", action="store_true", help="close --obj and --glb into solids too (STL always)")


def z_scale(text: str) -> float | None:
    """``--z-scale``: ``auto`` (None) or a number above 0.

    Example:
        >>> z_scale("auto") is None, z_scale("2.5")
        (True, 2.5)
    """
    if text.strip().lower() == "auto":
        return None
    try:
        return types.positive_float("--z-scale")(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e}; or give auto (the default)") from None


def execute(args: argparse.Namespace) -> None:
    """Check every file name, read the run, write each file and say what it holds."""
    wanted = {o: getattr(args, o[2:]) for o in FILES if getattr(args, o[2:]) is not None}
    if not wanted:
        raise CrumpleError(
            "say what to write: --vtk FILE.vtu, --stl FILE.stl, --obj FILE.obj and/or "
            "--glb FILE.glb"
        )
    from crumple.plot.mesh_files import mesh_path, save_mesh
    from crumple.plot.meshes import heights
    from crumple.run import store

    files = {o: mesh_path(f, o, FILES[o]) for o, f in wanted.items()}  # before writing any
    _check_extras(files)
    if not (args.folder / store.DATA).is_dir() and (args.folder / store.HESSIAN).is_dir():
        raise CrumpleError(
            f"{str(args.folder)!r} holds Hessian results (crumple hessian) but no surface; "
            f"compute one into it with crumple surface --out {args.folder}, or give the "
            "folder of a crumple surface or crumple demo run"
        )
    ds = store.open_run(args.folder)["surface"]
    scaling = dict(log=args.log, zmax=args.zmax, z_scale=args.z_scale)
    h = heights(ds, **scaling)
    how = "given" if args.z_scale else "auto: the drawn range half the larger alpha/beta span"
    drawn = "log10 loss" if args.log else "loss"
    print(f"crumple export: z = {h.z_scale:.4g} x drawn {drawn} ({how})")
    if h.scale.note():
        print(f"as on the page: {h.scale.note()}")
    for option, file in files.items():
        solid = True if option == "--stl" else args.solid and option != "--vtk"
        path = save_mesh(ds, file, **scaling, solid=solid, base=args.base)
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


def _check_extras(files: dict) -> None:
    """The libraries that write ``files``, or the extra to install, before anything is read."""
    from crumple.errors import require_extra

    needed = {"meshio" if o == "--vtk" else "trimesh" for o in files}
    for module in sorted(needed):
        try:
            require_extra(module, "mesh")
        except ImportError as e:
            raise CrumpleError(str(e)) from None
