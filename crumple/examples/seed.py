"""The article crumple started from: a two-weight network, its test-MSE surface on an
80 x 80 grid of the two weights, and the path SGD takes over it.

Data: ``X ~ normal(1, 4.5)``, ``y = piecewise(X) + normal(0, 1)``, split 80/20.
Network: ``Linear(1, 1, bias=False) -> Tanh -> Linear(1, 1, bias=False)``.

Two deliberate differences from the article's snippets:

* The loss at a grid point is the exact mean squared error over the test set. The article
  averages the per-batch means, which over-weights the last, smaller batch (2,000 test
  samples in batches of 64 leave one of 16); crumple weighs each batch by its size.
* Targets have shape ``(n, 1)`` like the predictions. With targets of shape ``(n,)``,
  ``MSELoss`` broadcasts ``(64, 1)`` against ``(64,)`` to a ``64 x 64`` matrix and
  compares every prediction with every target of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from crumple import names
from crumple.grid import Grid
from crumple.landscape import project
from crumple.plane import Plane
from crumple.progress import tqdm
from crumple.run.store import DATA, save_run
from crumple.surface import surface
from crumple.trajectory import Recorder, Trajectory

OPTIMIZERS = names.OPTIMIZERS
AXES = ("Layer_1.weight", "Layer_2.weight")
ARTICLE_RANGE = (-2.0, 2.0)  # the article's grid: arange(-2, 2, 0.05) on both weights
MAX_WIDENED = 400  # points per axis of a grid widened to hold the paths, at most


def make_data(n: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The article's synthetic data: ``X`` and noisy piecewise ``y``, both of shape ``(n,)``.

    Example:
        >>> X, y = make_data(100)
        >>> X.shape, y.shape
        ((100,), (100,))
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(1, 4.5, n)
    y = np.piecewise(
        X,
        [X < -2, (X >= -2) & (X < 2), X >= 2],
        [lambda x: 2 * x + 5, lambda x: 7.3 * np.sin(x), lambda x: -0.03 * x**3 + 2],
    )
    return X, y + rng.normal(0, 1, X.shape)


def split(X: np.ndarray, y: np.ndarray, seed: int = 0, test_fraction: float = 0.2):
    """Shuffle and split into float32 ``(x, y)`` train and test pairs of shape ``(n, 1)``.

    Example:
        >>> (x_tr, _), (x_te, _) = split(*make_data(100))
        >>> len(x_tr), len(x_te)
        (80, 20)
    """
    order = np.random.default_rng(seed + 1).permutation(len(X))
    n_test = int(round(len(X) * test_fraction))
    test, train = order[:n_test], order[n_test:]

    def pair(idx):
        return (
            torch.tensor(X[idx], dtype=torch.float32)[:, None],
            torch.tensor(y[idx], dtype=torch.float32)[:, None],
        )

    return pair(train), pair(test)


class SeedNet(nn.Sequential):
    """``Linear(1, 1) -> Tanh -> Linear(1, 1)``, no biases: two weights in all.

    Example:
        >>> [n for n, _ in SeedNet().named_parameters()]
        ['Layer_1.weight', 'Layer_2.weight']
    """

    def __init__(self, w1: float = -1.0, w2: float = -1.0) -> None:
        super().__init__()
        self.add_module("Layer_1", nn.Linear(1, 1, bias=False))
        self.add_module("Tanh", nn.Tanh())
        self.add_module("Layer_2", nn.Linear(1, 1, bias=False))
        with torch.no_grad():
            self.Layer_1.weight.fill_(w1)
            self.Layer_2.weight.fill_(w2)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """``sgd``, ``momentum`` (SGD with momentum 0.9) or ``adam``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")


def test_mse(model: nn.Module, test: tuple[torch.Tensor, torch.Tensor]) -> float:
    """The exact mean squared error over the test set."""
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(test[0]), test[1]))


