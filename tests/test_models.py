"""Real models on real data (scikit-learn's digits): every fast path against the reference
loop in float64, and the model bit-identical after every call."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple import reference
from tests.cases import (
    MLP,
    AlwaysDropout,
    DataDependent,
    ReadsFirstWeight,
    SmallCNN,
    accuracy,
    assert_close,
    assert_untouched,
    digits,
    snapshot,
    trained,
)

MODELS = {"mlp": MLP, "cnn": SmallCNN, "dropout": lambda: MLP(dropout=0.3)}
GRID = cr.Grid(np.linspace(-1, 1, 5), np.linspace(-0.5, 1.5, 4))


@pytest.fixture(scope="module")
def data():
    return digits(240)


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request, data):
    """A model trained briefly (in train mode afterwards, as a user leaves it), a second and
    a third model nearby, and the recorded path."""
    torch.manual_seed(0)
    start = MODELS[request.param]().double()
    model, path = trained(start, data)
    other, _ = trained(start, data, steps=4, lr=0.5, seed_=1)
    third, _ = trained(start, data, steps=8, lr=0.1, seed_=2)
    model.train()
    return request.param, model, other, third, path


def planes(model, other, third, path):
    return {
        "random": cr.Plane.random(model, seed=3),
        "random-layer-orth": cr.Plane.random(
            model, normalize="layer", ignore=None, seed=4, orthogonalize=True
        ),
        "between": cr.Plane.between(model, other, third),
        "pca": cr.Plane.pca(path),
    }


def reference_grid(model, fns, data, plane, grid):
    points = [plane.at(a, b) for a in grid.axes[0] for b in grid.axes[1]]
    slow = reference.points(model, fns, data, points)
    return {name: np.reshape(v, grid.shape) for name, v in slow.items()}


@pytest.mark.parametrize("expand", [False, True], ids=["plain", "expanded"])
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_surfaces_equal_reference_loop(setup, data, strategy, expand, monkeypatch):
    if expand:  # expand the first layer whatever its fan-in (the default skips narrow ones)
        monkeypatch.setattr("crumple.evaluation.kernels.EXPAND_FAN_IN", 1)
    name, model, other, third, path = setup
    before = snapshot(model)
    fns = {"loss": F.cross_entropy, "accuracy": accuracy}
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=100)
    all_planes = planes(model, other, third, path)
    assert_untouched(model, before)  # building planes changes nothing either
    for kind, plane in all_planes.items():
        ds = cr.surface(
            model,
            F.cross_entropy,
            loader,
            plane,
            GRID,
            metrics={"accuracy": accuracy},
            strategy=strategy,
        )
        assert ds.attrs["strategy"] == strategy
        slow = reference_grid(model, fns, data, plane, GRID)
        for var in fns:
            assert_close(ds[var].values, slow[var], rtol=1e-9, label=f"{name}/{kind}/{var}")
    assert_untouched(model, before)


def test_auto_strategy_says_what_it_chose(setup, data):
    _, model, *_ = setup
    ds = cr.surface(model, F.cross_entropy, data, cr.Plane.random(model), GRID)
    assert ds.attrs["strategy"] in ("vmap", "loop")


def test_line_equals_reference(setup, data):
    name, model, other, *_ = setup
    plane = cr.Plane.between(model, other)
    alpha = np.linspace(-0.5, 1.5, 9)
    before = snapshot(model)
    ds = cr.line(model, F.cross_entropy, data, plane, alpha)
    assert_untouched(model, before)
    slow = reference.points(model, {"loss": F.cross_entropy}, data, [plane.at(a) for a in alpha])[
        "loss"
    ]
    assert_close(ds.loss.values, slow, rtol=1e-9, label=f"{name} line")
    # the line passes through the other model (buffers, such as BatchNorm statistics, are
    # always those of the model evaluated, so this holds for models without buffers)
    if not list(model.buffers()):
        with torch.no_grad():
            at_other = float(F.cross_entropy(other.eval()(data[0]), data[1]))
        assert ds.loss.values[np.argmin(np.abs(alpha - 1.0))] == pytest.approx(at_other, rel=1e-9)


def test_projection_recovers_points_built_in_the_plane(setup, data):
    name, model, other, third, path = setup
    plane = cr.Plane.random(model, seed=7)
    coords = [(0.25, -0.5), (1.0, 1.0), (-0.75, 0.125)]
    trajectory = cr.Trajectory(list(range(3)), [plane.at(a, b) for a, b in coords], [0.0] * 3)
    before = snapshot(model)
    projected = cr.project(trajectory, plane, model, F.cross_entropy, data)
    assert_untouched(model, before)
    assert_close(projected.alpha.values, [c[0] for c in coords], rtol=1e-12, label="alpha")
    assert_close(projected.beta.values, [c[1] for c in coords], rtol=1e-12, label="beta")
    assert projected.off_plane.values.max() < 1e-12
    assert_close(projected.loss.values, projected.loss_on_plane.values, rtol=1e-9, label="loss")


def test_projected_path_losses_equal_reference(setup, data):
    name, model, other, third, path = setup
    plane = cr.Plane.pca(path)
    projected = cr.project(path, plane, model, F.cross_entropy, data)
    true = reference.points(
        model,
        {"loss": F.cross_entropy},
        data,
        [path.snapshot(k) | path.snapshot_buffers(k) for k in range(len(path))],
    )["loss"]  # each snapshot with its own BatchNorm statistics
    assert_close(projected.loss.values, true, rtol=1e-9, label=f"{name} true loss")
    on_plane = reference.points(
        model,
        {"loss": F.cross_entropy},
        data,
        [plane.at(a, b) for a, b in zip(projected.alpha.values, projected.beta.values)],
    )["loss"]
    assert_close(projected.loss_on_plane.values, on_plane, rtol=1e-9, label=f"{name} on plane")
    # the last snapshot is the PCA origin: it lies in the plane
    assert float(projected.off_plane[-1]) < 1e-12


def test_filter_normalization_holds_filter_by_filter(setup):
    _, model, *_ = setup
    plane = cr.Plane.random(model, normalize="filter", ignore="biasbn", seed=11)
    weights = dict(model.named_parameters())
    for direction in plane.directions:
        for name, d in direction.items():
            w = weights[name].detach()
            if d.dim() <= 1:
                assert torch.count_nonzero(d) == 0, f"{name} should be ignored"
                continue
            for i in range(len(w)):
                assert float(d[i].norm()) == pytest.approx(float(w[i].norm()), rel=1e-9), (
                    f"{name} filter {i}"
                )
    kept = cr.Plane.random(model, normalize="filter", ignore=None, seed=11)
    for name, d in kept.directions[0].items():
        if d.dim() <= 1:
            assert torch.equal(d, weights[name].detach()), f"{name}: Li et al. copy the weight"


def test_layer_model_and_raw_normalizations(setup):
    _, model, *_ = setup
    weights = {n: p.detach() for n, p in model.named_parameters()}
    multi = [n for n, w in weights.items() if w.dim() > 1]
    layer = cr.Plane.random(model, normalize="layer", seed=2)
    for n in multi:
        assert float(layer.directions[0][n].norm()) == pytest.approx(
            float(weights[n].norm()), rel=1e-9
        )
    whole = cr.Plane.random(model, normalize="model", seed=2)
    norm = lambda d: float(torch.sqrt(sum(d[n].pow(2).sum() for n in multi)))  # noqa: E731
    assert norm(whole.directions[1]) == pytest.approx(norm(weights), rel=1e-9)
    raw = cr.Plane.random(model, normalize=None, ignore=None, seed=2)
    again = cr.Plane.random(model, normalize=None, ignore=None, seed=2)
    assert all(torch.equal(raw.directions[1][n], again.directions[1][n]) for n in weights)
    assert not torch.equal(raw.directions[0][multi[0]], raw.directions[1][multi[0]])


def test_cosine_and_orthogonalize(setup):
    _, model, *_ = setup
    plane = cr.Plane.random(model, seed=5)
    d0, d1 = plane.directions
    dot = sum(float((d0[n] * d1[n]).sum()) for n in d0)
    norms = [float(torch.sqrt(sum(d[n].pow(2).sum() for n in d))) for d in (d0, d1)]
    assert plane.attrs["cosine"] == pytest.approx(dot / (norms[0] * norms[1]), rel=1e-9)
    orth = cr.Plane.random(model, seed=5, orthogonalize=True)
    assert abs(orth.attrs["cosine"]) < 1e-12
    o1 = orth.directions[1]
    assert float(torch.sqrt(sum(o1[n].pow(2).sum() for n in o1))) == pytest.approx(
        norms[1], rel=1e-9
    )


def test_surface_attributes_describe_the_plane(setup, data):
    _, model, *_, path = setup
    ds = cr.surface(model, F.cross_entropy, data, cr.Plane.random(model, seed=9), GRID)
    assert ds.attrs["plane_kind"] == "random"
    assert ds.attrs["plane_normalization"] == "filter"
    assert ds.attrs["plane_seed"] == 9
    assert ds.attrs["loss_name"] == "cross_entropy"
    assert ds.attrs["n_samples"] == len(data[0])
    assert ds.alpha.attrs["long_name"] == "random direction 1 (filter-normalized)"
    pca = cr.Plane.pca(path)
    ds = cr.surface(model, F.cross_entropy, data, pca, GRID)
    ratios = pca.attrs["explained_variance_ratio"]
    assert ds.alpha.attrs["long_name"] == f"PC1 ({ratios[0]:.1%})"
    assert ds.attrs["plane_explained_variance_ratio"] == ratios


def test_memory_budget_sets_the_points_per_call_and_not_the_numbers(data):
    model = MLP().double()
    plane = cr.Plane.random(model, seed=1)
    big = cr.surface(model, F.cross_entropy, data, plane, GRID, strategy="vmap")
    small = cr.surface(
        model, F.cross_entropy, data, plane, GRID, strategy="vmap", max_memory=8 * 2**20
    )
    assert small.attrs["points_per_call"] < big.attrs["points_per_call"]
    assert_close(small.loss.values, big.loss.values, rtol=1e-12, label="budget")


def test_dtype_and_device_are_honoured(data):
    model = MLP()  # float32
    plane = cr.Plane.random(model, seed=1)
    x, y = data
    ds32 = cr.surface(model, F.cross_entropy, (x.float(), y), plane, GRID, device="cpu")
    ds64 = cr.surface(model, F.cross_entropy, (x, y), plane, GRID, dtype=torch.float64)
    assert ds32.attrs["dtype"] == "float32" and ds64.attrs["dtype"] == "float64"
    assert ds32.attrs["device"] == "cpu"
    assert_close(ds32.loss.values, ds64.loss.values, rtol=1e-5, label="float32 vs float64")
    assert next(model.parameters()).dtype == torch.float32


def test_nondeterministic_model_is_refused_naming_the_module(data):
    model = AlwaysDropout().double()
    before = snapshot(model)
    with pytest.raises(cr.CrumpleError, match="module 'noisy'"):
        cr.surface(model, F.cross_entropy, data, cr.Plane.random(model), GRID)
    assert_untouched(model, before)


def test_eval_mode_dropout_is_fine_and_flags_come_back(data):
    model = MLP(dropout=0.5).double().train()
    ds = cr.surface(model, F.cross_entropy, data, cr.Plane.random(model), GRID)
    assert np.isfinite(ds.loss.values).all()
    assert all(m.training for m in model.modules())


def test_model_vmap_cannot_trace_falls_back_with_one_warning(data):
    model = DataDependent().double()
    plane = cr.Plane.random(model, seed=2)
    with pytest.warns(UserWarning, match="falls back to evaluating one point at a time") as caught:
        ds = cr.surface(model, F.cross_entropy, data, plane, GRID, strategy="vmap", chunk_size=5)
    assert len([w for w in caught if "falls back" in str(w.message)]) == 1
    assert ds.attrs["strategy"] == "loop"
    slow = reference_grid(model, {"loss": F.cross_entropy}, data, plane, GRID)
    assert_close(ds.loss.values, slow["loss"], rtol=1e-9, label="fallback")


def test_between_refuses_other_architectures_and_equal_models():
    a = MLP()
    with pytest.raises(cr.CrumpleError, match="direction 2 is zero everywhere"):
        cr.Plane.between(a, MLP(), a)
    with pytest.raises(cr.CrumpleError, match="share one architecture"):
        cr.Plane.between(MLP(), SmallCNN())
    with pytest.raises(TypeError, match="nn.Module or a"):
        cr.Plane.between(MLP(), "model.pt")


def test_random_refuses_unknown_options():
    with pytest.raises(cr.CrumpleError, match="normalize must be one of"):
        cr.Plane.random(MLP(), normalize="filters")
    with pytest.raises(cr.CrumpleError, match="ignore must be"):
        cr.Plane.random(MLP(), ignore="bias")


@pytest.mark.parametrize(
    ("fan_in", "expanded"), [(64, []), (256, ["0.weight"])], ids=["narrow", "wide"]
)
def test_wide_input_layers_are_expanded_once_per_batch(fan_in, expanded):
    from crumple.evaluation import Points, Settings, build
    from crumple.params import evaluation_mode

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(fan_in, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    ).double()
    data = (torch.randn(50, fan_in, dtype=torch.float64), torch.randint(0, 3, (50,)))
    plane = cr.Plane.random(model, seed=1)
    with evaluation_mode(model):
        evaluate = build(model, {"loss": F.cross_entropy}, data, plane, Settings(strategy="vmap"))
        axes = [torch.linspace(-1, 1, 3, dtype=torch.float64)] * 2
        first = evaluate(Points.grid(evaluate.task.plane, axes))
        # only the first layer sees the raw input; later layers see batched inputs
        assert [key[1] for key in evaluate.task.kernels.cache] == expanded
        again = evaluate(Points.grid(evaluate.task.plane, axes))
    assert torch.equal(first["loss"], again["loss"])
    grid = cr.Grid(axes[0].numpy(), axes[1].numpy())
    slow = reference_grid(model, {"loss": F.cross_entropy}, data, plane, grid)
    assert_close(first["loss"].numpy(), slow["loss"], rtol=1e-9, label=f"fan-in {fan_in}")


def skips_of(monkeypatch) -> list[frozenset]:
    """Record the names each ``Plane.shifted`` call leaves out."""
    skipped = []
    shifted = cr.Plane.shifted

    def spy(self, params, k, c, skip=()):
        skipped.append(frozenset(skip))
        return shifted(self, params, k, c, skip)

    monkeypatch.setattr(cr.Plane, "shifted", spy)
    return skipped


@pytest.mark.parametrize("model", ["mlp", "reads-always", "reads-in-half-the-plane"], ids=str)
def test_loop_leaves_out_weights_only_expanded_layers_read(data, model, monkeypatch):
    """The loop does not combine weights that only the expanded first layer reads; a model
    that reads them elsewhere (everywhere, or from the middle of the grid on) has them
    combined and still gets exact numbers."""
    monkeypatch.setattr("crumple.evaluation.kernels.EXPAND_FAN_IN", 1)
    torch.manual_seed(0)
    if model == "mlp":
        net, weight = MLP().double(), "net.1.weight"
        plane = cr.Plane.random(net, seed=1)
    else:
        net, weight = ReadsFirstWeight(always=model == "reads-always").double(), "first.weight"
        plane = cr.Plane.axes(net, "out.bias[0]", "first.weight[3, 5]")
    skipped = skips_of(monkeypatch)
    before = snapshot(net)
    ds = cr.surface(net, F.cross_entropy, data, plane, GRID, strategy="expanded")
    left_out = [weight in s for s in skipped[2:]]  # (row, point) of the first point: unknown
    assert_untouched(net, before)
    slow = reference_grid(net, {"loss": F.cross_entropy}, data, plane, GRID)
    assert_close(ds.loss.values, slow["loss"], rtol=1e-9, label=model)
    if model == "mlp":
        assert all(left_out)
    elif model == "reads-always":
        assert not any(left_out)
    else:  # left out while the bias is <= 0, combined from the first read on
        first_read = left_out.index(False)
        assert first_read > 0 and all(left_out[:first_read]) and not any(left_out[first_read:])
