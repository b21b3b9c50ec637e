"""The landscape as a 3-D mesh: the grid nodes at the heights the page draws, as a surface
or closed into a solid (side walls down to a flat base) that a slicer can print.

Heights. A node's drawn value is the page's: the loss, clipped at the page's floor and
cap (:class:`~crumple.plot.scale.Scale`: ``log`` draws log10, ``zmax`` sets the cap), and
its height is ``z = z_scale * drawn``. The default ``z_scale`` (``None`` or ``"auto"``)
gives the drawn range half the larger of the alpha and beta spans, as the page's box
does (x : y : z = 1 : 1 : 0.5), so that a surface whose loss varies by 1e-3 over a plane
two units wide is not flat when printed; a number sets it (1: heights in loss units).
alpha and beta are never rescaled: x and y are the plane's coordinates. The scale used
is in ``mesh.metadata["crumple"]`` and in the files that have room for it.

nan. A node whose loss is nan (a run not finished, a point that failed) is a gap, as on
the page: the quads around it are left out and the node sits at the floor, in no face. A
solid needs every height, and refuses such a surface with the count. inf and values
beyond the cap are drawn at the cap, as on the page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np
import xarray as xr

from crumple.errors import CrumpleError, require_extra
from crumple.plot.scale import Scale

ASPECT = 0.5  # the drawn range over the larger alpha/beta span: the page's box, z 0.5 of x, y
BASE = 0.1  # the default base depth, of the larger alpha/beta span
GREY = (160, 160, 160, 255)  # the colour of nan nodes, the walls' foot and the base


@dataclass(frozen=True)
class Heights:
    """The grid nodes as a mesh places them: ``z[i, j]`` is the height of
    ``(alpha[i], beta[j])``, ``missing`` the nan nodes (at the floor, in no face)."""

    alpha: np.ndarray
    beta: np.ndarray
    z: np.ndarray
    drawn: np.ndarray  # the page's values: clipped loss, log10 with log; nan at gaps
    missing: np.ndarray
    scale: Scale
    z_scale: float

    @property
    def flipped(self) -> bool:
        """Whether one axis runs downwards, so that faces must be turned to face up."""
        return bool((self.alpha[1] < self.alpha[0]) != (self.beta[1] < self.beta[0]))

    def quads(self) -> np.ndarray:
        """The grid's quads (:func:`grid_faces`), counter-clockwise seen from above."""
        quads = grid_faces(self.z.shape, self.missing)
        return quads[:, ::-1] if self.flipped else quads

    def record(self) -> dict[str, float | bool | str]:
        """What the heights mean, for a file's metadata."""
        drawn = "clip(loss, loss_floor, loss_cap)"
        drawn = f"log10({drawn})" if self.scale.log else drawn
        return {
            "z": f"z_scale * {drawn}",
            "z_scale": self.z_scale,
            "log": self.scale.log,
            "loss_floor": self.scale.floor,
            "loss_cap": self.scale.cap,
        }


def heights(
    ds: xr.Dataset,
    *,
    log: bool = False,
    zmax: float | None = None,
    z_scale: float | str | None = None,
) -> Heights:
    """Where :func:`mesh` puts each grid node (see the module's note on heights and nan).

    Example:
        >>> a = np.array([-1.0, 0.0, 1.0])
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.outer(a, a) + 2)},
        ...                 coords={"alpha": a, "beta": a})
        >>> h = heights(ds)
        >>> h.z_scale, float(h.z.max() - h.z.min())  # the drawn range 2 becomes half of 2
        (0.5, 1.0)
    """
    loss = _surface_loss(ds)
    check_flag("log", log)
    scale = Scale(loss.values, log, zmax)
    if scale.empty:
        raise CrumpleError(
            f"ds.loss has nothing to export: {scale.note()}; export a run whose surface "
            "holds finite values (crumple info RUN says how complete it is)"
        )
    alpha, beta = (_axis(ds, d) for d in ("alpha", "beta"))
    drawn = scale(loss.values)
    low, high = scale.range()
    if z_scale is None or z_scale == "auto":
        span = max(np.ptp(alpha), np.ptp(beta))
        z_scale = ASPECT * span / (high - low) if high > low else 1.0
    else:
        z_scale = _positive("z_scale", z_scale, "'auto' (None) or a number above 0, e.g. 1.0")
    missing = np.isnan(drawn)
    z = z_scale * np.where(missing, low, drawn)
    return Heights(alpha, beta, z, drawn, missing, scale, float(z_scale))


