"""A run on disk: one folder whose ``landscape.zarr`` holds the surface (written tile by tile
as tiles finish), the recorded paths and a fingerprint of everything that determines the
numbers; the plane sits beside it as ``plane.safetensors``, the curvature at the
model's weights (``crumple hessian``) as ``hessian.zarr`` and the loss along several random
directions (:func:`crumple.spread`) as ``spread.zarr``, stores of their own, so that each
can be written, replaced or resumed without touching the others.

Running the same surface into the same folder again resumes: finished tiles are read, not
recomputed. A folder made for other inputs is refused, never mixed or overwritten.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from crumple.errors import CrumpleError
from crumple.names import DATA, HESSIAN, PLANE, SPREAD  # noqa: F401  (the folder's files)
from crumple.plane import Plane

DONE = "tile_done"


class RunStore:
    """The surface of a run on disk, tile by tile: values, which tiles are done, and the
    attributes the run's owner (``crumple.run.driver``) keeps there (fingerprint, plan).

    Example:
        >>> import tempfile, crumple as cr
        >>> grid = cr.Grid([0.0, 1.0, 2.0], [0.0, 1.0])
        >>> tiles = list(grid.tiles(4))
        >>> run = RunStore.create(tempfile.mkdtemp(), grid, ["loss"], tiles, {"plan": "{}"})
        >>> run.done()
        [False, False]
    """

    def __init__(self, folder: Path, names: list[str]) -> None:
        self.folder, self.names = folder, names
        self._arrays: dict | None = None  # opened on the first write

    @classmethod
    def open(cls, folder) -> RunStore | None:
        """The run in ``folder``, or ``None`` if the folder holds none."""
        folder = Path(folder)
        if not (folder / DATA).exists():
            return None
        group = _surface_group(folder)
        names = [n for n in group.array_keys() if n not in (DONE, "alpha", "beta")]
        return cls(folder, sorted(names, key=lambda n: n != "loss"))

    @property
    def attrs(self) -> dict:
        return dict(_surface_group(self.folder).attrs)

    def fingerprint(self, refusal: str) -> dict[str, str]:
        """The inputs this run was made from (:mod:`crumple.run.fingerprint`). A run without
        one (crumple demo writes such runs) is refused; ``refusal`` says what that stops."""
        attrs = self.attrs
        if "fingerprint" not in attrs:
            raise CrumpleError(
                f"{str(self.folder)!r} holds a run without a fingerprint (crumple demo writes "
                f"such runs), so {refusal}; choose another folder"
            )
        try:
            return json.loads(attrs["fingerprint"])
        except ValueError as e:
            raise damaged(self.folder, e) from e

    @classmethod
    def create(
        cls,
        folder,
        grid,
        names: list[str],
        tiles: list[tuple[slice, ...]],
        attrs: Mapping[str, str],
        coord_attrs: Mapping[str, dict] | None = None,
    ) -> RunStore:
        """Start a run in ``folder``: every value nan, every tile not done, chunks of the
        first tile's shape."""
        folder = Path(folder)
        template = xr.Dataset(
            {name: (grid.dims, np.full(grid.shape, np.nan)) for name in names}
            | {DONE: (("tile",), np.zeros(len(tiles), dtype=bool))},
            coords={
                d: (d, a, dict((coord_attrs or {}).get(d, {})))
                for d, a in zip(grid.dims, grid.axes)
            },
            attrs=dict(attrs),
        )
        tile_shape = tuple(s.stop - s.start for s in tiles[0])
        encoding = {name: {"chunks": tile_shape} for name in names} | {DONE: {"chunks": (1,)}}
        folder.mkdir(parents=True, exist_ok=True)
        template.to_zarr(
            folder / DATA, group="surface", mode="w", encoding=encoding, consolidated=False
        )
        return cls(folder, list(names))

    def done(self) -> list[bool]:
        """Which tiles are finished."""
        return [bool(v) for v in _surface_group(self.folder)[DONE][:]]

    def write(self, k: int, tile: tuple[slice, ...], values: Mapping[str, np.ndarray]) -> None:
        """Store tile ``k``'s values at ``tile``, then mark it finished."""
        if self._arrays is None:
            group = _surface_group(self.folder, mode="r+")
            self._arrays = {name: group[name] for name in (*self.names, DONE)}
        for name, v in values.items():
            self._arrays[name][tile] = v
        self._arrays[DONE][k] = True

    def set_attrs(self, **attrs: str) -> None:
        _surface_group(self.folder, mode="r+").attrs.update(attrs)

    def finish(self, attrs: Mapping[str, object], var_attrs: Mapping[str, dict]) -> xr.Dataset:
        group = _surface_group(self.folder, mode="r+")
        group.attrs.update({k: v for k, v in attrs.items()})
        for name, a in var_attrs.items():
            group[name].attrs.update(a)
        return open_run(self.folder)["surface"]


