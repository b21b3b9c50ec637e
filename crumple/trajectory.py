"""Record a training run's weights, in memory or streamed to disk, and find their coordinates
on a plane (:func:`coordinates`; :func:`crumple.project` evaluates them too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from crumple.errors import CrumpleError, CrumpleTypeError
from crumple.files import save_tensors
from crumple.names import TRAJECTORY_INDEX
from crumple.params import Params, parameters_of
from crumple.plane import Plane

INDEX = TRAJECTORY_INDEX


def index_row(step: int, loss: float) -> str:
    """One line of a trajectory folder's index (``trajectory.jsonl``).

    Example:
        >>> index_row(3, 0.5)
        '{"step": 3, "loss": 0.5}\\n'
    """
    return json.dumps({"step": step, "loss": loss}) + "\n"


class Trajectory:
    """Weight snapshots of a training run, with the step and the loss the loop reported.

    Snapshots live in memory (``weights``), or in a folder written by
    ``Recorder(model, to=folder)``, one safetensors file per snapshot, read when needed.

    Example:
        >>> t = Trajectory(steps=[0], weights=[{"w": torch.zeros(2)}], losses=[1.0])
        >>> t.series("w").shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        steps: list[int] | None = None,
        weights: list[Params] | None = None,
        losses: list[float] | None = None,
        folder: str | Path | None = None,
    ) -> None:
        self.steps = list(steps or [])
        self.losses = list(losses or [])
        self.folder = None if folder is None else Path(folder)
        self.weights = None if self.folder is not None else list(weights or [])
        if self.weights is not None and len(self.weights) != len(self.steps):
            raise CrumpleError("a trajectory needs one weights dict per step")

    @classmethod
    def load(cls, folder: str | Path) -> Trajectory:
        """Open a trajectory a ``Recorder(model, to=folder)`` wrote.

        Example:
            >>> import tempfile
            >>> folder = tempfile.mkdtemp() + "/run"
            >>> rec = Recorder(torch.nn.Linear(1, 1), to=folder)
            >>> rec.record(loss=0.5)
            >>> Trajectory.load(folder).losses
            [0.5]
        """
        index = Path(folder) / INDEX
        if not index.is_file():
            raise CrumpleError(
                f"{str(folder)!r} holds no trajectory ({INDEX} is missing); "
                "pass the folder given to Recorder(model, to=...)"
            )
        rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
        return cls([r["step"] for r in rows], None, [r["loss"] for r in rows], folder)

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        """One line: how many snapshots, their steps, and where they live.

        Example:
            >>> Trajectory([0, 5], [{"w": torch.zeros(2)}] * 2, [1.0, 0.5])
            Trajectory(2 snapshots, steps 0 .. 5, in memory)
        """
        where = "in memory" if self.folder is None else f"in {str(self.folder)!r}"
        steps = f", steps {self.steps[0]} .. {self.steps[-1]}" if self.steps else ""
        return f"Trajectory({len(self)} snapshot{'s' * (len(self) != 1)}{steps}, {where})"

    def names(self) -> list[str]:
        """The parameter names of the snapshots.

        Example:
            >>> Trajectory([0], [{"w": torch.zeros(1), "b": torch.zeros(1)}], [0.0]).names()
            ['w', 'b']
        """
        if not self.steps:
            raise CrumpleError("the trajectory is empty; call Recorder.record() while training")
        return list(self.snapshot(0))

    def snapshot(self, k: int) -> Params:
        """The weights of the ``k``-th snapshot.

        Example:
            >>> t = Trajectory([0, 5], [{"w": torch.zeros(1)}, {"w": torch.ones(1)}], [0, 0])
            >>> t.snapshot(1)
            {'w': tensor([1.])}
        """
        if self.weights is not None:
            return self.weights[k]
        from safetensors.torch import load_file

        return load_file(str(self._file(self.steps[k])))

    def series(self, name: str) -> Tensor:
        """One parameter across all snapshots, stacked along a new first axis.

        Only that tensor is read from each file of a trajectory on disk.

        Example:
            >>> Trajectory([0, 1], [{"w": torch.zeros(3)}] * 2, [0.0, 0.0]).series("w").shape
            torch.Size([2, 3])
        """
        if not self.steps:
            raise CrumpleError("the trajectory is empty; call Recorder.record() while training")
        if self.weights is not None:
            return torch.stack([w[name] for w in self.weights])
        from safetensors import safe_open

        tensors = []
        for step in self.steps:
            with safe_open(str(self._file(step)), framework="pt") as f:
                tensors.append(f.get_tensor(name))
        return torch.stack(tensors)

    def _file(self, step: int) -> Path:
        return self.folder / f"step_{step:09d}.safetensors"


