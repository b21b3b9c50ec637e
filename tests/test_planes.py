"""PCA planes, saved planes and trajectories on disk."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple import planes
from tests.cases import MLP, digits, trained
from tests.test_hessian import steady_clock  # noqa: F401  (the fixture)


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
    assert loaded.losses == pytest.approx(memory.trajectory.losses, nan_ok=True)  # 0: no loss
    for name in loaded.names():
        assert torch.equal(loaded.series(name), memory.trajectory.series(name)), name
    # the same numbers, up to BLAS summation order on differently aligned memory
    plane_mem, plane_disk = cr.Plane.pca(memory.trajectory), cr.Plane.pca(loaded)
    for d_mem, d_disk in zip(plane_mem.directions, plane_disk.directions):
        assert all(torch.allclose(d_mem[n], d_disk[n], rtol=0, atol=1e-14) for n in d_mem)
    a = cr.project(memory.trajectory, plane_mem, model, F.cross_entropy, (x, y))
    b = cr.project(loaded, plane_mem, model, F.cross_entropy, (x, y))
    for var in ("alpha", "beta", "loss", "loss_on_plane", "off_plane", "recorded_loss"):
        assert np.array_equal(a[var].values, b[var].values, equal_nan=True), var
    with pytest.raises(cr.CrumpleError, match="already holds a trajectory"):
        cr.Recorder(model, to=tmp_path / "run")
    with pytest.raises(cr.CrumpleError, match="holds no trajectory"):
        cr.Trajectory.load(tmp_path)


# the registry of plane kinds


@pytest.mark.usefixtures("steady_clock")
def aligned_by_hand(a, b):
    """The plane through a, b and b aligned to a, built from its parts."""
    plane = cr.Plane.between(a, b, cr.align(a, b))
    names = ("a -> b", "a -> b aligned")
    attrs = {**plane.attrs, "kind": "aligned", "third": "b aligned", "axis_names": names}
    return cr.Plane(plane.origin, plane.directions, attrs)


def test_registry_builds_what_the_classmethods_build():
    """(the clock makes the Hessian's timed choice of vmapped products, which changes the
    last bits, the same for both builds)"""
    x, y = digits(60)
    model, path = trained(MLP().double(), (x, y), steps=4)
    other = MLP().double()
    small = torch.nn.Linear(4, 3).double()  # 15 parameters: a Hessian of a few products
    torch.manual_seed(7)
    third = MLP().double()  # units that weight matching permutes (other is model's own init)
    pair = (x[:20, 0, 0, :4], y[:20] % 3)
    options = {"normalize": "layer", "ignore": "none", "seed": 4, "orthogonalize": True}
    pairs = {
        "random": (
            planes.Sources(model, options=options),
            cr.Plane.random(model, normalize="layer", ignore=None, seed=4, orthogonalize=True),
        ),
        "axes": (
            planes.Sources(model, options={"axes": ["net.1.bias[0]", "net.4.bias[1]"]}),
            cr.Plane.axes(model, "net.1.bias[0]", "net.4.bias[1]"),
        ),
        "between": (planes.Sources(model, (other,)), cr.Plane.between(model, other)),
        "pca": (planes.Sources(model, trajectory=path), cr.Plane.pca(path, origin=model)),
        "hessian": (
            planes.Sources(
                small, loss_fn=F.cross_entropy, data=pair, options={"eigenvectors": [2, 0]}
            ),
            cr.Plane.hessian(small, F.cross_entropy, pair, k=(2, 0)),
        ),
        "aligned": (planes.Sources(model, (third,)), aligned_by_hand(model, third)),
    }
    assert list(pairs) == list(planes.KINDS)
    for name, (sources, expected) in pairs.items():
        plane = planes.build(name, sources)
        assert plane.attrs == expected.attrs, name
        for a, b in zip((plane.origin, *plane.directions), (expected.origin, *expected.directions)):
            assert all(torch.equal(a[n], b[n]) for n in a), name


def test_registry_facts_and_refusals():
    assert [k for k in planes.KINDS if planes.comparable(k)] == ["random", "axes", "hessian"]
    assert not planes.comparable("custom") and not planes.comparable(None)
    assert planes.get("pca").required == (planes.options()["trajectory"],)
    assert planes.describe({"kind": "random", "normalization": "None"}) == "random, raw"
    assert (
        planes.describe({"kind": "pca", "explained_variance_ratio": [0.5, 0.25]})
        == "pca, 50.0% + 25.0% of the path's variance"
    )
    assert (
        planes.describe({"kind": "hessian", "eigenvalues": [195.53, 12.31]})
        == "hessian, lambda = 195.5 and 12.31"
    )
    assert planes.describe({}) == "custom"
    with pytest.raises(cr.CrumpleError, match="unknown plane kind 'spiral'; the kinds are random"):
        planes.get("spiral")
    with pytest.raises(cr.CrumpleError, match="registered already"):
        planes.register(planes.PlaneKind("axes", "again", build=cr.Plane.axes))
    seed = planes.Option("seed", "another meaning", kind="choice", choices=("a",))
    with pytest.raises(cr.CrumpleError, match="defines option 'seed' differently"):
        planes.register(planes.PlaneKind("other", "x", build=cr.Plane.axes, optional=(seed,)))
    assert "other" not in planes.KINDS
    with pytest.raises(
        cr.CrumpleError, match="needs one or two more models in Sources.models, got 0;"
    ):
        planes.build("between", planes.Sources(MLP()))
    with pytest.raises(cr.CrumpleError, match="needs a recorded path in Sources.trajectory"):
        planes.build("pca", planes.Sources(MLP()))
    with pytest.raises(cr.CrumpleError, match="needs the loss and the data in Sources.loss_fn"):
        planes.build("hessian", planes.Sources(MLP(), loss_fn=F.cross_entropy))


# trainable_only


def frozen_mlp():
    model = MLP().double()
    model.net[1].requires_grad_(False)  # the first layer is frozen
    return model


@pytest.mark.parametrize("normalize", ["filter", "layer", None])
def test_trainable_only_leaves_frozen_weights_where_they_are(normalize):
    model = frozen_mlp()
    plane = cr.Plane.random(model, normalize=normalize, seed=2, trainable_only=True)
    every = cr.Plane.random(model, normalize=normalize, seed=2)
    assert plane.attrs["trainable_only"] and not every.attrs["trainable_only"]
    assert plane.attrs["frozen"] == ["net.1.weight", "net.1.bias"]
    far = plane.at(5.0, -3.0)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(far[name], p.detach()), name
            assert torch.equal(plane.directions[0][name], torch.zeros_like(p))
        else:  # the same draws as without trainable_only, where the weights move
            for d, e in zip(plane.directions, every.directions):
                assert torch.equal(d[name], e[name]), name
    assert not torch.equal(every.at(5.0, -3.0)["net.1.weight"], model.net[1].weight)


def test_trainable_only_model_normalization_uses_the_trainable_weights():
    model = frozen_mlp()
    plane = cr.Plane.random(model, normalize="model", ignore="biasbn", seed=1, trainable_only=True)
    direction, weight = plane.directions[0]["net.4.weight"], model.net[4].weight.detach()
    assert float(direction.norm()) == pytest.approx(float(weight.norm()), rel=1e-6)


def test_trainable_only_refuses_a_model_with_nothing_to_move():
    model = MLP().requires_grad_(False)
    with pytest.raises(cr.CrumpleError, match="no parameter of the model requires grad"):
        cr.Plane.random(model, trainable_only=True)
    assert "frozen" not in cr.Plane.random(model).attrs  # the default moves every weight


# between: tied weights and state dicts


class TiedLM(torch.nn.Module):
    """A tiny language model whose output layer is its embedding, with BatchNorm."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(11, 6)
        self.norm = torch.nn.BatchNorm1d(6)
        self.head = torch.nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(self.norm(self.embed(tokens)))


