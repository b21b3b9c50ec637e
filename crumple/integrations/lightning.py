"""``LandscapeCallback`` for Lightning (``lightning.pytorch``; the ``lightning`` extra)."""

from __future__ import annotations

from crumple.errors import require_extra
from crumple.integrations.lightning_hooks import LightningHooks

pl = require_extra("lightning.pytorch", "lightning")


class LandscapeCallback(LightningHooks, pl.Callback):
    """Record the weights as a Lightning ``Trainer`` trains (a :class:`crumple.Recorder`),
    and, when training ends, draw the loss landscape around the path they took.

    The weights are recorded when training starts, after every ``every``-th optimizer step
    and when training ends, each under the trainer's ``global_step``, with the loss that
    ``training_step`` returned for that step (under gradient accumulation, the mean over
    the step's micro-batches); on rank 0 only (``trainer.is_global_zero``).
    With ``landscape``, rank 0 then evaluates the loss on a PCA plane of the path (the
    final weights at its origin), on a grid that holds the projected path with room to
    spare, and writes the run folder and page that ``crumple surface`` writes
    (``landscape.zarr``, ``plane.safetensors``, ``landscape.html``; the other ranks go on
    to the end of ``fit`` without waiting for it).
    The module's weights, ``training`` and ``requires_grad`` flags are left as they were.
    Under ``strategy="ddp_spawn"`` rank 0 is a child process, whose copy of the callback
    holds the trajectory: stream it with ``to`` (checked on 2 CPU processes: rank 1
    records nothing, rank 0 writes the folder and the landscape).

    Checkpoints (``ModelCheckpoint``) keep the steps recorded, and the snapshots themselves
    when they are kept in memory, so ``trainer.fit(..., ckpt_path=...)`` goes on recording
    where the checkpoint was made, without the steps recorded after it; streamed to ``to``,
    the folder goes on (and checkpoints stay small).

    Args:
        every: record every ``every`` optimizer steps.
        to: a folder to stream the snapshots to, one safetensors file each
            (``crumple.Trajectory.load(to)`` reads them); ``None`` keeps them in memory.
        landscape: a folder for the landscape's run, ``True`` for
            ``trainer.default_root_dir/landscape``, or ``False`` (record only).
        loss_fn: the landscape's loss, ``loss_fn(pred, y)`` returning the batch mean, or
            ``"model"`` (the loss the model computes); needed with ``landscape``.
        data: the landscape's data (a DataLoader, batches or an ``(x, y)`` pair); by
            default the trainer's validation loader. On several devices that is rank 0's
            shard of it: pass the whole set here.
        module: the submodule to record and evaluate, by name (``"net"`` for
            ``self.net``); by default the LightningModule itself, called as ``module(x)``.
        plane: ``"pca"``, ``"random"`` (filter-normalized, Li et al. 2018) or a function
            ``(model, trajectory) -> crumple.Plane``.
        grid: ``None`` (the projected path's extent and 20% more on each side), ``"auto"``
            (:meth:`crumple.Grid.auto`, widened to hold the path) or a ``crumple.Grid``.
        num: grid points per axis when the grid is made here.
        curvature: a :class:`crumple.hessian.Tracking`, the curvature measured every few
            steps (its ``optimizer`` is the trainer's; without ``data``, the curvature
            is taken on each measured step's training batch); kept with the trajectory
            (``trajectory.sharpness()``), in checkpoints, and in the landscape's folder
            (``sharpness.zarr``, drawn on its page).
        **options: keywords of :func:`crumple.surface` (``metrics``, ``device``,
            ``dtype``, ``strategy``, ...).

    Attributes:
        trajectory: the recorded :class:`crumple.Trajectory`.
        run: the landscape written (:class:`crumple.report.Run`: ``surface``, ``paths``,
            ``page``), or ``None``.

    Example:
        >>> import torch
        >>> callback = LandscapeCallback(every=5, landscape="runs/landscape",
        ...                              loss_fn=torch.nn.functional.cross_entropy)
        >>> callback.state_key
        "LandscapeCallback{'every': 5, 'to': 'None'}"
    """
