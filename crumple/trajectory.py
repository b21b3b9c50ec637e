"""Record a training run's weights, in memory or streamed to disk, and find their coordinates
on a plane (:func:`coordinates`; :func:`crumple.project` evaluates them too)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from crumple.errors import CrumpleError, CrumpleTypeError
from crumple.files import append_text, inside, save_tensors, written
from crumple.history import (
    end_line,
    index_row,
    read_curvature,
    read_index,
    row_text,
    sharpness,
)
from crumple.names import CURVATURE_ATTRS, CURVATURE_ROWS, TRAJECTORY_INDEX
from crumple.params import Params, parameters_of, recorded_buffers
from crumple.plane import Plane

INDEX = TRAJECTORY_INDEX
BUFFERS = "crumple_buffers"  # a snapshot file's metadata: the names of its buffers (a JSON list)


class Trajectory:
    """Weight snapshots of a training run, with the step and the loss the loop reported.

    Snapshots (parameters, and buffers such as BatchNorm statistics) live in memory
    (``weights``, ``buffers``: ``{}`` where none were recorded), or in a folder written by
    ``Recorder(model, to=folder)``, one safetensors file each, read when needed.

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
        buffers: list[Params] | None = None,
        curvature: list[dict] | None = None,
    ) -> None:
        self.steps = list(steps or [])
        self.losses = list(losses or [])
        self.folder = None if folder is None else Path(folder)
        self.curvature = list(curvature or [])  # rows of the curvature measured in training
        self.curvature_attrs: dict = {}  # how it was measured (Recorder(curvature=...))
        self.weights = None if self.folder is not None else list(weights or [])
        self.buffers = None
        if self.weights is not None:
            self.buffers = [{} for _ in self.steps] if buffers is None else list(buffers)
            counts = len(self.steps), len(self.weights), len(self.buffers)
            if len(set(counts)) > 1:
                raise CrumpleError(
                    "a trajectory needs one weights dict and one buffers dict per step; got "
                    f"{counts} (steps, weights, buffers)"
                )

    @classmethod
    def load(cls, folder: str | Path) -> Trajectory:
        """Open a trajectory a ``Recorder(model, to=folder)`` wrote. A half-written last
        line of its index (a run stopped while recording) is left out with a warning; any
        other damage, or a snapshot that is missing or lies outside the folder, is a
        :class:`CrumpleError` naming the file.

        Example:
            >>> import tempfile
            >>> folder = tempfile.mkdtemp() + "/run"
            >>> rec = Recorder(torch.nn.Linear(1, 1), to=folder)
            >>> rec.record(loss=0.5)
            >>> Trajectory.load(folder).steps
            [0, 1]
        """
        index = Path(folder) / INDEX
        if not index.is_file():
            raise CrumpleError(
                f"{str(folder)!r} holds no trajectory ({INDEX} is missing); "
                "pass the folder given to Recorder(model, to=...)"
            )
        rows = read_index(index)
        trajectory = cls([s for _, s, _ in rows], None, [x for _, _, x in rows], folder)
        trajectory.curvature = read_curvature(Path(folder))
        attrs = Path(folder) / CURVATURE_ATTRS
        if trajectory.curvature and attrs.is_file():
            try:
                trajectory.curvature_attrs = dict(json.loads(attrs.read_text()))
            except (ValueError, TypeError, OSError) as e:
                warnings.warn(f"crumple: {str(attrs)!r} is not read ({e})", stacklevel=2)
        for line, step, _ in rows:
            file = inside(folder, trajectory._file(step).name, index)
            if not file.is_file():
                raise CrumpleError(
                    f"the snapshot {str(file)!r} of step {step} (line {line} of {str(index)!r}) "
                    f"is missing; restore it, or delete line {line} of {INDEX} to leave that "
                    "step out"
                )
        return trajectory

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
        """The weights (parameters) of the ``k``-th snapshot.

        Example:
            >>> t = Trajectory([0, 5], [{"w": torch.zeros(1)}, {"w": torch.ones(1)}], [0, 0])
            >>> t.snapshot(1)
            {'w': tensor([1.])}
        """
        if self.weights is not None:
            return self.weights[k]
        return self._read(self.steps[k], _read_snapshot)[0]

    def snapshot_buffers(self, k: int) -> Params:
        """The buffers recorded with the ``k``-th snapshot (BatchNorm running statistics and
        the like), ``{}`` for a snapshot recorded without them (by an older crumple).

        Example:
            >>> net = torch.nn.BatchNorm1d(2)
            >>> Recorder(net).trajectory.snapshot_buffers(0)["running_var"]
            tensor([1., 1.])
        """
        if self.buffers is not None:
            return self.buffers[k]
        return self._read(self.steps[k], _read_snapshot)[1]

    def buffer_counts(self) -> tuple[int, int]:
        """How many snapshots hold their own buffers, of how many (only headers are read).

        Example:
            >>> Trajectory([0], [{"w": torch.zeros(1)}], [0.0]).buffer_counts()
            (0, 1)
        """
        if self.buffers is not None:
            return sum(1 for b in self.buffers if b), len(self)
        from safetensors import safe_open

        def names(file: Path) -> list:
            with safe_open(str(file), framework="pt") as f:
                return json.loads((f.metadata() or {}).get(BUFFERS, "[]"))

        return sum(1 for step in self.steps if self._read(step, names)), len(self)

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

        def read(file: Path) -> Tensor:
            with safe_open(str(file), framework="pt") as f:
                if name not in f.keys():  # noqa: SIM118
                    raise CrumpleError(
                        f"the snapshot {str(file)!r} holds no parameter {name!r} (it holds "
                        f"{sorted(f.keys())[:8]}); its trajectory was recorded from another model"
                    )
                return f.get_tensor(name)

        return torch.stack([self._read(step, read) for step in self.steps])

    def _file(self, step: int) -> Path:
        return self.folder / f"step_{step:09d}.safetensors"

    def append(self, step: int, loss: float, weights: Params, buffers: Params) -> None:
        """Add a snapshot after the last one: kept in memory, or written to the folder (its
        file, then its line of the index).

        Example:
            >>> t = Trajectory()
            >>> t.append(0, 1.0, {"w": torch.zeros(1)}, {}); t.steps
            [0]
        """
        if self.folder is None:
            self.weights.append(weights)
            self.buffers.append(buffers)
        else:
            tensors = {n: t.contiguous() for n, t in {**weights, **buffers}.items()}
            save_tensors(tensors, self._file(step), metadata={BUFFERS: json.dumps(list(buffers))})
            end_line(self.folder / INDEX)
            append_text(self.folder / INDEX, index_row(step, loss))
        self.steps.append(step)
        self.losses.append(loss)

    def append_curvature(self, row: dict) -> None:
        """Add a row of curvature measured in training (``step``, ``loss``, ``lambda_max``,
        ...), kept in memory or appended to the folder's ``curvature.jsonl``.

        Example:
            >>> t = Trajectory()
            >>> t.append_curvature({"step": 0, "loss": 1.0, "lambda_max": 2.0})
            >>> t.sharpness().lambda_max.values.tolist()
            [2.0]
        """
        if self.folder is not None:
            end_line(self.folder / CURVATURE_ROWS)
            append_text(self.folder / CURVATURE_ROWS, row_text(row))
        self.curvature.append(dict(row))

    def sharpness(self) -> xr.Dataset | None:
        """The curvature measured in training (``Recorder(curvature=...)``) as a Dataset
        over ``step`` (:func:`crumple.history.sharpness`), or ``None`` where none was.

        Example:
            >>> t = Trajectory(curvature=[{"step": 0, "loss": 1.0, "lambda_max": 2.0}])
            >>> t.sharpness().lambda_max.values.tolist(), Trajectory().sharpness()
            ([2.0], None)
        """
        return sharpness(self.curvature, self.curvature_attrs) if self.curvature else None

    def _read(self, step: int, read):
        """``read(file)`` of the snapshot of ``step``; a file that cannot be read (missing,
        truncated, damaged, or without the tensor asked for) as a :class:`CrumpleError`."""
        file = self._file(step)
        try:
            return read(file)
        except CrumpleError:
            raise
        except Exception as e:
            said = str(e).splitlines()[0][:200] if str(e) else ""
            raise CrumpleError(
                f"the snapshot {str(file)!r} of step {step} in {INDEX} cannot be read "
                f"({type(e).__name__}: {said}); it is missing, truncated or damaged: restore "
                f"it, or delete the line of step {step} from {INDEX} to leave that step out"
            ) from e


