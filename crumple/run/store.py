"""A run on disk: one folder whose ``landscape.zarr`` holds the surface (written tile by tile,
each tile checked against its digest), the recorded paths and a fingerprint of the inputs;
beside it ``plane.safetensors``, ``hessian.zarr`` (``crumple hessian``) and ``spread.zarr``
(:func:`crumple.spread`), each written, replaced or resumed without touching the others.
The same surface run into the same folder resumes; a folder made for other inputs is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from crumple.checks import check_name, check_numbers
from crumple.errors import CrumpleError
from crumple.files import write_error
from crumple.names import DATA, HESSIAN, PLANE, RUN_BOOKKEEPING, SHARPNESS, SPREAD  # noqa: F401
from crumple.plane import Plane
from crumple.run.lock import writer
from crumple.run.schema import NUMBERS
from crumple.run.tiles import DIGEST, DONE, Tiles, bookkeeping, digest, verify

VALUES_DIGEST = "values_digest"  # attribute of a store beside the surface


class RunStore:
    """The surface of a run on disk, tile by tile: values, each finished tile's digest
    (:mod:`crumple.run.tiles`), and the attributes the run's owner (``crumple.run.driver``)
    keeps there (fingerprint, plan). A write that fails (disk full, no permission) raises a
    :class:`CrumpleError` naming the store; the tiles written before it stay, to resume.

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
        self._tiles: Tiles | None = None  # read and verified on first use

    @classmethod
    def open(cls, folder) -> RunStore | None:
        """The run in ``folder``, or ``None`` if the folder holds none."""
        folder = Path(folder)
        if not (folder / DATA).exists():
            return None
        group = _surface_group(folder)
        names = [n for n in group.array_keys() if n not in (*RUN_BOOKKEEPING, "alpha", "beta")]
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
        """Start a run in ``folder``: every value nan, every tile not done (digest 0), chunks
        of the first tile's shape: tile ``k`` is chunk ``k``, row by row."""
        folder = Path(folder)
        template = xr.Dataset(
            {name: (grid.dims, np.full(grid.shape, np.nan)) for name in names}
            | {DIGEST: (("tile",), np.zeros(len(tiles), dtype=np.uint64))},
            coords={
                d: (d, a, dict((coord_attrs or {}).get(d, {})))
                for d, a in zip(grid.dims, grid.axes)
            },
            attrs=dict(attrs),
        )
        tile_shape = tuple(s.stop - s.start for s in tiles[0])
        encoding = {name: {"chunks": tile_shape} for name in names} | {DIGEST: {"chunks": (1,)}}
        with _writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
            template.to_zarr(
                folder / DATA, group="surface", mode="w", encoding=encoding, consolidated=False
            )
        run = cls(folder, list(names))
        run._tiles = Tiles.fresh(len(tiles))
        return run

    def tiles(self) -> Tiles:
        """The tiles as read from the store (once), each finished tile checked against its
        digest: damaged ones are not done."""
        if self._tiles is None:
            group = _surface_group(self.folder)
            try:
                self._tiles = verify(group, self.names)
            except Exception as e:  # arrays that do not fit, metadata that does not parse
                raise damaged(self.folder, e) from e
        return self._tiles

    def done(self) -> list[bool]:
        """Which tiles are finished (and verified)."""
        return list(self.tiles().done)

    def write(self, k: int, tile: tuple[slice, ...], values: Mapping[str, np.ndarray]) -> None:
        """Store tile ``k``'s values at ``tile``, then its digest (in a run written before
        digests: its done flag)."""
        values = {name: values[name] for name in self.names}
        with _writing(self.folder):
            if self._arrays is None:
                group = _surface_group(self.folder, mode="r+")
                self._arrays = {name: group[name] for name in (*self.names, bookkeeping(group))}
            for name, v in values.items():
                self._arrays[name][tile] = v
            if DIGEST in self._arrays:
                self._arrays[DIGEST][k] = digest(k, values)
            else:
                self._arrays[DONE][k] = True
        if self._tiles is not None:
            self._tiles.finished(k)

    def set_attrs(self, **attrs: str) -> None:
        with _writing(self.folder):
            _surface_group(self.folder, mode="r+").attrs.update(attrs)

    def finish(self, attrs: Mapping[str, object], var_attrs: Mapping[str, dict]) -> xr.Dataset:
        with _writing(self.folder):
            group = _surface_group(self.folder, mode="r+")
            group.attrs.update({k: v for k, v in attrs.items()})
            for name, a in var_attrs.items():
                group[name].attrs.update(a)
        return open_run(self.folder)["surface"]


