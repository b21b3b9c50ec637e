"""What the training callbacks share, whatever the framework: when to record (every n
optimizer steps, by the framework's global step, on the main process only), the
:class:`crumple.Recorder` that keeps the snapshots, taking up a trajectory again when
training resumes, and the landscape written when training ends."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from crumple.errors import CrumpleError, CrumpleTypeError
from crumple.files import written

PLANES = ("pca", "random")
MAX_NUM = 2000  # grid points per axis, as crumple surface allows


class Tracker:
    """The recording and the landscape of one training callback.

    Args: those of the callbacks (:class:`crumple.integrations.lightning.LandscapeCallback`).

    Example:
        >>> import torch
        >>> tracker = Tracker(every=2)
        >>> net = torch.nn.Linear(1, 1)
        >>> tracker.start(net, step=0, main=True)
        >>> for step in range(1, 6):
        ...     tracker.after_step(step, loss=1.0 / step)
        >>> tracker.finish(5)
        >>> tracker.trajectory.steps
        [0, 2, 4, 5]
    """

    def __init__(
        self,
        every: int = 1,
        to: str | Path | None = None,
        landscape: bool | str | Path = False,
        loss_fn: Callable | str | None = None,
        data: Any = None,
        plane: str | Callable = "pca",
        grid: Any = None,
        num: int = 25,
        options: Mapping[str, Any] | None = None,
        curvature=None,
    ) -> None:
        _check_arguments(every, to, landscape, loss_fn, plane, grid, num, dict(options or {}))
        self.curvature = _check_curvature(curvature)
        self.every, self.to, self.landscape = every, to, landscape
        self.loss_fn, self.data, self.plane, self.grid, self.num = loss_fn, data, plane, grid, num
        self.options = dict(options or {})
        self.recorder = None  # a crumple.Recorder, made when training starts on the main process
        self.saved: dict | None = None  # the state a checkpoint gave back, used at the start
        self.active = False
        self.last: tuple[int, Any] | None = None  # the latest step seen, and its loss
        self.run = None  # the crumple.report.Run written when training ended

    @property
    def trajectory(self):
        """The recorded :class:`crumple.Trajectory` (``None`` before training and on the
        processes other than the main one)."""
        return None if self.recorder is None else self.recorder.trajectory

    def folder(self, root: str | Path) -> Path | None:
        """Where the landscape is written: ``landscape`` itself, ``root/landscape`` for
        ``landscape=True`` (``root``: the framework's output folder), or ``None``."""
        if self.landscape is False:
            return None
        return Path(root, "landscape") if self.landscape is True else Path(self.landscape)

    def check_start(
        self, folder: Path | None, model, data: Any, has_data: bool, other_way: str
    ) -> None:
        """Refuse, before any training, a landscape that could not be written at its end:
        no data (``other_way`` says how the framework's own loader would reach the callback),
        a folder holding a resumable run, or a model and loss that fail on the first two
        samples of ``data`` (the data known now, read again only where it can be)."""
        if folder is None:
            return
        if not has_data:
            raise CrumpleError(
                "landscape=... needs data to evaluate the loss on, and data=None while the "
                f"trainer has no validation (evaluation) loader; pass data=your_loader, or "
                f"{other_way}"
            )
        if data is not None and iter(data) is not data:  # not a one-shot iterator
            from crumple.batches import load
            from crumple.specs import check_fit

            check_fit(model, self.loss_fn, load(data, stream=True))
        from crumple.run.store import RunStore

        run = RunStore.open(folder)
        if run is not None and "fingerprint" in run.attrs:
            raise CrumpleError(
                f"landscape={str(folder)!r} holds a resumable crumple surface run, which a "
                "callback never overwrites; give the callback another folder"
            )

    def start(self, model, step: int, main: bool, optimizer=None) -> None:
        """Training (re)starts at ``step``: on the main process, open the recorder (taking up
        a trajectory that a checkpoint or the ``to`` folder holds, without the steps after
        ``step``) and record the weights at ``step`` if they are due and not recorded. The
        ``optimizer`` gives the tracked curvature its stability threshold."""
        self.active = bool(main)
        if not self.active:
            return
        if self.curvature is not None and optimizer is not None:
            from crumple.hessian.tracking import check_optimizer

            self.curvature.optimizer = self.curvature.optimizer or check_optimizer(optimizer)
        if self.recorder is not None and step == 0 and self.recorder.trajectory.steps:
            if self.to is not None:  # training again from the start, with the same callback
                raise CrumpleError(
                    f"this callback recorded a run into to={str(self.to)!r} already, and "
                    "training starts again from step 0: give this run a new LandscapeCallback "
                    "with another to= folder"
                )
            self.recorder = None  # a new run in memory: a new trajectory
        if self.recorder is None:
            self.recorder = self._open(model, step)
        elif self.recorder.model is not model and self.curvature is not None:
            self.curvature.start(model, resume=True)  # its operator on this model
        self.recorder.model = model
        truncate(self.recorder.trajectory, step)
        if step % self.every == 0 and not self._recorded(step):
            self.recorder.record(step=step)
        self.last = (step, None)

    def after_step(self, step: int, loss: Any = None, batch: Any = None) -> None:
        """After an optimizer step: the global step is now ``step``. Records the weights when
        ``step`` is a multiple of ``every``, and the curvature when it is due (on ``batch``,
        the step's training batch, if it is tracked on those), once per step however often
        it is called."""
        if not self.active or self.last is not None and step <= self.last[0]:
            return
        self.last = (step, loss)  # read as a float only when recorded: no sync per step
        due = step % self.every == 0 and not self._recorded(step)
        if due or self.curvature is not None:
            self.recorder.record(loss=loss, step=step, batch=batch)

    def finish(self, step: int) -> None:
        """Training ended at ``step``: record the final weights if they are not recorded."""
        if self.active and not self._recorded(step):
            loss = self.last[1] if self.last is not None and self.last[0] == step else None
            self.recorder.finish(loss=loss, step=step)

    def _recorded(self, step: int) -> bool:
        steps = self.recorder.trajectory.steps
        return bool(steps) and steps[-1] >= step

    def _open(self, model, step: int):
        from crumple.trajectory import INDEX, Recorder, Trajectory

        saved = self.saved or {}
        curvature = {"curvature": self.curvature}
        if self.curvature is not None and saved.get("tracking"):
            self.curvature.load(saved["tracking"])  # its warm starts go on
        if self.to is not None and (Path(self.to) / INDEX).is_file() and (step > 0 or saved):
            # resumed: the folder's trajectory goes on
            return Recorder(model, trajectory=Trajectory.load(self.to), **curvature)
        if self.to is None and saved.get("weights") is not None:
            # resumed from a checkpoint that holds the snapshots (and their buffers)
            kept = [saved[key] for key in ("steps", "weights", "losses")]
            trajectory = Trajectory(
                *kept, buffers=saved.get("buffers"), curvature=saved.get("curvature")
            )
            return Recorder(model, trajectory=trajectory, **curvature)
        return Recorder(model, to=self.to, step=step, **curvature)  # keeps the weights at step

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the steps and losses recorded, and the snapshots
        themselves when they are kept in memory (tensors, lists and numbers only, so a
        checkpoint is read with ``weights_only=True``)."""
        t = self.trajectory
        if t is None:
            return {}
        weights = None if t.weights is None else [dict(w) for w in t.weights]
        buffers = None if t.buffers is None else [dict(b) for b in t.buffers]
        folder = None if t.folder is None else str(t.folder)
        tracking = None if self.curvature is None else self.curvature.state()
        return {
            "steps": list(t.steps),
            "losses": list(t.losses),
            "weights": weights,
            "buffers": buffers,
            "to": folder,
            "curvature": None if t.folder is not None else [dict(r) for r in t.curvature],
            "tracking": tracking,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        """Keep a checkpoint's :meth:`state` for the start of training."""
        self.saved = dict(state) if state else None

    def write_landscape(self, model, data, folder: Path):
        """The landscape at the end of training: the plane (PCA of the trajectory by
        default), the path projected onto it, a grid that holds it, and the run folder and
        page (:func:`crumple.report.write_run`). ``None`` (with a warning) when the trajectory
        is too short for a PCA plane."""
        if not self.active:
            return None
        from crumple import report
        from crumple.landscape import Landscape

        trajectory = self.trajectory
        if self.plane == "pca" and len(trajectory) < 3:
            warnings.warn(
                f"crumple: no landscape: a PCA plane needs 3 recorded steps, the trajectory "
                f"has {len(trajectory)} (steps {trajectory.steps}); record more often "
                "(every=...) or train longer",
                stacklevel=2,
            )
            return None
        options = {"progress": False, **self.options}
        weight = next(model.parameters(), None)
        if weight is not None:
            options.setdefault("device", str(weight.device))
        plane = _plane(self.plane, model, trajectory)
        landscape = Landscape(model, self.loss_fn, data, **options)  # the data read once
        path = landscape.project(trajectory, plane)
        grid = report.choose_grid(self.grid, landscape, plane, {"path": path}, num=self.num)
        self.run = report.write_run(
            folder, landscape, plane, grid, paths={"path": path}, sharpness=trajectory.sharpness()
        )
        return self.run


def _plane(kind: str | Callable, model, trajectory):
    import crumple as cr

    if kind == "pca":
        return cr.Plane.pca(trajectory)
    if kind == "random":
        return cr.Plane.random(model, normalize="filter", ignore="biasbn", seed=0)
    plane = kind(model, trajectory)
    if not isinstance(plane, cr.Plane):
        raise CrumpleTypeError(
            f"plane={kind!r} returned {type(plane).__name__}, not a crumple.Plane; return "
            "e.g. cr.Plane.random(model)"
        )
    return plane


def truncate(trajectory, step: int) -> None:
    """Drop the snapshots after ``step`` (a run taken up again from an earlier checkpoint
    redoes them), from memory or from the trajectory's folder.

    Example:
        >>> import torch
        >>> from crumple.trajectory import Trajectory
        >>> t = Trajectory([0, 2, 4], [{"w": torch.zeros(1)}] * 3, [1.0, 0.5, 0.2])
        >>> truncate(t, 3); t.steps, t.losses
        ([0, 2], [1.0, 0.5])
    """
    from crumple.history import index_row, row_text
    from crumple.names import CURVATURE_ROWS
    from crumple.trajectory import INDEX

    measured = [row for row in trajectory.curvature if row["step"] <= step]
    if len(measured) < len(trajectory.curvature):  # the curvature measured after step
        trajectory.curvature[:] = measured
        if trajectory.folder is not None:
            with written(trajectory.folder / CURVATURE_ROWS) as temporary:
                temporary.write_text("".join(map(row_text, measured)))
    keep = sum(1 for s in trajectory.steps if s <= step)
    dropped = trajectory.steps[keep:]
    if not dropped:
        return
    del trajectory.steps[keep:], trajectory.losses[keep:]
    if trajectory.weights is not None:
        del trajectory.weights[keep:], trajectory.buffers[keep:]
        return
    rows = map(index_row, trajectory.steps, trajectory.losses)
    with written(trajectory.folder / INDEX) as temporary:
        temporary.write_text("".join(rows))
    for s in dropped:
        trajectory._file(s).unlink(missing_ok=True)


def _check_curvature(curvature):
    """``curvature`` if it is a :class:`crumple.hessian.Tracking` (or ``None``)."""
    if curvature is None:
        return None
    from crumple.hessian.tracking import Tracking

    if not isinstance(curvature, Tracking):
        raise CrumpleTypeError(
            f"curvature must be a crumple.hessian.Tracking, e.g. Tracking(loss_fn, data, "
            f"every=50), got {type(curvature).__name__}"
        )
    return curvature


def _check_arguments(every, to, landscape, loss_fn, plane, grid, num, options) -> None:
    """Refuse, when the callback is made, what would fail later in training."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise CrumpleError(f"every must be a positive number of optimizer steps, got {every!r}")
    if to is not None and not isinstance(to, (str, Path)):
        raise CrumpleTypeError(f"to must be a folder (str or Path) or None, got {to!r}")
    if not isinstance(landscape, (bool, str, Path)):
        raise CrumpleTypeError(
            f"landscape must be True, False or a folder to write the run to, got {landscape!r}"
        )
    for name, folder in (("to", to), ("landscape", landscape)):
        if isinstance(folder, (str, Path)) and Path(folder).exists() and not Path(folder).is_dir():
            raise CrumpleError(
                f"{name}={str(folder)!r} is a file, and {name}= names a folder to write into; "
                "give a folder that does not exist yet or holds a crumple run"
            )
    if landscape is not False and not (callable(loss_fn) or loss_fn == "model"):
        raise CrumpleError(
            f"loss_fn={loss_fn!r}: the landscape needs the loss, as loss_fn(pred, y) returning "
            "the batch mean (e.g. torch.nn.functional.cross_entropy) or 'model' (the loss the "
            "model computes, e.g. a Hugging Face model given labels)"
        )
    if not (plane in PLANES or callable(plane)):
        raise CrumpleError(
            f"plane must be one of {', '.join(PLANES)} or a function (model, trajectory) -> "
            f"crumple.Plane, got {plane!r}"
        )
    from crumple.grid import Grid

    if not (grid is None or isinstance(grid, Grid) or isinstance(grid, str) and grid == "auto"):
        raise CrumpleError(
            f"grid must be None (around the path), 'auto' (Grid.auto, widened to the path) or "
            f"a crumple.Grid, got {grid!r}"
        )
    if isinstance(grid, Grid) and len(grid.axes) != 2 and plane in PLANES:
        raise CrumpleError(
            f"grid={grid!r} has one axis, and the {plane} plane two: give crumple.Grid(alpha, beta)"
        )
    if isinstance(num, bool) or not isinstance(num, int) or not 2 <= num <= MAX_NUM:
        raise CrumpleError(
            f"num must be a number of grid points per axis from 2 to {MAX_NUM}, got {num!r}"
        )
    if "store" in options:
        raise CrumpleError(
            "store= is not an option of the callback: the landscape is written to the folder "
            "landscape=... names"
        )
    from crumple.landscape import Options

    parsed = Options.parse(**options)  # refused now, not when training ends
    if landscape is not False:
        from crumple.checks import named_functions

        named_functions(loss_fn, parsed.metrics)
