"""Mesh export (crumple.plot.mesh / save_mesh, `crumple export`): the files open in the
maintained readers (meshio, trimesh), hold the grid nodes at the page's heights, the STL is
a watertight volume, and bad requests are refused with the fix."""

import sys

import meshio
import numpy as np
import pytest
import trimesh
import xarray as xr

import crumple as cr
from crumple.cli import main
from crumple.errors import CrumpleError
from crumple.plot.scale import Scale
from tests.test_cli import heavy_modules_after

ALPHA = np.linspace(-1.0, 1.0, 7)
BETA = np.linspace(-0.5, 0.5, 5)


def landscape(loss=None, **variables) -> xr.Dataset:
    """An asymmetric bowl over a 7 x 5 grid (alpha and beta differ in span), with more
    variables over the grid if given."""
    if loss is None:
        loss = 1 + (ALPHA[:, None] - 0.3) ** 2 + 4 * BETA[None, :] ** 2 + 0.2 * ALPHA[:, None]
    data = {"loss": (("alpha", "beta"), loss)}
    data |= {k: (("alpha", "beta"), v) for k, v in variables.items()}
    return xr.Dataset(data, coords={"alpha": ALPHA, "beta": BETA})


def nodes(ds) -> np.ndarray:
    """The grid nodes (alpha, beta) in the order of ds.loss.values.ravel()."""
    a, b = np.meshgrid(ds.alpha.values, ds.beta.values, indexing="ij")
    return np.column_stack([a.ravel(), b.ravel()])


def page_heights(ds, log=False, zmax=None) -> np.ndarray:
    """The values the page's 3-D surface draws, per node in ravel order (plotly holds them
    as z[beta, alpha])."""
    fig = cr.plot.surface(ds, log=log, zmax=zmax, critical=False)
    return np.asarray(fig.data[0].z, dtype=np.float64).T.ravel()


def test_vtu_holds_the_grid_nodes_and_the_values(tmp_path):
    curvature = np.random.default_rng(0).normal(size=(7, 5))
    ds = landscape(accuracy=np.full((7, 5), 0.5), lambda_max=curvature)
    file = cr.plot.save_mesh(ds, tmp_path / "run.vtu")
    vtu = meshio.read(file)
    np.testing.assert_array_equal(vtu.points[:, :2], nodes(ds))
    np.testing.assert_array_equal(vtu.point_data["loss"], ds.loss.values.ravel())
    np.testing.assert_array_equal(vtu.point_data["lambda_max"], curvature.ravel())
    np.testing.assert_array_equal(vtu.point_data["accuracy"], 0.5)
    drawn = page_heights(ds)
    np.testing.assert_allclose(vtu.point_data["drawn"], drawn, rtol=1e-12)
    z_scale = float(vtu.field_data["z_scale"][0])
    np.testing.assert_allclose(vtu.points[:, 2], z_scale * drawn, rtol=1e-12)
    assert [c.type for c in vtu.cells] == ["quad"] and len(vtu.cells[0].data) == 6 * 4
    assert float(vtu.field_data["log"][0]) == 0.0
    assert float(vtu.field_data["loss_cap"][0]) == ds.loss.values.max()
    assert "crumple: z = z_scale * clip(loss" in file.read_text()


def test_legacy_vtk_holds_the_same_point_data(tmp_path):
    ds = landscape(accuracy=np.ones((7, 5)))
    vtk = meshio.read(cr.plot.save_mesh(ds, tmp_path / "run.vtk"))
    np.testing.assert_array_equal(vtk.points[:, :2], nodes(ds))
    np.testing.assert_array_equal(vtk.point_data["loss"], ds.loss.values.ravel())
    assert set(vtk.point_data) == {"loss", "drawn", "accuracy"}


def test_stl_is_a_watertight_volume_with_the_page_heights_on_top(tmp_path):
    ds = landscape()
    stl = trimesh.load(cr.plot.save_mesh(ds, tmp_path / "run.stl", base=0.25))
    assert stl.is_watertight and stl.is_volume and stl.volume > 0
    h = cr.plot.meshes.heights(ds)
    expected = np.column_stack([nodes(ds), h.z_scale * page_heights(ds)])
    bottom = expected[:, 2].min() - 0.25
    top = stl.vertices[stl.vertices[:, 2] > bottom + 1e-9]
    assert len(top) == ds.loss.size
    order = np.lexsort((top[:, 1], top[:, 0]))  # alpha, then beta: the ravel order
    np.testing.assert_allclose(top[order], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stl.vertices[:, 2].min(), bottom, rtol=1e-6)
    # the base: the edge's 2 (7 + 5) - 4 nodes and the centre, flat
    assert len(stl.vertices) == ds.loss.size + 20 + 1
    assert np.isclose(stl.bounds[0, :2], [-1.0, -0.5]).all()


