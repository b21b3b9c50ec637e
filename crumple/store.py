"""A run on disk: one folder with the surface and the paths (zarr) and the plane
(safetensors)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import xarray as xr

from crumple.errors import CrumpleError
from crumple.plane import Plane

DATA = "landscape.zarr"
PLANE = "plane.safetensors"


def save_run(
    folder: str | Path,
    surface: xr.Dataset,
    paths: Mapping[str, xr.Dataset] | None = None,
    plane: Plane | None = None,
) -> Path:
    """Write ``surface`` (group ``surface``), each path (group ``paths/NAME``) and the plane.

    Example:
        >>> import tempfile, numpy as np
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.zeros((2, 2)))})
        >>> folder = save_run(tempfile.mkdtemp(), ds)
        >>> open_run(folder)["surface"].loss.shape
        (2, 2)
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    surface.to_zarr(folder / DATA, group="surface", mode="w", consolidated=False)
    for name, path in (paths or {}).items():
        path.to_zarr(folder / DATA, group=f"paths/{name}", mode="w", consolidated=False)
    if plane is not None:
        plane.save(folder / PLANE)
    return folder


def open_run(folder: str | Path) -> dict[str, xr.Dataset]:
    """The datasets of a run: ``"surface"`` and one entry per path name.

    Example:
        >>> open_run("no/such/run")
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: 'no/such/run' holds no crumple run (landscape.zarr is missing)
    """
    data = Path(folder) / DATA
    if not data.is_dir():
        raise CrumpleError(f"{str(folder)!r} holds no crumple run ({DATA} is missing)")
    out = {"surface": xr.open_zarr(data, group="surface", consolidated=False).load()}
    paths = data / "paths"
    for group in sorted(p.name for p in paths.iterdir() if p.is_dir()) if paths.is_dir() else []:
        out[group] = xr.open_zarr(data, group=f"paths/{group}", consolidated=False).load()
    return out
