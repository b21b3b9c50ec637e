"""``LandscapeCallback`` for the Hugging Face ``Trainer`` (the ``hf`` extra)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from crumple.errors import CrumpleError, require_extra
from crumple.integrations.tracking import Tracker

transformers = require_extra("transformers", "hf")


class LandscapeCallback(transformers.TrainerCallback):
    """Record the weights as a Hugging Face ``Trainer`` trains (a :class:`crumple.Recorder`),
    and, when training ends, draw the loss landscape around the path they took.

    The weights are recorded when training starts, after every ``every``-th optimizer step
    and when training ends, each under ``state.global_step``, on the main process only
    (``state.is_world_process_zero``). The ``Trainer`` does not hand callbacks the loss of
    a step: the loss kept beside a snapshot is the training loss the ``Trainer`` logs at
    that step (its mean since the previous log: the step's own with ``logging_steps=1``),
    and nan at a step it does not log. With ``landscape``, the main process then evaluates
    the model's own loss (``loss_fn="model"``: the mean over the target tokens of a language
    model) on a PCA plane of the path (the final weights at its origin), on a grid that
    holds the projected path with room to spare, and writes the run folder and page that
    ``crumple surface`` writes. The model's weights, ``training`` and ``requires_grad``
    flags are left as they were. With ``load_best_model_at_end``, the weights at the end
    are the best checkpoint's, not the last step's, so they are not recorded then.

    The landscape's loss is the mean over all target tokens of the data, not the
    ``Trainer``'s ``eval_loss``: the ``Trainer`` (transformers 5) divides each batch's summed
    loss by its labels counted before a causal LM's shift and averages the batches by their
    number of sequences, so for unpadded sequences of ``L`` tokens its ``eval_loss`` is
    ``(L - 1) / L`` of crumple's, and padded ones of unequal length differ more.

    Resuming (``trainer.train(resume_from_checkpoint=...)``) goes on recording from the
    checkpoint's step: into the ``to`` folder (dropping the steps recorded after the
    checkpoint), or, in memory, in the same callback object.

    Args:
        every: record every ``every`` optimizer steps.
        to: a folder to stream the snapshots to, one safetensors file each
            (``crumple.Trajectory.load(to)`` reads them); ``None`` keeps them in memory.
        landscape: a folder for the landscape's run, ``True`` for
            ``args.output_dir/landscape``, or ``False`` (record only).
        loss_fn: ``"model"`` (the loss the model computes from the batches' ``labels``) or
            ``loss_fn(pred, y)`` returning the batch mean.
        data: the landscape's data: a DataLoader or batches of dicts; by default the eval
            loader the ``Trainer`` used (it hands it to callbacks once it has evaluated:
            set ``eval_strategy``, or pass ``data=trainer.get_eval_dataloader()``). On
            several devices that is the main process's shard: pass the whole set here.
        plane: ``"pca"``, ``"random"`` (filter-normalized, Li et al. 2018) or a function
            ``(model, trajectory) -> crumple.Plane``.
        grid: ``None`` (the projected path's extent and 20% more on each side), ``"auto"``
            (:meth:`crumple.Grid.auto`, widened to hold the path) or a ``crumple.Grid``.
        num: grid points per axis when the grid is made here.
        curvature: a :class:`crumple.hessian.Tracking`, the curvature measured every few
            steps (its ``optimizer`` is the Trainer's; it needs ``data``: the Trainer
            hands callbacks no training batch); kept with the trajectory
            (``trajectory.sharpness()``), in checkpoints, and in the landscape's folder
            (``sharpness.zarr``, drawn on its page).
        **options: keywords of :func:`crumple.surface` (``metrics``, ``device``,
            ``dtype``, ``strategy``, ...).

    Attributes:
        trajectory: the recorded :class:`crumple.Trajectory`.
        run: the landscape written (:class:`crumple.report.Run`: ``surface``, ``paths``,
            ``page``), or ``None``.

    Example:
        >>> callback = LandscapeCallback(every=10, landscape="runs/lm-landscape")
        >>> callback.trajectory is None, callback.run is None
        (True, True)
    """

    def __init__(
        self,
        every: int = 1,
        to: str | Path | None = None,
        *,
        landscape: bool | str | Path = False,
        loss_fn: Callable | str = "model",
        data: Any = None,
        plane: str | Callable = "pca",
        grid: Any = None,
        num: int = 25,
        curvature=None,
        **options: Any,
    ) -> None:
        self.tracker = Tracker(
            every, to, landscape, loss_fn, data, plane, grid, num, options, curvature
        )
        if curvature is not None and curvature.data is None:
            raise CrumpleError(
                "curvature=Tracking(loss_fn) without data tracks the training batch, which "
                "the Hugging Face Trainer does not hand to callbacks; give it the data to "
                "measure on: Tracking(loss_fn, data=loader)"
            )
        self.pending: int | None = None  # a step due, recorded when the Trainer logs its loss

    @property
    def trajectory(self):
        """The recorded :class:`crumple.Trajectory` (``None`` before training and on the
        processes other than the main one)."""
        return self.tracker.trajectory

    @property
    def run(self):
        """The landscape written when training ended (:class:`crumple.report.Run`), or ``None``."""
        return self.tracker.run

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.pending = None
        if state.is_world_process_zero:
            has_data = self.tracker.data is not None or args.eval_strategy != "no"
            self.tracker.check_start(
                self.tracker.folder(args.output_dir),
                model,
                self.tracker.data,
                has_data,
                "give the Trainer an eval_dataset and TrainingArguments(eval_strategy='steps' or "
                "'epoch'): it hands callbacks its eval loader only once it has evaluated",
            )
        self.tracker.start(model, state.global_step, state.is_world_process_zero, optimizer)

    def on_step_begin(self, args, state, control, **kwargs):
        self._flush()

    def on_step_end(self, args, state, control, **kwargs):
        self._flush()
        step = state.global_step
        curvature = self.tracker.curvature
        due = step % self.tracker.every == 0 or curvature and step % curvature.every == 0
        if due and control.should_log:
            self.pending = step  # the Trainer logs this step's loss next, before any change
        else:
            self.tracker.after_step(step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._flush((logs or {}).get("loss"))

    def on_save(self, args, state, control, **kwargs):
        self._flush()

    def on_train_end(self, args, state, control, model=None, eval_dataloader=None, **kwargs):
        self._flush()
        if not args.load_best_model_at_end:  # else the model holds the best checkpoint's
            self.tracker.finish(state.global_step)  # weights, not the last step's
        folder = self.tracker.folder(args.output_dir)
        if folder is None or not state.is_world_process_zero:
            return
        data = self.tracker.data if self.tracker.data is not None else eval_dataloader
        if data is None:
            raise CrumpleError(
                "the landscape needs data, and the Trainer has not evaluated, so it has no "
                "eval loader to hand over; pass LandscapeCallback(..., data="
                "trainer.get_eval_dataloader()) or set eval_strategy"
            )
        self.tracker.write_landscape(model, data, folder)

    def _flush(self, loss: Any = None) -> None:
        if self.pending is not None:
            step, self.pending = self.pending, None
            self.tracker.after_step(step, loss)