def test_obj_and_glb_load_back_with_the_grid_vertices(tmp_path):
    ds = landscape()
    z = cr.plot.meshes.heights(ds).z.ravel()
    obj = trimesh.load(cr.plot.save_mesh(ds, tmp_path / "run.obj"), process=False)
    np.testing.assert_allclose(obj.vertices, np.column_stack([nodes(ds), z]), atol=1e-7)
    assert len(obj.faces) == 2 * 6 * 4
    assert "z_scale" in (tmp_path / "run.obj").read_text().splitlines()[0]
    scene = trimesh.load(cr.plot.save_mesh(ds, tmp_path / "run.glb"), process=False)
    (glb,) = scene.geometry.values()
    a, b = nodes(ds).T
    np.testing.assert_allclose(glb.vertices, np.column_stack([a, z, -b]), rtol=1e-6)  # y up
    assert scene.metadata["crumple"]["z_scale"] == pytest.approx(cr.plot.meshes.heights(ds).z_scale)
    # the page's colour scale: Viridis from the lowest loss to the cap
    colours = glb.visual.vertex_colors
    low, high = np.argmin(ds.loss.values), np.argmax(ds.loss.values)
    assert colours[low][:3].tolist() == [0x44, 0x01, 0x54]
    assert colours[high][:3].tolist() == [0xFD, 0xE7, 0x25]


def test_obj_and_glb_solids_are_watertight(tmp_path):
    ds = landscape()
    obj = trimesh.load(cr.plot.save_mesh(ds, tmp_path / "s.obj", solid=True))
    scene = trimesh.load(cr.plot.save_mesh(ds, tmp_path / "s.glb", solid=True))
    for shape in (obj, *scene.geometry.values()):
        assert shape.is_watertight and shape.is_volume
        assert len(shape.vertices) == ds.loss.size + 21


def test_default_heights_span_half_the_larger_axis_however_small_the_loss_varies():
    ds = landscape(2.0 + 1e-3 * landscape().loss.values)
    m = cr.plot.mesh(ds)
    assert np.ptp(m.vertices[:, 2]) == pytest.approx(0.5 * 2.0)  # alpha spans 2, beta 1
    assert np.ptp(m.vertices[:, 0]) == 2.0 and np.ptp(m.vertices[:, 1]) == 1.0
    solid = cr.plot.mesh(ds, solid=True)
    assert solid.bounds[0, 2] == pytest.approx(m.vertices[:, 2].min() - 0.1 * 2.0)


def test_z_scale_and_log_change_the_heights_as_documented():
    ds = landscape()
    loss = ds.loss.values.ravel()
    np.testing.assert_allclose(cr.plot.mesh(ds, z_scale=1).vertices[:, 2], loss)
    np.testing.assert_allclose(cr.plot.mesh(ds, z_scale=3.0).vertices[:, 2], 3 * loss)
    logged = cr.plot.mesh(ds, log=True, z_scale="auto")
    np.testing.assert_allclose(np.ptp(logged.vertices[:, 2]), 1.0)
    factor = logged.metadata["crumple"]["z_scale"]
    np.testing.assert_allclose(logged.vertices[:, 2], factor * np.log10(loss))
    np.testing.assert_allclose(cr.plot.mesh(ds, log=True, z_scale=1).vertices[:, 2], np.log10(loss))
    assert logged.metadata["crumple"]["z"] == "z_scale * log10(clip(loss, loss_floor, loss_cap))"