def _surface_group(folder: Path, mode: str = "r"):
    import zarr

    try:
        return zarr.open_group(str(Path(folder) / DATA), mode=mode, path="surface")
    except Exception as e:
        raise damaged(folder, e) from e


def damaged(folder, e: Exception) -> CrumpleError:
    return CrumpleError(
        f"the run in {str(folder)!r} is damaged and cannot be read ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200] if str(e) else ''}); delete the folder to start afresh"
    )


def save_run(
    folder: str | Path,
    surface: xr.Dataset,
    paths: Mapping[str, xr.Dataset] | None = None,
    plane: Plane | None = None,
) -> Path:
    """Write ``surface`` (group ``surface``) and the plane, unless the folder's store already
    holds them (a run stored tile by tile), and each path (group ``paths/NAME``).

    Example:
        >>> import tempfile
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.zeros((2, 2)))})
        >>> folder = save_run(tempfile.mkdtemp(), ds)
        >>> open_run(folder)["surface"].loss.shape
        (2, 2)
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not same_folder(surface.attrs.get("store"), folder):
        if (folder / DATA).exists():
            if "fingerprint" in _surface_group(folder).attrs:
                raise CrumpleError(
                    f"{str(folder)!r} holds a resumable surface run; it is left as it is: "
                    "write to another folder"
                )
            shutil.rmtree(folder / DATA)  # an earlier result written here: replaced whole
        surface.to_zarr(folder / DATA, group="surface", mode="w", consolidated=False)
        if plane is not None:  # a run stored tile by tile saved its plane when it finished
            plane.save(folder / PLANE)
    for name, path in (paths or {}).items():
        path.to_zarr(folder / DATA, group=f"paths/{name}", mode="w", consolidated=False)
    return folder


def same_folder(a: str | Path | None, b: str | Path) -> bool:
    """Whether two spellings name one folder (relative or absolute, through links).

    Example:
        >>> import os
        >>> same_folder(".", os.getcwd()), same_folder(None, ".")
        (True, False)
    """
    return a is not None and Path(a).resolve() == Path(b).resolve()


def open_run(folder: str | Path) -> dict[str, xr.Dataset]:
    """The datasets of a run: ``"surface"`` and one entry per path name. A run that is not
    complete has nan at the points not yet computed, and ``attrs["tiles_done"]``. The
    stores beside the surface are opened by their own functions (:func:`open_hessian`,
    :func:`open_spread`), so that a path's name never clashes with theirs.

    Example:
        >>> open_run("no/such/run")
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: 'no/such/run' holds no crumple run (landscape.zarr is missing)
    """
    data = Path(folder) / DATA
    if not data.is_dir():
        raise CrumpleError(f"{str(folder)!r} holds no crumple run ({DATA} is missing)")
    try:
        surface = xr.open_zarr(data, group="surface", consolidated=False).load()
        out = {"surface": surface}
        paths = data / "paths"
        for group in (
            sorted(p.name for p in paths.iterdir() if p.is_dir()) if paths.is_dir() else []
        ):
            out[group] = xr.open_zarr(data, group=f"paths/{group}", consolidated=False).load()
    except CrumpleError:
        raise
    except Exception as e:
        raise damaged(folder, e) from e
    if "loss" not in surface:
        raise damaged(folder, KeyError("the surface has no loss variable"))
    if DONE in surface:
        done = surface[DONE].values
        surface = surface.drop_vars(DONE)
        surface.attrs["tiles_done"] = f"{int(done.sum())} of {done.size}"
        for key in ("fingerprint", "plan"):
            surface.attrs.pop(key, None)
        out["surface"] = surface
    return out


def save_hessian(folder: str | Path, results: xr.Dataset) -> Path:
    """Write the Hessian results of ``crumple hessian`` to ``folder/hessian.zarr``,
    replacing any written before; the folder is made if missing.

    Example:
        >>> import tempfile
        >>> ds = xr.Dataset({"eigenvalues": ("rank", [4.0, 1.0])}, coords={"rank": [0, 1]})
        >>> folder = tempfile.mkdtemp()
        >>> save_hessian(folder, ds).name
        'hessian.zarr'
        >>> open_hessian(folder).eigenvalues.values.tolist()
        [4.0, 1.0]
    """
    return _save_beside(folder, HESSIAN, results)


def open_hessian(folder: str | Path) -> xr.Dataset | None:
    """The Hessian results in a run folder, or ``None`` if it holds none.

    Example:
        >>> open_hessian("no/such/run") is None
        True
    """
    return _open_beside(folder, HESSIAN)


def save_spread(folder: str | Path, spread: xr.Dataset) -> Path:
    """Write a :func:`crumple.spread` result to ``folder/spread.zarr``, replacing any written
    before; the folder is made if missing. The run's page draws it as a band
    (``crumple surface --spread N`` writes it).

    Example:
        >>> import tempfile
        >>> ds = xr.Dataset({"loss": (("direction", "alpha"), np.ones((2, 3)))},
        ...                 coords={"alpha": [-1.0, 0.0, 1.0], "seed": ("direction", [0, 1])},
        ...                 attrs={"seeds": [0, 1]})
        >>> folder = tempfile.mkdtemp()
        >>> save_spread(folder, ds).name
        'spread.zarr'
        >>> open_spread(folder).attrs["seeds"]
        [0, 1]
    """
    if not isinstance(spread, xr.Dataset) or "direction" not in spread.dims:
        raise CrumpleError(
            f"save_spread needs the dataset of crumple.spread (with a 'direction' dimension), "
            f"got {type(spread).__name__}; e.g. save_spread(folder, cr.spread(...))"
        )
    return _save_beside(folder, SPREAD, spread)


def open_spread(folder: str | Path) -> xr.Dataset | None:
    """The spread over random directions in a run folder, or ``None`` if it holds none.

    Example:
        >>> open_spread("no/such/run") is None
        True
    """
    return _open_beside(folder, SPREAD)


def _save_beside(folder: str | Path, name: str, results: xr.Dataset) -> Path:
    """Write ``results`` as ``folder/name`` (a zarr store beside the surface), replacing any
    written before."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    results.to_zarr(path, mode="w", consolidated=False)
    return path


