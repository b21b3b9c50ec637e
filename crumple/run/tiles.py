"""Tiles that are checked, not trusted: each tile of a run store carries a digest of its
values, written after them, and a tile counts as finished only while its values still match
it. A chunk file deleted, truncated or with a byte flipped, or a digest that cannot be read,
makes its tile damaged: shown as nan and computed again when the run resumes.

Runs written before digests (``tile_done`` flags only) are read and resumed as before, their
finished tiles trusted but counted as unverified; a chunk of theirs that cannot be decoded
still makes its tile damaged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import xarray as xr

from crumple.grid import blocks
from crumple.names import TILE_DIGEST as DIGEST
from crumple.names import TILE_DONE as DONE


@dataclass
class Tiles:
    """What a run store's tiles hold, as read.

    Attributes:
        done: per tile, finished and matching its digest (in a run written before digests:
            marked finished).
        damaged: the finished tiles whose chunks are missing, cannot be decoded or do not
            match their digest, and the tiles whose digest cannot be read.
        unverified: finished tiles of a run written before digests, trusted unchecked.
        values: each variable over the grid, nan outside the finished tiles.

    Example:
        >>> Tiles.fresh(3).done
        [False, False, False]
    """

    done: list[bool]
    damaged: list[int]
    unverified: int
    values: dict[str, np.ndarray]

    @classmethod
    def fresh(cls, n: int) -> Tiles:
        """``n`` tiles, none done (values not read)."""
        return cls([False] * n, [], 0, {})

    def finished(self, k: int) -> None:
        """Tile ``k`` was written whole."""
        self.done[k] = True
        if k in self.damaged:
            self.damaged.remove(k)

    def shown(self, lazy: xr.Dataset) -> xr.Dataset:
        """``lazy`` (the surface of the store these tiles were read from, opened lazily) with
        the values read, without bookkeeping arrays and attributes, and with the attributes
        ``tiles_done`` ("25 of 27"), ``tiles_damaged`` (and ``tiles_unverified``)."""
        surface = lazy[list(self.values)]
        values = {name: surface[name].copy(data=v) for name, v in self.values.items()}
        surface = surface.assign(values).load()
        surface.attrs["tiles_done"] = f"{sum(self.done)} of {len(self.done)}"
        surface.attrs["tiles_damaged"] = len(self.damaged)
        if self.unverified:
            surface.attrs["tiles_unverified"] = self.unverified
        for key in ("fingerprint", "plan"):
            surface.attrs.pop(key, None)
        return surface


def digest(k: int, values: Mapping[str, np.ndarray]) -> int:
    """Tile ``k``'s digest: BLAKE2b of its index and each variable's float64 values (by name;
    every nan as one nan, since a chunk all nan is not stored and reads back as the fill
    value), as a nonzero 64-bit number (0 marks a tile not done).

    Example:
        >>> a = digest(0, {"loss": np.array([[1.0, -np.nan]])})
        >>> a == digest(0, {"loss": [[1.0, np.nan]]}), a == digest(1, {"loss": [[1.0, np.nan]]})
        (True, False)
    """
    h = hashlib.blake2b(str(k).encode(), digest_size=8)
    for name in sorted(values):
        v = np.asarray(values[name], dtype="<f8")
        h.update(name.encode() + b"\0" + np.where(np.isnan(v), np.nan, v).tobytes())
    return int.from_bytes(h.digest(), "little") | 1


def bookkeeping(group) -> str:
    """The name of the per-tile array in a run store's surface ``group`` (zarr): the digests,
    or the done flags of a run written before digests."""
    return DIGEST if DIGEST in group else DONE


def verify(group, names: list[str]) -> Tiles:
    """Read the surface ``group`` of a run store (zarr) and check each finished tile of the
    variables ``names`` against its digest. A layout that does not fit together (arrays of
    other shapes or chunks, a digest per tile missing) raises ``ValueError``.

    Example:
        >>> import tempfile, zarr, crumple as cr
        >>> from crumple.run.store import RunStore
        >>> grid = cr.Grid([0.0, 1.0], [0.0, 1.0])
        >>> run = RunStore.create(tempfile.mkdtemp(), grid, ["loss"], list(grid.tiles(2)), {})
        >>> run.write(0, (slice(0, 1), slice(0, 2)), {"loss": np.ones((1, 2))})
        >>> group = zarr.open_group(f"{run.folder}/landscape.zarr", path="surface")
        >>> bookkeeping(group), verify(group, ["loss"]).done
        ('tile_digest', [True, False])
    """
    if not names:
        raise ValueError("the surface holds no variables")
    shape, chunks = group[names[0]].shape, group[names[0]].chunks
    tiles = list(blocks(shape, int(np.prod(chunks))))
    mark = bookkeeping(group)
    fits = [group[n].shape == shape and group[n].chunks == chunks for n in names]
    if not all(fits) or group[mark].shape != (len(tiles),):
        raise ValueError(f"the arrays {names} and {mark!r} do not fit one grid of tiles")
    marks, unreadable = _read(group[mark], [(slice(k, k + 1),) for k in range(len(tiles))])
    values, broken = {}, set()
    for name in names:
        values[name], bad = _read(group[name], tiles)
        broken |= bad
    state = Tiles([False] * len(tiles), [], 0, values)
    for k, tile in enumerate(tiles):
        if k in unreadable:
            state.damaged.append(k)
        elif marks[k]:
            tile_values = {name: v[tile] for name, v in values.items()}
            verified = mark == DONE or int(marks[k]) == digest(k, tile_values)
            if k in broken or not verified:
                state.damaged.append(k)
            else:
                state.done[k] = True
                state.unverified += mark == DONE
        if not state.done[k]:
            for v in values.values():
                v[tile] = np.nan
    return state


def _read(array, tiles: list[tuple[slice, ...]]) -> tuple[np.ndarray, set[int]]:
    """``array`` (zarr) read whole, and the tiles whose chunks cannot be decoded (the fill
    value there), found tile by tile when the whole read fails."""
    try:
        return array[...], set()
    except Exception:  # a damaged chunk: zstd, shape and codec errors alike
        pass
    whole = np.full(array.shape, array.fill_value, dtype=array.dtype)
    unreadable = set()
    for k, tile in enumerate(tiles):
        try:
            whole[tile] = array[tile]
        except Exception:
            unreadable.add(k)
    return whole, unreadable