def test_heights_are_capped_where_the_page_caps_them(tmp_path):
    loss = landscape().loss.values.copy()
    loss[0, 0], loss[1, 0] = 1e36, np.inf  # a diverged corner
    ds = landscape(loss)
    for options in ({}, {"log": True}, {"zmax": 2.0}):
        h = cr.plot.meshes.heights(ds, **options, z_scale=1)
        np.testing.assert_allclose(h.z.ravel(), page_heights(ds, **options), rtol=1e-12)
        cap = Scale(loss, options.get("log", False), options.get("zmax")).cap
        assert h.scale.cap == cap and h.z.max() == pytest.approx(h.scale(cap))
    vtu = meshio.read(cr.plot.save_mesh(ds, tmp_path / "capped.vtu"))
    assert vtu.point_data["loss"][0] == 1e36 and np.isinf(vtu.point_data["loss"][5])
    assert np.isfinite(vtu.points).all()
    assert trimesh.load(cr.plot.save_mesh(ds, tmp_path / "capped.stl")).is_volume


def test_nan_leaves_gaps_and_a_solid_is_refused_with_the_count(tmp_path):
    loss = landscape().loss.values.copy()
    loss[3, 2] = loss[6, 4] = np.nan  # an inner node (4 quads) and a corner (1 quad)
    ds = landscape(loss)
    vtu = meshio.read(cr.plot.save_mesh(ds, tmp_path / "gaps.vtu"))
    assert len(vtu.points) == 35 and len(vtu.cells[0].data) == 24 - 5
    assert np.isfinite(vtu.points).all() and np.isnan(vtu.point_data["loss"][17])
    obj = trimesh.load(cr.plot.save_mesh(ds, tmp_path / "gaps.obj"), process=False)
    assert len(obj.faces) == 2 * (24 - 5)
    with pytest.raises(CrumpleError, match=r"2 nan of 35 values .* a solid needs a height"):
        cr.plot.save_mesh(ds, tmp_path / "gaps.stl")
    assert not (tmp_path / "gaps.stl").exists()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (dict(path="x.ply"), r"ends in '.ply', not .vtu or .vtk or .stl or .obj or .glb"),
        (dict(path="x"), r"has no suffix"),
        (dict(path="x.vts"), r"structured grid, which meshio cannot write; give a .vtu"),
        (dict(path=3), r"path=3 is not a file name"),
        (dict(path="x.vtu", solid=True), r"solid=True does not apply to .vtu"),
        (dict(z_scale=0), r"z_scale=0 is not above 0"),
        (dict(z_scale="big"), r"z_scale='big' is not allowed; give 'auto'"),
        (dict(z_scale=True), r"z_scale=True is not allowed"),
        (dict(base=-1.0), r"base=-1.0 is not above 0"),
        (dict(zmax=0.5), r"zmax=0.5 is below the surface's smallest loss"),
        (dict(solid="no"), r"solid must be True or False, got 'no'"),
        (dict(path="x.obj", log="no"), r"log must be True or False, got 'no'"),
        (dict(path="folder.stl"), r"is a folder; give a file name in it"),
    ],
)
def test_bad_requests_are_refused_with_the_fix(tmp_path, call, message):
    path = call.pop("path", "x.stl")
    (tmp_path / "folder.stl").mkdir()
    path = tmp_path / path if isinstance(path, str) else path
    with pytest.raises(CrumpleError, match=message):
        cr.plot.save_mesh(landscape(), path, **call)


def test_what_is_no_surface_is_refused():
    with pytest.raises(CrumpleError, match=r"dims \('alpha',\).*make one with crumple.surface"):
        cr.plot.mesh(xr.Dataset({"loss": ("alpha", [1.0, 2.0])}, coords={"alpha": [0, 1]}))
    with pytest.raises(CrumpleError, match=r"shape \(7, 1\).*at least 2 x 2"):
        cr.plot.mesh(landscape().isel(beta=[0]))
    with pytest.raises(CrumpleError, match=r"nothing to export: no finite loss value"):
        cr.plot.mesh(landscape(np.full((7, 5), np.nan)))
    with pytest.raises(CrumpleError, match=r"ds=DataArray is not a surface"):
        cr.plot.mesh(landscape().loss)