def check_flag(name: str, value: object) -> None:
    """Refuse a ``log=`` or ``solid=`` that is not True or False (``"no"`` would read as
    True).

    Example:
        >>> check_flag("log", False)
    """
    if not isinstance(value, bool):
        raise CrumpleError(f"{name} must be True or False, got {value!r}")


def _surface_loss(ds: object) -> xr.DataArray:
    """``ds.loss`` over ``("alpha", "beta")``, two points or more on each."""
    if not isinstance(ds, xr.Dataset) or "loss" not in ds:
        raise CrumpleError(
            f"ds={type(ds).__name__} is not a surface: give the xarray.Dataset of "
            "crumple.surface (or crumple.open(RUN)['surface']), with a 'loss' variable"
        )
    dims = tuple(ds.loss.dims)
    if set(dims) != {"alpha", "beta"}:
        raise CrumpleError(
            f"ds.loss has dims {dims!r}, not ('alpha', 'beta'): a mesh needs a surface; a "
            "line (crumple.line) has none: make one with crumple.surface"
        )
    loss = ds.loss.transpose("alpha", "beta")
    if min(loss.shape) < 2:
        raise CrumpleError(
            f"ds.loss has shape {loss.shape!r}: a mesh needs two points or more along "
            "alpha and beta; make the surface on a grid of at least 2 x 2"
        )
    return loss


def _axis(ds: xr.Dataset, name: str) -> np.ndarray:
    """A coordinate, rising or falling throughout (a mesh of an unsorted one folds)."""
    axis = np.asarray(ds[name].values, dtype=np.float64)
    steps = np.diff(axis)
    if not (np.isfinite(axis).all() and ((steps > 0).all() or (steps < 0).all())):
        raise CrumpleError(
            f"ds.{name} is not sorted without repeats ({axis[:5].tolist()!r}...): a mesh over "
            f"it would fold; sort it with ds.sortby({name!r}) and drop repeated values"
        )
    return axis