def test_between_models_with_tied_weights_is_a_line_through_both():
    a, b = TiedLM(0).double().eval(), TiedLM(1).double().eval()
    tokens = torch.arange(11).repeat(3)
    target = tokens.roll(1)
    for plane in (cr.Plane.between(a, b), cr.Plane.between(a, b.state_dict())):
        assert sorted(plane.origin) == ["embed.weight", "norm.bias", "norm.weight"]
        ds = cr.line(a, F.cross_entropy, (tokens, target), plane, [0.0, 1.0])
        with torch.no_grad():
            expected = [float(F.cross_entropy(m(tokens), target)) for m in (a, b)]
        # fresh BatchNorm statistics are alike in both, so the loss at 1 is b's
        assert ds.loss.values == pytest.approx(expected, rel=1e-12)


def test_between_reads_state_dicts_by_a_models_names():
    a, b, c = TiedLM(0), TiedLM(1), TiedLM(2)
    expected = cr.Plane.between(a, b, c)
    for plane in (
        cr.Plane.between(a, b.state_dict(), c.state_dict()),
        cr.Plane.between(a.state_dict(), b.state_dict(), c),  # c gives the names
        cr.Plane.between(a.state_dict(), b.state_dict(), c.state_dict(), model=TiedLM(3)),
    ):
        assert plane.attrs == expected.attrs
        for d, e in zip(plane.directions, expected.directions):
            assert d.keys() == e.keys() and all(torch.equal(d[n], e[n]) for n in d)


@pytest.mark.parametrize(
    ("states", "message"),
    [
        (lambda: (TiedLM(0).state_dict(), TiedLM(1).state_dict()), "norm.num_batches_tracked"),
        (
            lambda: tuple(
                {k: v for k, v in TiedLM(s).state_dict().items() if "norm" not in k} for s in (0, 1)
            ),
            "['head.weight']",
        ),
    ],
    ids=["buffers", "tied"],
)
def test_state_dicts_alone_are_refused_with_the_fix(states, message):
    with pytest.raises(cr.CrumpleError) as error:
        cr.Plane.between(*states())
    text = str(error.value)
    assert "model a is a dict with entries that are not parameters of their own" in text
    assert message in text and "pass the models (nn.Module) instead" in text
    assert "model=net" in text


def test_snapshots_alone_still_make_a_plane():
    x, y = digits(60)
    _, path = trained(MLP().double(), (x, y), steps=3)
    line = cr.Plane.between(path.snapshot(0), path.snapshot(2))
    assert torch.allclose(line.at(1.0)["net.4.bias"], path.snapshot(2)["net.4.bias"])


def test_between_refuses_a_state_dict_of_another_model():
    a, b = TiedLM(0), TiedLM(1)
    untied = b.state_dict()
    untied["head.weight"] = untied["head.weight"] + 1
    with pytest.raises(cr.CrumpleError, match="tied in the model but different here"):
        cr.Plane.between(a, untied)
    with pytest.raises(cr.CrumpleError, match="model b's state dict does not fit the model"):
        cr.Plane.between(a, MLP().state_dict())
    with pytest.raises(TypeError, match="model c must be an nn.Module or a"):
        cr.Plane.between(a, b, [1.0])