def test_a_missing_extra_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trimesh", None)
    monkeypatch.setitem(sys.modules, "meshio", None)
    for file in ("x.stl", "x.vtu"):
        with pytest.raises(ImportError, match=r"pip install 'crumple\[mesh\]'"):
            cr.plot.save_mesh(landscape(), tmp_path / file)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder from `crumple surface`: an MLP on digits over a 7 x 5 grid."""
    out = tmp_path_factory.mktemp("export") / "run"
    model, data = "tests.cli_fixtures:make_mlp", "tests.cli_fixtures:digits_loader"
    grid = ["--grid", "-1:1:7", "--grid-beta", "-0.5:0.5:5", "--metric", "accuracy"]
    main(["surface", "--model", model, "--data", data, *grid, "--out", str(out)])
    return out


def test_cli_writes_each_file_from_a_run_folder(run_folder, tmp_path, capsys):
    capsys.readouterr()
    files = {
        o: tmp_path / "out" / f"landscape.{s}" for o, s in (("--vtk", "vtu"), ("--stl", "stl"))
    }
    files |= {"--obj": tmp_path / "landscape.obj", "--glb": tmp_path / "landscape.glb"}
    argv = [a for option, file in files.items() for a in (option, str(file))]
    main(["export", str(run_folder), *argv])
    text = capsys.readouterr().out
    assert "auto: the drawn range half the larger alpha/beta span" in text
    assert text.count("wrote") == 4 and "bytes" in text
    ds = cr.open(run_folder)["surface"]
    vtu = meshio.read(files["--vtk"])
    np.testing.assert_array_equal(vtu.point_data["loss"], ds.loss.values.ravel())
    assert "accuracy" in vtu.point_data
    stl = trimesh.load(files["--stl"])
    assert stl.is_watertight and stl.is_volume
    assert len(trimesh.load(files["--obj"], process=False).vertices) == 35
    # --log, --z-scale and --solid; the files are replaced
    main(["export", str(run_folder), "--obj", str(files["--obj"]), "--log", "--z-scale", "2"])
    assert "z = 2 x drawn log10 loss (given)" in capsys.readouterr().out
    obj = trimesh.load(files["--obj"], process=False)
    np.testing.assert_allclose(obj.vertices[:, 2], 2 * np.log10(ds.loss.values.ravel()), atol=1e-7)
    main(["export", str(run_folder), "--glb", str(files["--glb"]), "--solid", "--base", "0.5"])
    (glb,) = trimesh.load(files["--glb"]).geometry.values()
    assert glb.is_volume and len(glb.vertices) == 35 + 21


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "say what to write: --vtk FILE.vtu"),
        (["--stl", "x.obj"], "--stl='x.obj' ends in '.obj', not .stl"),
        (["--vtk", "x.vts"], "give a .vtu file"),
        (["--glb", "x.glb", "--vtk", "x.stl"], "--vtk='x.stl' ends in '.stl', not .vtu or .vtk"),
    ],
)
def test_cli_refusals_write_nothing(run_folder, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["export", str(run_folder), *argv])
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_folders_without_a_surface_and_a_missing_extra(
    run_folder, tmp_path, capsys, monkeypatch
):
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "nothing"), "--stl", str(tmp_path / "x.stl")])
    assert "holds no crumple run (landscape.zarr is missing)" in capsys.readouterr().err
    cr.store.save_hessian(tmp_path / "hessian", xr.Dataset({"eigenvalues": ("rank", [1.0])}))
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "hessian"), "--stl", str(tmp_path / "x.stl")])
    assert "holds Hessian results (crumple hessian) but no surface" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "trimesh", None)
    with pytest.raises(SystemExit):
        main(["export", str(run_folder), "--stl", str(tmp_path / "x.stl")])
    assert "pip install 'crumple[mesh]'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(run_folder), "--stl", "x.stl", "--z-scale", "0"])
    assert "--z-scale must be a positive number, got '0'; or give auto" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["export", "--help"], ["export", "run", "--z-scale", "-1"]])
def test_export_help_imports_nothing_heavy(argv):
    code = f"from crumple.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert heavy_modules_after(code) == []


def test_a_falling_axis_still_faces_out_and_an_unsorted_one_is_refused(tmp_path):
    ds = landscape().isel(alpha=slice(None, None, -1))  # alpha from 1 down to -1
    stl = trimesh.load(cr.plot.save_mesh(ds, tmp_path / "falling.stl"))
    assert stl.is_watertight and stl.is_volume and stl.volume > 0
    top = cr.plot.mesh(ds)
    assert (top.face_normals[:, 2] > 0).all()  # the surface faces up
    vtu = meshio.read(cr.plot.save_mesh(ds, tmp_path / "falling.vtu"))
    np.testing.assert_array_equal(vtu.points[:, :2], nodes(ds))
    shuffled = landscape().isel(beta=[0, 2, 1, 3, 4])
    with pytest.raises(CrumpleError, match=r"ds.beta is not sorted.*ds.sortby\('beta'\)"):
        cr.plot.mesh(shuffled)