def train(
    model: nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int = 25,
    lr: float = 1e-2,
    optimizer: str = "sgd",
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> Recorder:
    """Train as the article does, recording the weights and the test loss before training
    and after every epoch."""
    loader = DataLoader(
        TensorDataset(*train_data),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    opt = make_optimizer(optimizer, model.parameters(), lr)
    loss_fn = nn.MSELoss()
    recorder = Recorder(model, loss=test_mse(model, test_data))  # step 0: before training
    for _ in tqdm(range(epochs), desc=f"training ({optimizer})", disable=not progress):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        model.eval()
        recorder.record(loss=test_mse(model, test_data))
    return recorder


@dataclass
class SeedRun:
    """Everything the demo draws: one trained model, trajectory and path per optimizer."""

    train_data: tuple[torch.Tensor, torch.Tensor]
    test_data: tuple[torch.Tensor, torch.Tensor]
    plane: Plane
    models: dict[str, SeedNet]
    trajectories: dict[str, Trajectory]
    surface: xr.Dataset
    paths: dict[str, xr.Dataset]

    @property
    def model(self) -> SeedNet:
        """The first optimizer's trained model."""
        return next(iter(self.models.values()))

    @property
    def path(self) -> xr.Dataset:
        """The first optimizer's path."""
        return next(iter(self.paths.values()))


def path_name(optimizer: str) -> str:
    return {"sgd": "SGD", "momentum": "SGD + momentum", "adam": "Adam"}[optimizer]


def run(
    *,
    w_min: float = -2.0,
    w_max: float = 2.0,
    step: float = 0.05,
    epochs: int = 25,
    lr: float = 1e-2,
    optimizers: tuple[str, ...] = ("sgd",),
    batch_size: int = 64,
    seed: int = 0,
    n_samples: int = 10_000,
    progress: bool = True,
    hold_paths: bool = False,
) -> SeedRun:
    """The article end to end: data, training (one run per optimizer, all from the same
    start and batch order) with recorded paths, the projections, and the surface on the
    grid ``arange(w_min, w_max, step)`` of both weights (``hold_paths``: widened to hold
    every path point, :func:`grid_of`).

    Example:
        >>> result = run(step=0.5, epochs=1, n_samples=200, optimizers=("sgd", "adam"),
        ...              progress=False)
        >>> result.surface.loss.shape, list(result.paths), result.path.sizes["step"]
        ((8, 8), ['SGD', 'Adam'], 2)
    """
    train_data, test_data = split(*make_data(n_samples, seed), seed=seed)
    plane = Plane.axes(SeedNet(), *AXES)  # coordinates are the two weights themselves
    models, trajectories = {}, {}
    for optimizer in optimizers:
        model = SeedNet()
        recorder = train(
            model,
            train_data,
            test_data,
            epochs=epochs,
            lr=lr,
            optimizer=optimizer,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        )
        models[path_name(optimizer)] = model
        trajectories[path_name(optimizer)] = recorder.trajectory
    loss_fn = nn.functional.mse_loss
    model = next(iter(models.values()))
    paths = {
        name: project(trajectory, plane, model, loss_fn, test_data)
        for name, trajectory in trajectories.items()
    }
    grid = grid_of(w_min, w_max, step, paths if hold_paths else None)
    ds = surface(model, loss_fn, test_data, plane, grid)
    ds.attrs["n_parameters"] = 2
    return SeedRun(train_data, test_data, plane, models, trajectories, ds, paths)


def grid_of(w_min: float, w_max: float, step: float, paths=None) -> Grid:
    """``arange(w_min, w_max, step)`` on both weights; with ``paths``, each axis extended by
    whole steps to hold every path point with room (:func:`crumple.auto_range.covering`), or,
    past ``MAX_WIDENED`` points, that many points over the widened extent.
    ``grid.chosen`` says which.

    Example:
        >>> path = xr.Dataset({"alpha": ("step", [-1.0, -2.6]), "beta": ("step", [-1.0, 0.0])})
        >>> grid = grid_of(-2.0, 2.0, 0.5, {"SGD": path})
        >>> [(float(a[0]), float(a[-1]), len(a)) for a in grid.axes]
        [(-3.0, 1.5, 10), (-2.0, 1.5, 8)]
        >>> grid.chosen
        '-2 .. 2 in steps of 0.5; widened to hold the path: alpha to -2.81 .. 1.5'
    """
    from crumple.auto_range import covering

    axis = np.arange(w_min, w_max, step)
    if paths is None:
        return Grid(axis, axis)
    extents, said = covering([(axis[0], axis[-1])] * 2, paths)
    axes = []
    for low, high in extents:
        below = max(0, int(np.ceil((axis[0] - low) / step - 1e-9)))
        above = max(0, int(np.ceil((high - axis[-1]) / step - 1e-9)))
        wide = axis[0] + step * np.arange(-below, len(axis) + above)
        axes.append(wide if len(wide) <= MAX_WIDENED else np.linspace(low, high, MAX_WIDENED))
    grid = Grid(*axes)
    grid.chosen = f"{w_min:g} .. {w_max:g} in steps of {step:g}" + (
        said or ", which holds every path point"
    )
    return grid


def fit_figure(result: SeedRun):
    """The test data with each trained model's curve."""
    from crumple import plot

    x, y = result.test_data
    x_curve = torch.linspace(float(x.min()), float(x.max()), 400)[:, None]
    curves = {}
    with torch.no_grad():
        for name, model in result.models.items():
            w1, w2 = (float(model.get_parameter(n)) for n in AXES)
            curves[f"{name} (W1 = {w1:.3f}, W2 = {w2:.3f})"] = (
                x_curve[:, 0].numpy(),
                model(x_curve)[:, 0].numpy(),
            )
    return plot.fit(
        x[:, 0].numpy(), y[:, 0].numpy(), curves, title="Test data and the trained models"
    )


def points_outside(result: SeedRun) -> int:
    """How many path points (over all paths) lie beyond the grid's range (drawn, but off
    the surface)."""
    from crumple.grid import Grid
    from crumple.report import outside

    ds = result.surface
    return outside(result.paths, Grid(ds.alpha.values, ds.beta.values))


def write(result: SeedRun, folder) -> tuple[Path, Path]:
    """Write the run (``landscape.zarr``: groups ``surface`` and ``paths/NAME``; the plane)
    and the page ``landscape.html``."""
    from crumple import plot
    from crumple.run.lock import writer

    with writer(folder):  # the folder's one writer, from the data to the page
        folder = save_run(folder, result.surface, result.paths, result.plane)
        page_path = plot.report(  # its facts count each path's points off the grid
            folder / "landscape.html",
            result.surface,
            result.paths,
            title="crumple: the article's loss landscape",
            more_facts={"epochs": result.path.sizes["step"] - 1},
            more_figures=[fit_figure(result)],
        )
    return page_path, folder / DATA