def _open_beside(folder: str | Path, name: str) -> xr.Dataset | None:
    """The store ``folder/name`` read whole, or ``None`` if there is none."""
    path = Path(folder) / name
    if not path.is_dir():
        return None
    try:
        return xr.open_zarr(path, consolidated=False).load()
    except Exception as e:
        raise damaged(folder, e) from e


def beside(folder: str | Path) -> dict[str, xr.Dataset | None]:
    """The results kept beside a run's surface that its page draws, as
    :func:`crumple.plot.report`'s keywords: ``hessian`` and ``spread`` (``None`` for one the
    folder does not hold).

    Example:
        >>> beside("no/such/run")
        {'hessian': None, 'spread': None}
    """
    return {"hessian": open_hessian(folder), "spread": open_spread(folder)}


def export_netcdf(folder: str | Path, file: str | Path) -> Path:
    """One netCDF file with the surface and every path (``path{k}_*`` variables along
    ``step{k}``, the path's name in their ``path_name`` attribute), for sharing.

    Example:
        >>> import tempfile
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.ones((2, 2)))},
        ...                 coords={"alpha": [0.0, 1.0], "beta": [0.0, 1.0]})
        >>> folder = save_run(tempfile.mkdtemp(), ds)
        >>> float(xr.open_dataset(export_netcdf(folder, f"{folder}/run.nc")).loss.sum())
        4.0
    """
    run = open_run(folder)
    merged = run.pop("surface").copy()
    for k, (name, path) in enumerate(run.items()):
        renamed = path.rename({"step": f"step{k}"}).rename(
            {v: f"path{k}_{v}" for v in path.data_vars}
        )
        for v in renamed.data_vars:
            renamed[v].attrs["path_name"] = name
        merged = merged.merge(renamed)
    attrs = {
        k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in merged.attrs.items()
    }
    merged.attrs = {k: v for k, v in attrs.items() if v is not None}
    file = Path(file)
    merged.to_netcdf(file)
    return file
