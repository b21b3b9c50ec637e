"""Mesh files of a landscape for ParaView (VTK), 3-D printing (STL) and Blender (OBJ, GLB),
written by meshio (VTK) and trimesh (the others); the heights are :mod:`crumple.plot.meshes`'.

- ``.vtu`` (VTK XML) and ``.vtk`` (legacy VTK): the grid nodes alpha-major, as
  ``ds.loss.transpose("alpha", "beta").values.ravel()`` (node ``i * nb + j`` at
  ``(alpha[i], beta[j], z)``), one quad
  per grid cell, point data ``loss`` (the values as computed, unscaled), ``drawn`` (the
  page's value: clipped, log10 with ``log``; ``z = z_scale * drawn``) and every other
  variable over the grid (metrics, the curvature map's ``lambda_max``...). A ``.vtu``
  also records ``z_scale``, ``log``, ``loss_floor`` and ``loss_cap`` as field data (meshio
  writes none, so they are added to its XML); a legacy ``.vtk`` holds the point data only.
  ``.vts`` (a structured grid) is refused: meshio writes none; ``.vtu`` holds the same.
- ``.stl``: a closed solid (walls and a flat base), watertight, z up; STL keeps no colour
  and no record of the scale.
- ``.obj``: the surface, z up, coloured by loss (vertex colours), the scale in its header.
  Blender's OBJ import assumes y up: choose Up Axis Z there.
- ``.glb``: the surface, coloured by loss; y up as glTF requires (a vertex is ``(alpha, z,
  -beta)``; Blender turns it back to z up), the scale in the scene's ``extras``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from crumple.errors import CrumpleError, require_extra
from crumple.files import suffixed_path, written
from crumple.plot.meshes import Heights, check_flag, heights, mesh

SUFFIXES = (".vtu", ".vtk", ".stl", ".obj", ".glb")
VTK = (".vtu", ".vtk")


def mesh_path(path: object, option: str = "path", allowed: tuple[str, ...] = SUFFIXES) -> Path:
    """``path`` as a Path if its suffix is one of ``allowed`` mesh formats, else a
    :class:`CrumpleError` naming ``option`` and the fix.

    Example:
        >>> mesh_path("landscape.STL").name
        'landscape.STL'
        >>> try:
        ...     mesh_path("run.vts", "--vtk", VTK)
        ... except CrumpleError as e:
        ...     print(str(e)[:67])
        --vtk='run.vts' is a VTK structured grid, which meshio cannot write
    """
    if isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() == ".vts":
        raise CrumpleError(
            f"{option}={str(path)!r} is a VTK structured grid, which meshio cannot write; give "
            f"a .vtu file (VTK unstructured grid: the same nodes and point data, opened by "
            f"ParaView alike), e.g. {str(Path(path).with_suffix('.vtu'))!r}"
        )
    return suffixed_path(path, option, allowed, "surface.stl")


def save_mesh(
    ds: xr.Dataset,
    path: str | Path,
    *,
    log: bool = False,
    zmax: float | None = None,
    z_scale: float | str | None = None,
    solid: bool | None = None,
    base: float | None = None,
) -> Path:
    """Write the landscape to a mesh file; the format follows the suffix (``.vtu``,
    ``.vtk``, ``.stl``, ``.obj``, ``.glb``: see the module's notes), whole or not at all
    (:func:`crumple.files.written`); an existing file is replaced. Needs the ``mesh`` extra.

    Args:
        ds: a surface from :func:`crumple.surface` (or ``crumple.open(RUN)["surface"]``).
        path: the file; its folder is made if missing.
        log, zmax, z_scale, base: as for :func:`crumple.plot.mesh` (heights as on the page;
            by default the drawn range is half the larger alpha/beta span).
        solid: a closed solid (walls and a flat base) instead of the surface; default True
            for ``.stl``, False for the others (VTK files hold the surface only).

    Example:
        >>> import tempfile, meshio
        >>> a = np.linspace(-1, 1, 5)
        >>> ds = xr.Dataset({"loss": (("alpha", "beta"), a[:, None] ** 2 + a[None, :] ** 2)},
        ...                 coords={"alpha": a, "beta": a})
        >>> file = save_mesh(ds, f"{tempfile.mkdtemp()}/landscape.vtu")
        >>> vtu = meshio.read(file)
        >>> len(vtu.points), bool((vtu.point_data["loss"] == ds.loss.values.ravel()).all())
        (25, True)
    """
    path = mesh_path(path)
    if solid is not None:
        check_flag("solid", solid)
    suffix = path.suffix.lower()
    scaling = dict(log=log, zmax=zmax, z_scale=z_scale)
    if suffix in VTK:
        if solid:
            raise CrumpleError(
                f"solid={solid!r} does not apply to {suffix}: a VTK file holds the surface and "
                "its point data; leave solid out, or write .stl, .obj or .glb for a solid"
            )
        meshio = require_extra("meshio", "mesh")
        h = heights(ds, **scaling)
        with written(path) as temporary:
            meshio.write(temporary, _vtk_mesh(meshio, ds, h), binary=True)
            if suffix == ".vtu":
                _add_field_data(temporary, h)
        return path
    closed = suffix == ".stl" if solid is None else bool(solid)
    shape = mesh(ds, **scaling, solid=closed, base=base)
    with written(path) as temporary:
        if suffix == ".stl":
            shape.export(temporary, file_type="stl")
        elif suffix == ".obj":
            shape.export(temporary, file_type="obj", header=_header(shape.metadata["crumple"]))
        else:
            _write_glb(shape, temporary)
    return path


def _vtk_mesh(meshio, ds: xr.Dataset, h: Heights):
    """The meshio mesh: grid nodes, quads, and the point data."""
    na, nb = h.z.shape
    points = np.column_stack([np.repeat(h.alpha, nb), np.tile(h.beta, na), h.z.reshape(-1)])
    data = {"loss": ds.loss.transpose("alpha", "beta").values, "drawn": h.drawn}
    for name, var in ds.data_vars.items():
        if name not in data and set(var.dims) == {"alpha", "beta"}:
            data[str(name)] = var.transpose("alpha", "beta").values
    point_data = {
        name: np.asarray(values, dtype=np.float64).reshape(-1) for name, values in data.items()
    }
    return meshio.Mesh(points, [("quad", h.quads())], point_data=point_data)


def _add_field_data(path: Path, h: Heights) -> None:
    """Add the scale to the VTU meshio wrote, as the grid's field data (before its piece,
    where ParaView and meshio read it), with a comment saying what ``z`` is."""
    import xml.etree.ElementTree as ET

    tree = ET.parse(path, parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    grid = tree.getroot().find("UnstructuredGrid")
    record = h.record()
    fields = ET.Element("FieldData")
    for name in ("z_scale", "log", "loss_floor", "loss_cap"):
        array = ET.SubElement(
            fields,
            "DataArray",
            type="Float64",
            Name=name,
            NumberOfTuples="1",
            format="ascii",
        )
        array.text = repr(float(record[name]))
    grid.insert(0, fields)
    tree.getroot().insert(0, ET.Comment(f" crumple: z = {record['z']} "))
    tree.write(path, encoding="utf-8", xml_declaration=True)


def _header(record: dict) -> str:
    """The OBJ header: what the heights are."""
    parts = [f"{k} = {v}" for k, v in record.items() if k != "z"]
    return f"crumple landscape, z up: z = {record['z']}; " + ", ".join(parts)


def _write_glb(shape, path: Path) -> None:
    """The mesh turned to glTF's y up, ``(x, y, z) -> (x, z, -y)`` (a rotation, so faces
    keep facing out), with the scale in the scene's extras."""
    trimesh = require_extra("trimesh", "mesh")
    turned = shape.copy()
    turned.vertices = shape.vertices[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0])
    scene = trimesh.Scene(turned)
    scene.metadata["crumple"] = dict(shape.metadata["crumple"], up="y (glTF): (alpha, z, -beta)")
    path.write_bytes(scene.export(file_type="glb"))