@contextlib.contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """An OSError met writing the run's store (disk full, ``ulimit -f``, no permission,
    read-only) as a CrumpleError naming the store and the cause."""
    try:
        yield
    except OSError as e:
        raise write_error(Path(folder) / DATA, e) from e


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
    holds them (a run stored tile by tile), and each path (group ``paths/NAME``; each name
    checked first, :func:`crumple.checks.check_name`), as the folder's one writer
    (:func:`crumple.run.lock.writer`). An earlier result written here is replaced whole: the
    new store is written beside it and swapped in by rename.

    Example:
        >>> import tempfile
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.zeros((2, 2)))})
        >>> folder = save_run(tempfile.mkdtemp(), ds)
        >>> open_run(folder)["surface"].loss.shape
        (2, 2)
    """
    for name in paths or {}:  # before anything is written
        check_name(name, "the path named")
    folder = Path(folder)
    with writer(folder):
        if same_folder(surface.attrs.get("store"), folder):  # stored tile by tile, and its plane
            with _writing(folder):
                _write_paths(folder / DATA, paths)
            return folder
        if (folder / DATA).exists() and "fingerprint" in _surface_group(folder).attrs:
            raise CrumpleError(
                f"{str(folder)!r} holds a resumable surface run; it is left as it is: "
                "write to another folder"
            )

        def write(store: Path) -> None:
            surface.to_zarr(store, group="surface", mode="w", consolidated=False)
            _write_paths(store, paths)

        _replace_store(folder / DATA, write)  # an earlier result written here: replaced whole
        if plane is not None:
            plane.save(folder / PLANE)
    return folder


def _write_paths(store: Path, paths: Mapping[str, xr.Dataset] | None) -> None:
    for name, path in (paths or {}).items():
        path.to_zarr(store, group=f"paths/{name}", mode="w", consolidated=False)


def _replace_store(path: Path, write: Callable[[Path], None]) -> None:
    """Write a whole zarr store, ``write(temporary)``, beside ``path`` (a hidden name with
    the process id), then swap it in by renames: ``path`` holds the new store or, after an
    error, the one it held. An OSError (disk full, ``ulimit -f``, no permission) becomes a
    CrumpleError naming ``path``. The caller holds the folder (:func:`writer`), so hidden
    stores of ``path`` left by a writer that died are its own: removed first, or the store
    it held put back if it died between the renames."""
    for stale in path.parent.glob(f".{path.name}.*"):
        if stale.suffix == ".old" and not path.exists():
            stale.rename(path)
        else:
            shutil.rmtree(stale, ignore_errors=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    previous = path.with_name(f".{path.name}.{os.getpid()}.old")
    try:
        write(temporary)
        if path.exists():
            path.rename(previous)
        try:
            temporary.rename(path)
        except OSError:
            if previous.exists():
                previous.rename(path)  # the store it held, back
            raise
    except OSError as e:
        raise write_error(path, e) from e
    finally:
        _remove_store(temporary)
    shutil.rmtree(previous, ignore_errors=True)


def _remove_store(path: Path) -> None:
    """Remove the store ``path`` that a failed write left. zarr goes on writing its other
    chunks for a moment after the first error, so it is removed until it stays gone."""
    for _ in range(50):  # a second at most
        if not path.exists():
            return
        shutil.rmtree(path, ignore_errors=True)
        time.sleep(0.02)


def same_folder(a: str | Path | None, b: str | Path) -> bool:
    """Whether two spellings name one folder (relative or absolute, through links).

    Example:
        >>> import os
        >>> same_folder(".", os.getcwd()), same_folder(None, ".")
        (True, False)
    """
    return a is not None and Path(a).resolve() == Path(b).resolve()


def open_run(folder: str | Path) -> dict[str, xr.Dataset]:
    """The datasets of a run: ``"surface"`` and one entry per path name. A run stored tile
    by tile shows only the tiles that are finished and match their digests (nan elsewhere),
    with ``attrs["tiles_done"]`` (e.g. ``"25 of 27"``) and ``attrs["tiles_damaged"]`` (the
    finished tiles found damaged: running the same call again computes them); a run written
    before digests also has ``attrs["tiles_unverified"]``. The stores beside the surface
    are opened by their own functions (:func:`open_hessian`, :func:`open_spread`), so that
    a path's name never clashes with theirs.

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
        lazy = xr.open_zarr(data, group="surface", consolidated=False)
        names = [name for name in lazy.data_vars if name not in RUN_BOOKKEEPING]
        if len(names) < len(lazy.data_vars):  # a run stored tile by tile
            surface = RunStore(Path(folder), names).tiles().shown(lazy)
        else:
            surface = lazy.load()
        out = {"surface": surface}
        paths = data / "paths"
        for group in (
            sorted(p.name for p in paths.iterdir() if p.is_dir()) if paths.is_dir() else []
        ):
            check_name(group, f"the path stored in {str(data / 'paths')!r} as")
            out[group] = xr.open_zarr(data, group=f"paths/{group}", consolidated=False).load()
    except CrumpleError:
        raise
    except Exception as e:
        raise damaged(folder, e) from e
    if "loss" not in surface:
        raise damaged(folder, KeyError("the surface has no loss variable"))
    history = beside(folder, ("sharpness",))["sharpness"]  # a damaged one left out, with a warning
    if history is not None:
        out["sharpness"] = history
    try:
        check_numbers(surface.attrs, NUMBERS)
    except ValueError as e:
        raise damaged(folder, e) from e
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
    """The Hessian results in a run folder, or ``None`` if it holds none. A store that
    cannot be read, or whose numbers are not numbers (:func:`crumple.hessian.results.check`),
    is a :class:`CrumpleError` naming it and the fix.

    Example:
        >>> open_hessian("no/such/run") is None
        True
    """
    from crumple.hessian.results import check

    return _open_beside(folder, HESSIAN, check)


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
    """The spread over random directions in a run folder, or ``None`` if it holds none. A
    store that cannot be read, or is not a spread of numbers, is a :class:`CrumpleError`
    naming it and the fix.

    Example:
        >>> open_spread("no/such/run") is None
        True
    """
    return _open_beside(folder, SPREAD, _check_spread)


