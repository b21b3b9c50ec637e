"""The edge of stability (Cohen et al., ICLR 2021), seen as it happens: full-batch gradient
descent with step size ``lr`` on an MLP 64-200-200-10 (tanh) with the squared loss
``0.5 * sum over classes of (f - onehot)^2``, averaged over the first 1,000 digits of
scikit-learn (pixels / 16). The top Hessian eigenvalue starts well below ``2 / lr``, rises
as training goes on (progressive sharpening) until it reaches ``2 / lr``, then hovers
there while the loss keeps falling, not monotonically. ``crumple demo --eos`` runs it: the
curvature tracked every 50 steps (:class:`crumple.hessian.Tracking`), the path's PCA
plane, the landscape over it and the page with the curvature panel.

Measured here (lr 0.05, seed 0): lambda_max 11.3 at step 0, 22 at step 1,000, 40.5 at
step 2,500, then 39.4 .. 40.8 up to step 6,000 (2 / lr = 40); loss 0.565 -> 0.065.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from crumple.errors import require_extra

SAMPLES = 1000
STEPS = 6000
LR = 0.05
CURVATURE_EVERY = 50  # steps between curvature measurements
SNAPSHOT_EVERY = 100  # steps between recorded weights
GRID_SIZE = 31
PATH = "gradient descent"


def digits(samples: int = SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``samples`` digits (8 x 8 pixels / 16, float32) and their one-hot labels.

    Example:
        >>> x, t = digits(10)
        >>> tuple(x.shape), tuple(t.shape), float(x.max()) <= 1.0
        ((10, 64), (10, 10), True)
    """
    datasets = require_extra("sklearn.datasets", "dev")
    images, labels = datasets.load_digits(return_X_y=True)
    x = torch.tensor(images[:samples] / 16.0, dtype=torch.float32)
    t = nn.functional.one_hot(torch.tensor(labels[:samples]), 10).float()
    return x, t


def mlp(seed: int = 0) -> nn.Sequential:
    """The MLP 64-200-200-10 with tanh, PyTorch's default init from ``seed``.

    Example:
        >>> sum(p.numel() for p in mlp().parameters())
        55210
    """
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 10)
    )


def squared_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``0.5 * sum over classes of (pred - target)^2``, averaged over the samples.

    Example:
        >>> float(squared_loss(torch.zeros(2, 3), torch.ones(2, 3)))
        1.5
    """
    return 0.5 * (pred - target).pow(2).sum(dim=1).mean()


def train(
    lr: float = LR,
    steps: int = STEPS,
    *,
    every: int = CURVATURE_EVERY,
    snapshots: int = SNAPSHOT_EVERY,
    seed: int = 0,
    samples: int = SAMPLES,
    progress: bool = False,
):
    """Full-batch gradient descent for ``steps`` steps, recording the weights every
    ``snapshots`` steps and the curvature every ``every`` steps: the trained model and its
    :class:`crumple.Recorder` (``recorder.sharpness()``: the curvature history).

    Example:
        >>> model, rec = train(steps=4, every=2, snapshots=2, samples=50)
        >>> rec.sharpness().step.values.tolist(), rec.trajectory.steps
        ([0, 2, 4], [0, 2, 4])
    """
    from crumple.hessian import Tracking
    from crumple.progress import tqdm
    from crumple.trajectory import Recorder

    x, t = digits(samples)
    model = mlp(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    tracking = Tracking(squared_loss, (x, t), every=every, optimizer=optimizer)
    with torch.no_grad():
        start = squared_loss(model(x), t)
    with Recorder(model, every=snapshots, curvature=tracking, loss=start) as recorder:
        for _ in tqdm(range(steps), desc="training", disable=not progress):
            optimizer.zero_grad()
            loss = squared_loss(model(x), t)
            loss.backward()
            optimizer.step()
            recorder.record(loss=loss.detach())
    return model, recorder


def run(
    folder: str | Path,
    *,
    lr: float = LR,
    steps: int = STEPS,
    grid_size: int = GRID_SIZE,
    seed: int = 0,
    every: int | None = None,
    progress: bool = False,
):
    """Train (:func:`train`; the curvature measured ``every`` steps, by default 50 or, for
    a short run, often enough for 100 measurements), then write the run folder: the
    landscape on the PCA plane of the path (through the trained weights, on a grid that
    holds the path), the path, the
    curvature history (``sharpness.zarr``) and the page. Returns the
    :class:`crumple.report.Run`.

    Example:
        >>> import tempfile
        >>> run_ = run(tempfile.mkdtemp(), steps=6, grid_size=3)
        >>> run_.surface.loss.shape, sorted(run_.paths)
        ((3, 3), ['gradient descent'])
    """
    from crumple import report
    from crumple.landscape import Landscape
    from crumple.plane import Plane

    if every is None:
        every = max(1, min(CURVATURE_EVERY, steps // 100))  # short runs measured more often
    snapshots = max(1, min(SNAPSHOT_EVERY, steps // 40))
    model, recorder = train(
        lr, steps, every=every, snapshots=snapshots, seed=seed, progress=progress
    )
    data = digits()
    plane = Plane.pca(recorder.trajectory)
    landscape = Landscape(model, squared_loss, data, progress=progress)
    path = landscape.project(recorder.trajectory, plane)
    grid = report.choose_grid(None, landscape, plane, {PATH: path}, num=grid_size)
    title = f"crumple: the edge of stability (gradient descent, lr {lr:g}, 2 / lr = {2 / lr:g})"
    return report.write_run(
        folder,
        landscape,
        plane,
        grid,
        paths={PATH: path},
        title=title,
        sharpness=recorder.sharpness(),
    )
