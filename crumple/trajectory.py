"""Record a training run's weights and place them on a plane."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from crumple.errors import CrumpleError
from crumple.evaluate import LossFn, batched_losses, prepared
from crumple.params import Params, evaluation_mode, flatten, parameters_of
from crumple.plane import Plane


@dataclass
class Trajectory:
    """Weight snapshots of a training run, with the step and the loss the loop reported.

    Example:
        >>> t = Trajectory(steps=[0], weights=[{"w": torch.zeros(2)}], losses=[1.0])
        >>> t.stacked()["w"].shape
        torch.Size([1, 2])
    """

    steps: list[int] = field(default_factory=list)
    weights: list[Params] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)

    def stacked(self) -> Params:
        """The snapshots as one tensor per parameter, stacked along a new first axis.

        Example:
            >>> Trajectory([0, 1], [{"w": torch.zeros(3)}] * 2, [0.0, 0.0]).stacked()["w"].shape
            torch.Size([2, 3])
        """
        if not self.weights:
            raise CrumpleError("the trajectory is empty; call Recorder.record() while training")
        return {n: torch.stack([w[n] for w in self.weights]) for n in self.weights[0]}


class Recorder:
    """Keeps a copy of the model's weights each time ``record`` is called.

    Args:
        model: the model being trained.
        every: keep one snapshot every ``every`` calls (the first call is always kept).

    Example:
        >>> net = torch.nn.Linear(1, 1)
        >>> rec = Recorder(net)
        >>> rec.record(loss=1.0)
        >>> len(rec.trajectory)
        1
    """

    def __init__(self, model: nn.Module, every: int = 1) -> None:
        if not isinstance(every, int) or every < 1:
            raise CrumpleError(f"every must be a positive integer, got {every!r}")
        self.model = model
        self.every = every
        self.step = 0
        self.trajectory = Trajectory()

    def record(self, loss: float | Tensor | None = None) -> None:
        """Count one step; keep a snapshot (on the CPU) if it is one to keep.

        Example:
            >>> rec = Recorder(torch.nn.Linear(1, 1), every=2)
            >>> for step in range(5):
            ...     rec.record(loss=step)
            >>> rec.trajectory.steps
            [0, 2, 4]
        """
        if self.step % self.every == 0:
            self.trajectory.steps.append(self.step)
            self.trajectory.weights.append(
                {n: p.cpu() for n, p in parameters_of(self.model).items()}
            )
            self.trajectory.losses.append(float("nan") if loss is None else float(loss))
        self.step += 1


def project(
    trajectory: Trajectory,
    plane: Plane,
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> xr.Dataset:
    """Place each snapshot on the plane and evaluate it both ways.

    Returns a Dataset along ``step`` with ``alpha`` and ``beta`` (least-squares coordinates),
    ``off_plane`` (distance from the snapshot to its projection), ``loss`` (the true loss of
    the snapshot), ``loss_on_plane`` (the loss at the projection) and ``recorded_loss`` (what
    the training loop passed to ``record``).

    Example:
        >>> import crumple as cr
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> rec = cr.Recorder(net); rec.record()
        >>> x = torch.ones(3, 1)
        >>> path = cr.project(rec.trajectory, cr.Plane.axes(net, "weight"), net,
        ...                   torch.nn.functional.mse_loss, (x, x))
        >>> float(path.off_plane[0])
        0.0
    """
    snapshots = trajectory.stacked()
    names = list(plane.origin)
    if set(snapshots) != set(names):
        raise CrumpleError(
            "the trajectory's parameters differ from the plane's; record the same model "
            "the plane was built from"
        )
    # least squares in float64: D c = w - origin
    basis = torch.stack([flatten(d, names).double() for d in plane.directions], dim=1)
    offsets = torch.stack([flatten(w, names).double() for w in trajectory.weights])
    offsets = offsets - flatten(plane.origin, names).double()
    coords = torch.linalg.lstsq(basis, offsets.T).solution  # (ndim, T)
    off_plane = torch.linalg.vector_norm(offsets.T - basis @ coords, dim=0)

    with evaluation_mode(model):
        batches, plane_, buffers = prepared(model, data, plane, device, dtype)
        reference = next(iter(plane_.origin.values()))
        fns = {"loss": loss_fn}
        true = batched_losses(
            model,
            fns,
            batches,
            lambda w: w,
            [{n: t.to(reference) for n, t in snapshots.items()}],
            [0],
            buffers,
        )["loss"]
        on_plane = batched_losses(
            model, fns, batches, plane_.at, list(coords.to(reference)), [0] * plane.ndim, buffers
        )["loss"]

    dims = ("alpha", "beta")[: plane.ndim]
    step = ("step", np.asarray(trajectory.steps))
    data_vars = {dim: ("step", c.numpy()) for dim, c in zip(dims, coords)}
    data_vars |= {
        "loss": ("step", true.double().cpu().numpy()),
        "loss_on_plane": ("step", on_plane.double().cpu().numpy()),
        "off_plane": ("step", off_plane.numpy()),
        "recorded_loss": ("step", np.asarray(trajectory.losses, dtype=np.float64)),
    }
    return xr.Dataset(data_vars, coords={"step": step})
