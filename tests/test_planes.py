"""PCA planes, saved planes and trajectories on disk."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from tests.cases import MLP, digits, trained


def synthetic_path(u, v, steps=30, noise=0.0, seed=0):
    """A path w_t = w0 + a_t u + b_t v (+ noise) with known coefficients."""
    g = torch.Generator().manual_seed(seed)
    w0 = {n: torch.randn(t.shape, generator=g, dtype=torch.float64) for n, t in u.items()}
    t = torch.linspace(0, 1, steps, dtype=torch.float64)
    a, b = 3 * t, torch.sin(4 * t)
    weights = [
        {
            n: w0[n]
            + a[k] * u[n]
            + b[k] * v[n]
            + noise * torch.randn(u[n].shape, generator=g, dtype=torch.float64)
            for n in u
        }
        for k in range(steps)
    ]
    return cr.Trajectory(list(range(steps)), weights, [0.0] * steps)


def flat(d):
    return torch.cat([t.reshape(-1) for t in d.values()])


def test_pca_recovers_a_known_subspace():
    g = torch.Generator().manual_seed(1)
    shapes = {"a.weight": (40, 30), "a.bias": (40,), "b.weight": (5, 40)}
    u = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    v = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    plane = cr.Plane.pca(synthetic_path(u, v))
    basis = torch.stack([flat(d) for d in plane.directions], dim=1)
    # orthonormal directions
    assert np.abs((basis.T @ basis).numpy() - np.eye(2)).max() < 1e-12
    # u and v lie in their span: projecting them changes nothing
    for w in (u, v):
        w = flat(w)
        residual = w - basis @ (basis.T @ w)
        assert float(residual.norm() / w.norm()) < 1e-10
    ratios = plane.attrs["explained_variance_ratio"]
    assert sum(ratios) == pytest.approx(1.0, rel=1e-9) and ratios[0] >= ratios[1] > 0
    assert plane.attrs["axis_names"] == (f"PC1 ({ratios[0]:.1%})", f"PC2 ({ratios[1]:.1%})")


def test_pca_with_noise_explains_less_and_refuses_a_straight_path():
    g = torch.Generator().manual_seed(2)
    u = {"w": torch.randn(50, generator=g, dtype=torch.float64)}
    v = {"w": torch.randn(50, generator=g, dtype=torch.float64)}
    ratios = cr.Plane.pca(synthetic_path(u, v, noise=0.05)).attrs["explained_variance_ratio"]
    assert sum(ratios) < 1.0
    straight = synthetic_path(u, {"w": torch.zeros(50, dtype=torch.float64)})
    with pytest.raises(cr.CrumpleError, match="fewer than 2 directions"):
        cr.Plane.pca(straight)
    with pytest.raises(cr.CrumpleError, match="at least 3 recorded steps"):
        cr.Plane.pca(cr.Trajectory([0], [u], [0.0]))


@pytest.mark.parametrize("kind", ["random", "pca", "axes", "between"])
def test_planes_save_and_load_without_pickle(tmp_path, kind):
    x, y = digits(120)
    model, path = trained(MLP().double(), (x, y), steps=6)
    plane = {
        "random": lambda: cr.Plane.random(model, seed=3, orthogonalize=True),
        "pca": lambda: cr.Plane.pca(path),
        "axes": lambda: cr.Plane.axes(model, "net.1.weight[3, 7]", "net.4.bias[2]"),
        "between": lambda: cr.Plane.between(path.snapshot(0), model),
    }[kind]()
    again = cr.Plane.load(plane.save(tmp_path / "plane.safetensors"))
    assert again.attrs == plane.attrs
    for a, b in zip((plane.origin, *plane.directions), (again.origin, *again.directions)):
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    grid = cr.Grid([-0.5, 0.5], [0.0, 1.0]) if plane.ndim == 2 else None
    if grid is not None:
        first = cr.surface(model, F.cross_entropy, (x, y), plane, grid)
        second = cr.surface(model, F.cross_entropy, (x, y), again, grid)
        assert np.array_equal(first.loss.values, second.loss.values)


def test_load_refuses_other_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(cr.CrumpleError, match="cannot read a plane"):
        cr.Plane.load(bad)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(cr.CrumpleError, match="not a crumple plane"):
        cr.Plane.load(tmp_path / "other.safetensors")


def test_recorder_streams_to_disk_and_projects_the_same(tmp_path):
    x, y = digits(120)
    model = MLP().double()
    memory, disk = cr.Recorder(model, every=2), cr.Recorder(model, every=2, to=tmp_path / "run")
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for _ in range(11):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        for rec in (memory, disk):
            rec.record(loss=loss)
    assert disk.trajectory.weights is None  # nothing kept in memory
    files = sorted(p.name for p in (tmp_path / "run").glob("*.safetensors"))
    assert files == [f"step_{s:09d}.safetensors" for s in range(0, 11, 2)]
    loaded = cr.Trajectory.load(tmp_path / "run")
    assert loaded.steps == memory.trajectory.steps == [0, 2, 4, 6, 8, 10]
    assert loaded.losses == pytest.approx(memory.trajectory.losses)
    for name in loaded.names():
        assert torch.equal(loaded.series(name), memory.trajectory.series(name)), name
    # the same numbers, up to BLAS summation order on differently aligned memory
    plane_mem, plane_disk = cr.Plane.pca(memory.trajectory), cr.Plane.pca(loaded)
    for d_mem, d_disk in zip(plane_mem.directions, plane_disk.directions):
        assert all(torch.allclose(d_mem[n], d_disk[n], rtol=0, atol=1e-14) for n in d_mem)
    a = cr.project(memory.trajectory, plane_mem, model, F.cross_entropy, (x, y))
    b = cr.project(loaded, plane_mem, model, F.cross_entropy, (x, y))
    for var in ("alpha", "beta", "loss", "loss_on_plane", "off_plane", "recorded_loss"):
        assert np.array_equal(a[var].values, b[var].values), var
    with pytest.raises(cr.CrumpleError, match="already holds a trajectory"):
        cr.Recorder(model, to=tmp_path / "run")
    with pytest.raises(cr.CrumpleError, match="holds no trajectory"):
        cr.Trajectory.load(tmp_path)