class Recorder:
    """Keeps a copy of the model's weights each time ``record`` is called.

    Args:
        model: the model being trained.
        every: keep one snapshot every ``every`` calls (the first call is always kept).
        to: a folder to stream snapshots to (one safetensors file each) instead of
            keeping them in memory; it must not hold a trajectory already.

    Example:
        >>> net = torch.nn.Linear(1, 1)
        >>> rec = Recorder(net)
        >>> rec.record(loss=1.0)
        >>> len(rec.trajectory)
        1
    """

    def __init__(self, model: nn.Module, every: int = 1, to: str | Path | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise CrumpleTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(every, int) or every < 1:
            raise CrumpleError(f"every must be a positive integer, got {every!r}")
        self.model = model
        self.every = every
        self.step = 0
        if to is not None:
            folder = Path(to)
            if (folder / INDEX).exists():
                raise CrumpleError(
                    f"{str(folder)!r} already holds a trajectory; record into a new folder "
                    "or delete the old one first"
                )
            folder.mkdir(parents=True, exist_ok=True)
            (folder / INDEX).touch()
        self.trajectory = Trajectory(folder=to)

    def record(self, loss: float | Tensor | None = None, step: int | None = None) -> None:
        """Count one step; keep a snapshot (on the CPU) if it is one to keep.

        Args:
            loss: the step's training loss, kept beside the snapshot.
            step: the number of this step, e.g. a training framework's global step, instead
                of the count of calls; the count goes on from it. It must come after the
                steps recorded before.

        Example:
            >>> rec = Recorder(torch.nn.Linear(1, 1), every=2)
            >>> for step in range(5):
            ...     rec.record(loss=step)
            >>> rec.trajectory.steps
            [0, 2, 4]
            >>> rec.record(step=10); rec.trajectory.steps
            [0, 2, 4, 10]
        """
        if step is not None:
            last = self.trajectory.steps[-1] if self.trajectory.steps else -1
            if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step <= last:
                raise CrumpleError(
                    f"step must be an integer after the last recorded step ({last}), got "
                    f"{step!r}; pass the training loop's own step count"
                )
            self.step = int(step)
        if self.step % self.every == 0:
            weights = {n: p.cpu() for n, p in parameters_of(self.model).items()}
            value = float("nan") if loss is None else float(torch.as_tensor(loss).detach())
            t = self.trajectory
            if t.folder is None:
                t.weights.append(weights)
            else:
                contiguous = {n: w.contiguous() for n, w in weights.items()}
                save_tensors(contiguous, t._file(self.step))
                with open(t.folder / INDEX, "a") as index:
                    index.write(index_row(self.step, value))
            t.steps.append(self.step)
            t.losses.append(value)
        self.step += 1


def coordinates(trajectory: Trajectory, plane: Plane) -> tuple[Tensor, Tensor]:
    """Coordinates ``c`` minimising ``|w - origin - D c|`` for each snapshot (normal equations
    accumulated parameter by parameter in float64), and that distance."""
    n, k = len(trajectory), plane.ndim
    gram = torch.zeros(k, k, dtype=torch.float64)
    rhs = torch.zeros(k, n, dtype=torch.float64)
    for offsets, basis in _offsets_and_bases(trajectory, plane):
        gram += basis.T @ basis
        rhs += basis.T @ offsets.T
    coords = torch.linalg.lstsq(gram, rhs).solution
    # a second pass, entry by entry: no cancellation for points close to the plane
    residual = torch.zeros(n, dtype=torch.float64)
    for offsets, basis in _offsets_and_bases(trajectory, plane):
        residual += (offsets - (basis @ coords).T).pow(2).sum(dim=1)
    return coords, residual.sqrt()


def _offsets_and_bases(trajectory: Trajectory, plane: Plane):
    """Per parameter, in float64: each snapshot minus the origin (T x numel) and the plane's
    directions as columns (numel x ndim). One parameter at a time, so a trajectory on disk
    is never loaded whole."""
    n = len(trajectory)
    for name, origin in plane.origin.items():
        offsets = trajectory.series(name).double().reshape(n, -1) - origin.double().reshape(-1)
        basis = torch.stack([d[name].double().reshape(-1) for d in plane.directions], dim=1)
        yield offsets, basis