class Recorder:
    """Keeps a copy of the model's weights (its parameters and buffers) along training: the
    initial weights when it is made (step 0), then after the optimizer steps, and the final
    weights when training ends (:meth:`finish`, or the end of a ``with`` block). Call
    :meth:`record` after each optimizer step; the first call is step 1.

    Args:
        model: the model being trained.
        every: keep one snapshot every ``every`` steps (the initial and the final weights
            are always kept).
        to: a folder to stream snapshots to (one safetensors file each) instead of
            keeping them in memory; it must not hold a trajectory already.
        loss: the loss at the initial weights, if known (kept beside them).
        step: the step the model is at now (a run taken up again at its global step).
        trajectory: a trajectory to go on with (taken up from a checkpoint) instead of a new
            one; nothing is kept when the recorder is made.
        curvature: a :class:`crumple.hessian.Tracking`: the curvature measured every few
            steps as the model trains (the top Hessian eigenvalue and more), kept in
            ``trajectory.curvature`` (and ``curvature.jsonl`` in ``to``) and read as a
            Dataset by :meth:`sharpness`. Its operator is built (and its checks run) now,
            and it measures the initial weights when step 0 is due.

    Example:
        >>> net = torch.nn.Linear(1, 1)
        >>> with Recorder(net, every=5) as rec:
        ...     for step in range(12):
        ...         rec.record(loss=1.0)  # after each optimizer step
        >>> rec.trajectory.steps
        [0, 5, 10, 12]
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 1,
        to: str | Path | None = None,
        *,
        loss: float | Tensor | None = None,
        step: int = 0,
        trajectory: Trajectory | None = None,
        curvature=None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise CrumpleTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise CrumpleError(f"every must be a positive integer, got {every!r}")
        self.model, self.every, self.step = model, every, _step(step, -1)
        self.last: tuple[int, float | Tensor | None] = (self.step, loss)
        if trajectory is not None and to is not None:
            raise CrumpleError(
                f"to={str(to)!r} with trajectory=...: the recorder goes on in the "
                "trajectory's own place; leave out to"
            )
        self.curvature = curvature
        if curvature is not None:  # refused now, not when training has begun
            curvature.start(model, resume=trajectory is not None)
        if trajectory is not None:
            self.trajectory = trajectory
            self.step = max(self.step, trajectory.steps[-1] + 1 if trajectory.steps else 0)
            self._describe()
            return
        if to is not None:
            try:  # the folder and an empty index, made by this Recorder alone
                append_text(Path(to) / INDEX, "", new=True)
            except FileExistsError:
                raise CrumpleError(
                    f"{str(to)!r} already holds a trajectory; record into a new folder "
                    "or delete the old one first"
                ) from None
        self.trajectory = Trajectory(folder=to)
        self._describe()
        self._measure(self.step, loss, None, start=True)
        self._keep(loss)

    def _describe(self) -> None:
        """How the curvature is measured, kept with the trajectory (in its folder too)."""
        if self.curvature is None:
            return
        self.trajectory.curvature_attrs = attrs = self.curvature.attrs()
        if self.trajectory.folder is not None:
            with written(self.trajectory.folder / CURVATURE_ATTRS) as temporary:
                temporary.write_text(json.dumps(attrs))

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:  # training ended; not when it stopped on an error
            self.finish()

    def record(
        self, loss: float | Tensor | None = None, step: int | None = None, batch=None
    ) -> None:
        """Count one optimizer step; keep a snapshot (on the CPU) if it is one to keep, and
        measure the curvature if it is due.

        Args:
            loss: the step's training loss, kept beside the snapshot.
            step: the number of this step, e.g. a training framework's global step, instead
                of the count of calls; the count goes on from it. It must come after the
                steps recorded before.
            batch: the step's training batch, for a ``curvature`` tracked on the training
                batch (``Tracking(loss_fn)`` without data).

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
            self.step = _step(step, self.trajectory.steps[-1] if self.trajectory.steps else -1)
        self.last = (self.step, loss.detach() if isinstance(loss, Tensor) else loss)  # finish's
        self._measure(self.step, loss, batch)
        if self.step % self.every == 0:
            self._keep(loss)
        else:
            self.step += 1

    def finish(self, loss: float | Tensor | None = None, step: int | None = None) -> None:
        """Training ended: keep the final weights, unless the last step was kept already.

        Args:
            loss: the loss of the final step (by default the one :meth:`record` was given).
            step: the step training ended at (by default the last one counted).

        Example:
            >>> rec = Recorder(torch.nn.Linear(1, 1), every=5)
            >>> for step in range(7):
            ...     rec.record()
            >>> rec.finish(); rec.finish(); rec.trajectory.steps
            [0, 5, 7]
        """
        steps = self.trajectory.steps
        last = steps[-1] if steps else -1
        step = self.step - 1 if step is None else _step(step, -1)
        if step > last:
            if loss is None and self.last[0] == step:
                loss = self.last[1]
            self.step = step
            self._keep(loss)

    def sharpness(self) -> xr.Dataset | None:
        """The curvature measured so far (:meth:`Trajectory.sharpness`).

        Example:
            >>> Recorder(torch.nn.Linear(1, 1)).sharpness() is None  # no curvature= given
            True
        """
        return self.trajectory.sharpness()

    def _measure(self, step: int, loss, batch, start: bool = False) -> None:
        """The curvature at ``step``, kept if it was due (nothing without ``curvature``, or
        where it is measured already: a run taken up again). At the ``start`` of training
        there is no training batch: tracked on those, the initial weights are not measured."""
        rows = self.trajectory.curvature
        if self.curvature is None or rows and rows[-1]["step"] >= step:
            return
        measure = not (start and batch is None and self.curvature.data is None)
        row = self.curvature.after_step(self.model, step, loss, batch, measure)
        if row is not None:
            self.trajectory.append_curvature(row)

    def _keep(self, loss: float | Tensor | None) -> None:
        """Keep the model's weights now as the snapshot of this step, and count it."""
        weights = {n: p.cpu() for n, p in parameters_of(self.model).items()}
        value = float("nan") if loss is None else float(torch.as_tensor(loss).detach())
        self.trajectory.append(self.step, value, weights, recorded_buffers(self.model))
        self.step += 1


def _step(step, last: int) -> int:
    """``step`` as an int, after ``last``; refused with the fix otherwise."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step <= last:
        raise CrumpleError(
            f"step must be an integer after the last recorded step ({last}), got "
            f"{step!r}; pass the training loop's own step count"
        )
    return int(step)


def _read_snapshot(file: Path) -> tuple[Params, Params]:
    """A snapshot file's parameters and buffers (the metadata names the buffers)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        names = json.loads((f.metadata() or {}).get(BUFFERS, "[]"))
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    buffers = {n: tensors.pop(n) for n in names}
    return tensors, buffers


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
