"""The batched surface against the plain per-point loop, in float64."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import crumple as cr
from crumple import reference
from crumple.evaluation.strategies import nested_vmap
from crumple.examples.seed import AXES, SeedNet
from tests.cases import Wide, assert_close, assert_untouched, snapshot

ARTICLE_AXIS = np.arange(-2, 2, 0.05)


def reference_surface(model, loss_fn, data, plane, alpha, beta, dtype=torch.float64):
    points = [plane.at(a, b) for a in alpha for b in beta]
    values = reference.points(model, {"loss": loss_fn}, data, points, dtype=dtype)
    return np.array(values["loss"]).reshape(len(alpha), len(beta))


def test_article_grid_equals_reference_loop_float64(seed_data64):
    model = SeedNet()
    plane = cr.Plane.axes(model, *AXES)
    ds = cr.surface(
        model,
        F.mse_loss,
        seed_data64,
        plane,
        cr.Grid(ARTICLE_AXIS, ARTICLE_AXIS),
        dtype=torch.float64,
    )
    assert ds.loss.shape == (80, 80)
    slow = reference_surface(
        model, F.mse_loss, seed_data64, plane.to(dtype=torch.float64), ARTICLE_AXIS, ARTICLE_AXIS
    )
    assert_close(ds.loss.values, slow, rtol=1e-9, label="80x80 surface")
    # coordinates are the weights: loss[i, j] is the loss of the net with W1=alpha[i], W2=beta[j]
    i, j = 7, 61
    x, y = seed_data64
    pred = ARTICLE_AXIS[j] * torch.tanh(ARTICLE_AXIS[i] * x)
    assert float(ds.loss[i, j]) == pytest.approx(float(F.mse_loss(pred, y)), rel=1e-12)


def test_batched_loader_gives_exact_mean_not_mean_of_batch_means(seed_data64):
    x, y = seed_data64
    model = SeedNet()
    plane = cr.Plane.axes(model, *AXES)
    axis = np.linspace(-2, 2, 9)
    loader = DataLoader(TensorDataset(x, y), batch_size=64)  # last batch holds 16 of 400
    by_batch = cr.surface(
        model, F.mse_loss, loader, plane, cr.Grid(axis, axis), dtype=torch.float64
    )
    whole = cr.surface(model, F.mse_loss, (x, y), plane, cr.Grid(axis, axis), dtype=torch.float64)
    assert_close(by_batch.loss.values, whole.loss.values, rtol=1e-12, label="loader vs whole")
    assert by_batch.attrs["n_samples"] == len(x)
    slow = reference_surface(model, F.mse_loss, loader, plane.to(dtype=torch.float64), axis, axis)
    assert_close(by_batch.loss.values, slow, rtol=1e-9, label="loader vs reference")
    # the article's average of batch means differs where the last batch is smaller
    with torch.no_grad():
        article = np.mean(
            [
                [
                    [float(F.mse_loss(b * torch.tanh(a * xb), yb)) for xb, yb in loader]
                    for b in axis[:2]
                ]
                for a in axis[:2]
            ],
            axis=-1,
        )
    assert not np.allclose(article, whole.loss.values[:2, :2], rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 7, 80, 10_000])
def test_tiling_does_not_change_numbers(seed_data64, chunk_size):
    model = SeedNet()
    plane = cr.Plane.axes(model, *AXES)
    grid = cr.Grid(np.linspace(-2, 2, 13), np.linspace(-1, 3, 11))
    ds = cr.surface(
        model, F.mse_loss, seed_data64, plane, grid, chunk_size=chunk_size, dtype=torch.float64
    )
    slow = reference_surface(
        model, F.mse_loss, seed_data64, plane.to(dtype=torch.float64), *grid.axes
    )
    assert_close(ds.loss.values, slow, rtol=1e-9, label=f"chunk {chunk_size}")


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("tile_seconds", [0.0, 1e9], ids=["one-call-a-tile", "one-tile"])
def test_default_tiles_are_sized_by_time_and_the_timed_call_is_kept(
    seed_data64, tile_seconds, strategy, monkeypatch
):
    from crumple.evaluation import STRATEGIES

    monkeypatch.setattr("crumple.run.driver.TILE_SECONDS", tile_seconds)
    monkeypatch.setattr("crumple.evaluation.engine.WORKING_SET", 2**14)  # a few points per call
    evaluated = []
    run = STRATEGIES[strategy].__call__

    def counting(self, points):
        evaluated.append(points.size)
        return run(self, points)

    monkeypatch.setattr(STRATEGIES[strategy], "__call__", counting)
    model = SeedNet()
    plane = cr.Plane.axes(model, *AXES)
    grid = cr.Grid(np.linspace(-2, 2, 13), np.linspace(-1, 3, 11))
    ds = cr.surface(
        model, F.mse_loss, seed_data64, plane, grid, strategy=strategy, dtype=torch.float64
    )
    per_call = ds.attrs["points_per_call"]
    assert 1 < per_call < grid.size
    if strategy == "vmap":
        assert max(evaluated) <= per_call  # larger tiles are split into calls of this size
    assert sum(evaluated) == grid.size  # the timed call is not made again
    expected = per_call if tile_seconds == 0 else grid.size
    assert ds.attrs["chunk_size"] >= expected
    assert ds.attrs["tiles_computed"] == len(list(grid.tiles(ds.attrs["chunk_size"])))
    slow = reference_surface(
        model, F.mse_loss, seed_data64, plane.to(dtype=torch.float64), *grid.axes
    )
    assert_close(ds.loss.values, slow, rtol=1e-9, label=f"tiles of {tile_seconds} s")


def test_wide_model_with_bias_norm_dropout_matches_reference_and_is_untouched(seed_data64):
    model = Wide().double()
    model.train()  # the user's model is in training mode; crumple evaluates in eval mode
    model.inp.bias.requires_grad_(False)
    model.norm.running_mean.normal_()
    before = snapshot(model)
    plane = cr.Plane.axes(model, "inp.weight[3, 0]", "out.weight[0, 5]")
    grid = cr.Grid(np.linspace(-1, 1, 6), np.linspace(-2, 2, 5))
    metrics = {"mae": F.l1_loss}
    ds = cr.surface(model, F.mse_loss, seed_data64, plane, grid, metrics=metrics)
    assert_untouched(model, before)
    points = [plane.at(a, b) for a in grid.axes[0] for b in grid.axes[1]]
    slow = reference.points(model, {"loss": F.mse_loss, **metrics}, seed_data64, points)
    for name in ("loss", "mae"):
        assert_close(ds[name].values, np.reshape(slow[name], grid.shape), rtol=1e-9, label=name)
    assert model.training and model.drop.training


def test_model_untouched_when_evaluation_fails(seed_data64):
    model = SeedNet().double()
    model.train()
    before = snapshot(model)
    plane = cr.Plane.axes(model, *AXES)

    def bad_loss(pred, y):
        return (pred - y) ** 2  # not reduced

    with pytest.raises(cr.CrumpleError, match="batch mean as a scalar"):
        cr.surface(model, bad_loss, seed_data64, plane, cr.Grid([0.0, 1.0], [0.0]))
    assert_untouched(model, before)


def test_line_matches_reference(seed_data64):
    model = SeedNet(0.7, -0.3).double()
    plane = cr.Plane.axes(model, "Layer_1.weight")
    alpha = np.linspace(-3, 3, 31)
    ds = cr.line(model, F.mse_loss, seed_data64, plane, alpha)
    assert ds.loss.dims == ("alpha",)
    slow = reference_surface(model, F.mse_loss, seed_data64, plane, alpha, [])
    points = [plane.at(a) for a in alpha]
    slow = reference.points(model, {"loss": F.mse_loss}, seed_data64, points)["loss"]
    assert_close(ds.loss.values, slow, rtol=1e-9, label="line")


def test_nested_vmap_shares_unbatched_arguments():
    calls = []

    def f(a, b, c):
        calls.append(1)
        return a * 10 + b + c

    a, b = torch.arange(3.0), torch.arange(4.0)
    out = nested_vmap(f, [0, 1, None])(a, b, torch.tensor(100.0))
    assert out.shape == (3, 4)
    assert torch.equal(out, a[:, None] * 10 + b[None, :] + 100)
    zipped = nested_vmap(f, [0, 0, None])(a, a, torch.tensor(0.0))
    assert torch.equal(zipped, a * 11)


def test_dataset_attributes(seed_data):
    model = SeedNet()
    _, test = seed_data
    ds = cr.surface(
        model, F.mse_loss, test, cr.Plane.axes(model, *AXES), cr.Grid([0.0, 0.5], [1.0])
    )
    assert ds.alpha.attrs["long_name"] == "Layer_1.weight"
    assert ds.beta.attrs["long_name"] == "Layer_2.weight"
    assert ds.attrs["plane_kind"] == "axes"
    assert ds.attrs["loss_name"] == "mse_loss"
    assert ds.attrs["n_samples"] == len(test[0])
    assert ds.attrs["crumple_version"] == cr.__version__
    assert ds.attrs["dtype"] == "float32"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("Layer_3.weight", "no parameter 'Layer_3.weight'"),
        ("Layer_1.weight[1, 0]", "does not address one entry"),
        ("Layer_1.weight[0", "not understood"),
    ],
)
def test_plane_axes_refuses_bad_names(spec, message):
    with pytest.raises(cr.CrumpleError, match=message):
        cr.Plane.axes(SeedNet(), spec, "Layer_2.weight")


def test_plane_axes_needs_an_index_for_larger_tensors_and_two_entries():
    with pytest.raises(cr.CrumpleError, match=r"write e.g. 'inp.weight\[0, 0\]'"):
        cr.Plane.axes(Wide(), "inp.weight", "out.bias")
    with pytest.raises(cr.CrumpleError, match="same entry"):
        cr.Plane.axes(SeedNet(), "Layer_1.weight", "Layer_1.weight[0, 0]")


@pytest.mark.parametrize(
    ("alpha", "message"),
    [([], "non-empty"), ([[0.0, 1.0]], "1-D"), ([0.0, np.nan], "inf or nan")],
)
def test_grid_refuses_bad_axes(alpha, message):
    with pytest.raises(cr.CrumpleError, match=message):
        cr.Grid(alpha, [0.0])


def test_bad_data_and_mismatched_plane(seed_data):
    model = SeedNet()
    plane = cr.Plane.axes(model, *AXES)
    grid = cr.Grid([0.0], [0.0])
    x, y = seed_data[1]
    with pytest.raises(cr.CrumpleError, match="same, non-zero number"):
        cr.surface(model, F.mse_loss, (x, y[:-1]), plane, grid)
    with pytest.raises(TypeError, match="DataLoader"):
        cr.surface(model, F.mse_loss, 3, plane, grid)
    with pytest.raises(cr.CrumpleError, match="no batches"):
        cr.surface(model, F.mse_loss, [], plane, grid)
    with pytest.raises(cr.CrumpleError, match="not made for this model"):
        cr.surface(Wide(), F.mse_loss, (x, y), plane, grid)
    with pytest.raises(cr.CrumpleError, match="crumple.line"):
        cr.surface(model, F.mse_loss, (x, y), cr.Plane.axes(model, AXES[0]), grid)