def save_sharpness(folder: str | Path, sharpness: xr.Dataset) -> Path:
    """Write the curvature measured in training (``Recorder.sharpness()``) to
    ``folder/sharpness.zarr``, replacing any written before; ``open_run(folder)["sharpness"]``
    reads it and the run's page draws it against the step."""
    if not isinstance(sharpness, xr.Dataset) or "lambda_max" not in sharpness:
        what = f"the curvature history of Recorder.sharpness(), got {type(sharpness).__name__}"
        raise CrumpleError(f"save_sharpness needs {what}")
    return _save_beside(folder, SHARPNESS, sharpness)


def open_sharpness(folder: str | Path) -> xr.Dataset | None:
    """The curvature measured in training in a run folder, or ``None`` if it holds none."""
    return _open_beside(folder, SHARPNESS, lambda ds: _check_holds(ds, "lambda_max", "step"))


def _check_spread(ds: xr.Dataset) -> None:
    _check_holds(ds, "loss", "direction")


def _check_holds(ds: xr.Dataset, var: str, dim: str) -> None:
    if var not in ds or dim not in ds[var].dims:
        raise ValueError(f"it holds {sorted(map(str, ds.data_vars))}, not {var} by {dim}")


def _save_beside(folder: str | Path, name: str, results: xr.Dataset) -> Path:
    """Write ``results`` as ``folder/name`` (a zarr store beside the surface), replacing any
    written before whole (:func:`_replace_store`), as the folder's one writer, with a digest
    of its values (checked when it is opened: a chunk deleted or changed is found)."""
    path = Path(folder) / name
    results = results.assign_attrs({VALUES_DIGEST: str(_digest(results))})
    with writer(folder):
        _replace_store(path, lambda store: results.to_zarr(store, mode="w", consolidated=False))
    return path