def _positive(name: str, value: object, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise CrumpleError(f"{name}={value!r} is not allowed; give {allowed}")
    if value <= 0:
        raise CrumpleError(f"{name}={value!r} is not above 0; give {allowed}")
    return float(value)


def grid_faces(shape: tuple[int, int], missing: np.ndarray | None = None) -> np.ndarray:
    """The quads of a grid of ``shape`` nodes (node ``i * shape[1] + j`` at ``(alpha[i],
    beta[j])``), counter-clockwise seen from above; quads at a ``missing`` node left out.

    Example:
        >>> grid_faces((2, 3)).tolist()
        [[0, 3, 4, 1], [1, 4, 5, 2]]
    """
    na, nb = shape
    k = np.arange(na * nb).reshape(na, nb)
    quads = np.stack([k[:-1, :-1], k[1:, :-1], k[1:, 1:], k[:-1, 1:]], axis=-1).reshape(-1, 4)
    if missing is not None and missing.any():
        quads = quads[~missing.reshape(-1)[quads].any(axis=1)]
    return quads


def mesh(
    ds: xr.Dataset,
    *,
    log: bool = False,
    zmax: float | None = None,
    z_scale: float | str | None = None,
    solid: bool = False,
    base: float | None = None,
):
    """The landscape as a ``trimesh.Trimesh``: one vertex per grid node (node ``i * nb +
    j`` at ``(alpha[i], beta[j], z)``), two triangles per grid cell, coloured by the
    drawn loss on the page's colour scale (Viridis, floor to cap). Needs the ``mesh`` extra.

    Args:
        ds: a surface from :func:`crumple.surface` (or ``crumple.open(RUN)["surface"]``).
        log, zmax: as for :func:`crumple.plot.surface`: log10 of the loss, and the cap.
        z_scale: the height per drawn unit; ``None`` or ``"auto"``: the drawn range is half
            the larger alpha/beta span (the page's box).
        solid: close the surface into a solid: side walls from its edge down to a flat base
            ``base`` below its lowest point, watertight (for a 3-D printer).
        base: the base's depth below the lowest point, in the mesh's units (default a tenth
            of the larger alpha/beta span).

    Example:
        >>> a = np.linspace(-1, 1, 5)
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), a[:, None] ** 2 + a[None, :] ** 2)},
        ...                 coords={"alpha": a, "beta": a})
        >>> m = mesh(ds, solid=True)
        >>> len(m.vertices), m.is_watertight, m.is_volume
        (42, True, True)
    """
    trimesh = require_extra("trimesh", "mesh")
    check_flag("solid", solid)
    h = heights(ds, log=log, zmax=zmax, z_scale=z_scale)
    shape = h.z.shape
    nodes = np.column_stack(
        [np.repeat(h.alpha, shape[1]), np.tile(h.beta, shape[0]), h.z.reshape(-1)]
    )
    quads = grid_faces(shape, h.missing)
    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    colours = _colours(h)
    record = h.record()
    if solid:
        depth = BASE * max(np.ptp(h.alpha), np.ptp(h.beta)) if base is None else base
        depth = _positive("base", depth, "the base's depth below the lowest point, e.g. 0.2")
        _refuse_gaps(h)
        nodes, faces, colours = _close(nodes, faces, colours, shape, h.z.min() - depth)
        record["base"] = depth
    faces = faces[:, ::-1] if h.flipped else faces  # built facing up for rising axes
    out = trimesh.Trimesh(nodes, faces, vertex_colors=colours, process=False)
    out.metadata["crumple"] = record
    return out


def _refuse_gaps(h: Heights) -> None:
    n = int(h.missing.sum())
    if n:
        raise CrumpleError(
            f"ds.loss has {n} nan of {h.missing.size} values (points not computed, or "
            "failed): a solid needs a height at every grid point; finish the run (run its "
            "crumple surface command again to resume), or export the surface alone "
            "(solid=False; VTK, OBJ and GLB leave the gaps open)"
        )


def _close(nodes, faces, colours, shape, z_base):
    """Side walls from the surface's edge down to ``z_base`` and a flat base there: the
    edge's nodes once more at ``z_base`` and one node at the base's centre, so every
    edge joins two triangles and each faces outwards."""
    na, nb = shape
    k = np.arange(na * nb).reshape(na, nb)
    # the edge, counter-clockwise seen from above: along alpha at the first beta, ...
    ring = np.concatenate([k[:, 0], k[-1, 1:], k[-2::-1, -1], k[0, -2:0:-1]])
    n, m = len(nodes), len(ring)
    foot = n + np.arange(m)
    centre = n + m
    top, nxt = ring, np.roll(ring, -1)
    foot_next = np.roll(foot, -1)
    walls = np.concatenate(
        [np.column_stack([top, foot, foot_next]), np.column_stack([top, foot_next, nxt])]
    )
    floor = np.column_stack([np.full(m, centre), foot_next, foot])
    lower = np.column_stack([nodes[ring, 0], nodes[ring, 1], np.full(m, z_base)])
    middle = (nodes[:, :2].min(axis=0) + nodes[:, :2].max(axis=0)) / 2
    nodes = np.concatenate([nodes, lower, [[*middle, z_base]]])
    colours = np.concatenate([colours, np.tile(GREY, (m + 1, 1))]).astype(np.uint8)
    return nodes, np.concatenate([faces, walls, floor]), colours


def _colours(h: Heights) -> np.ndarray:
    """RGBA per node: the drawn value on the page's Viridis, from floor to cap (plotly's
    colour scale, interpolated as plotly does, linearly in RGB); nan nodes grey."""
    from plotly.colors import convert_colors_to_same_type, get_colorscale, unlabel_rgb

    stops = get_colorscale("Viridis")
    at = np.array([s for s, _ in stops])
    named = convert_colors_to_same_type([c for _, c in stops], colortype="rgb")[0]
    rgb = np.array([unlabel_rgb(c) for c in named])
    low, high = h.scale.range()
    drawn = h.drawn.reshape(-1)
    t = np.nan_to_num((drawn - low) / (high - low)) if high > low else np.zeros(drawn.size)
    channels = [np.interp(t, at, rgb[:, c]) for c in range(3)]
    out = np.column_stack([*channels, np.full(t.size, 255.0)]).round().astype(np.uint8)
    out[h.missing.reshape(-1)] = GREY
    return out