def _digest(ds: xr.Dataset) -> int:
    return digest(0, {name: values.values for name, values in ds.data_vars.items()})


def _open_beside(folder: str | Path, name: str, check) -> xr.Dataset | None:
    """The store ``folder/name`` read whole, its variables numbers and ``check(ds)`` passed
    (it raises a ``ValueError`` for what the pages cannot draw), or ``None`` if there is none;
    else an error that names the store and a fix that touches it alone."""
    path = Path(folder) / name
    if not path.exists():
        return None
    try:
        ds = xr.open_zarr(path, consolidated=False).load()
        for var, values in ds.data_vars.items():
            if values.dtype.kind not in "iuf":
                raise ValueError(f"its variable {var!r} holds {values.dtype} values, not numbers")
        check(ds)
        recorded = ds.attrs.pop(VALUES_DIGEST, None)  # none in a store written before digests
        if recorded is not None and recorded != str(_digest(ds)):
            raise ValueError("its values do not match their digest (a chunk missing or changed)")
    except Exception as e:
        raise _damaged_beside(path, e) from e
    return ds


def _damaged_beside(path: Path, e: Exception) -> CrumpleError:
    folder = str(path.parent)
    again = {
        HESSIAN: f"crumple hessian --out {folder!r}",
        SPREAD: f"crumple surface ... --spread N --out {folder!r} (the run's own options: "
        "its tiles are read, not recomputed)",
        SHARPNESS: f"crumple surface --trajectory TRAINING_FOLDER ... --out {folder!r}",
    }.get(path.name, "the command that wrote it")
    said = str(e).splitlines()[0][:200] if str(e) else ""
    return CrumpleError(
        f"{str(path)!r} is damaged and cannot be read ({type(e).__name__}: {said}); the surface "
        f"in {DATA} is not affected: write it again with {again}, or delete just {str(path)!r}"
    )


def beside(
    folder: str | Path, names=("hessian", "spread", "sharpness")
) -> dict[str, xr.Dataset | list[str] | None]:
    """The results kept beside a run's surface that its page draws, as
    :func:`crumple.plot.report`'s keywords: ``hessian``, ``spread`` and ``sharpness`` (or
    those of ``names``; ``None`` for one the folder does not hold), and ``notes``: for each
    store that is damaged, left out so that the surface is still drawn, what is wrong and
    the fix (also given as a warning).

    Example:
        >>> beside("no/such/run")
        {'hessian': None, 'spread': None, 'sharpness': None, 'notes': []}
    """
    out: dict = {}
    notes = []
    openers = {"hessian": open_hessian, "spread": open_spread, "sharpness": open_sharpness}
    for name in names:
        opener = openers[name]
        try:
            out[name] = opener(folder)
        except CrumpleError as e:
            out[name] = None
            notes.append(f"{name} not drawn: {e}")
            warnings.warn(f"crumple: {notes[-1]}", stacklevel=2)
    return out | {"notes": notes}
