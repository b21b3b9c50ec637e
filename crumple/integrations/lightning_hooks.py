"""The hooks of the Lightning callback, written once for both packages that hold Lightning's
``Trainer`` (``lightning.pytorch`` and the older ``pytorch_lightning``), whose ``Callback``
classes differ. Nothing here imports either.

Lightning's non-public API relied on (a change breaks tests/test_lightning.py):
``trainer.fit_loop.epoch_loop.val_loop._data_source`` (``.dataloader()``,
``.is_defined()``), where the validation loader is found before the validation loop has run
(or when it never runs: a module without ``validation_step``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from crumple.errors import CrumpleError
from crumple.integrations.tracking import Tracker


class LightningHooks:
    """The recording and landscape hooks of a Lightning ``LandscapeCallback`` (see
    :class:`crumple.integrations.lightning.LandscapeCallback`)."""

    def __init__(
        self,
        every: int = 1,
        to: str | Path | None = None,
        *,
        landscape: bool | str | Path = False,
        loss_fn: Callable | str | None = None,
        data: Any = None,
        module: str | None = None,
        plane: str | Callable = "pca",
        grid: Any = None,
        num: int = 25,
        curvature=None,
        **options: Any,
    ) -> None:
        super().__init__()
        if module is not None and not isinstance(module, str):
            raise CrumpleError(
                f"module must be the name of a submodule of the LightningModule (e.g. 'net'), "
                f"or None for the LightningModule itself, got {module!r}"
            )
        self.tracker = Tracker(
            every, to, landscape, loss_fn, data, plane, grid, num, options, curvature
        )
        self.module = module
        self.window: list[Tensor] = []  # the losses of the micro-batches of one optimizer step

    @property
    def trajectory(self):
        """The recorded :class:`crumple.Trajectory` (``None`` before training and on ranks
        other than 0)."""
        return self.tracker.trajectory

    @property
    def run(self):
        """The landscape written when training ended (:class:`crumple.report.Run`), or ``None``."""
        return self.tracker.run

    @property
    def every(self) -> int:
        """Record every this many optimizer steps."""
        return self.tracker.every

    @property
    def to(self) -> str | Path | None:
        """The folder the snapshots stream to (``None``: in memory)."""
        return self.tracker.to

    @property
    def state_key(self) -> str:
        return f"{type(self).__qualname__}{{'every': {self.every}, 'to': {str(self.to)!r}}}"

    def on_train_start(self, trainer, pl_module) -> None:
        model = self._model(pl_module)
        if trainer.is_global_zero:
            self.tracker.check_start(
                self.tracker.folder(trainer.default_root_dir),
                model,
                self.tracker.data,
                self._has_data(trainer),
                "give trainer.fit(..., val_dataloaders=...) or a datamodule with val_dataloader",
            )
        optimizers = getattr(trainer, "optimizers", None) or []
        optimizer = optimizers[0] if len(optimizers) == 1 else None  # the threshold's
        self.tracker.start(model, trainer.global_step, trainer.is_global_zero, optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(outputs, Mapping):
            outputs = outputs.get("loss")
        if isinstance(outputs, Tensor):  # Lightning divides it by accumulate_grad_batches
            self.window.append(outputs.detach() * trainer.accumulate_grad_batches)
        last = self.tracker.last
        if last is None or trainer.global_step > last[0]:  # this micro-batch ended a step
            loss = torch.stack(self.window).mean() if self.window else None
            self.window = []
            self.tracker.after_step(trainer.global_step, loss, batch)

    def on_train_end(self, trainer, pl_module) -> None:
        self.tracker.finish(trainer.global_step)
        folder = self.tracker.folder(trainer.default_root_dir)
        if folder is not None and trainer.is_global_zero:
            data = self.tracker.data if self.tracker.data is not None else _val_loader(trainer)
            self.tracker.write_landscape(self._model(pl_module), data, folder)

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load(state_dict)

    def _model(self, pl_module) -> nn.Module:
        if self.module is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.module)
        except AttributeError as e:
            names = [n for n, _ in pl_module.named_children()]
            raise CrumpleError(
                f"module={self.module!r}: the LightningModule has no such submodule; its "
                f"children are {names}"
            ) from e

    def _has_data(self, trainer) -> bool:
        if self.tracker.data is not None or trainer.val_dataloaders is not None:
            return True
        source = _val_source(trainer)
        return source is None or source.is_defined()  # unknown: found (or not) at the end


def _val_loader(trainer) -> Any:
    """The trainer's validation loader, from its loop or, before that ran, its source."""
    loaders = trainer.val_dataloaders
    source = _val_source(trainer)
    if loaders is None and source is not None and source.is_defined():
        loaders = source.dataloader()
    if isinstance(loaders, (list, tuple)) and len(loaders) == 1:
        loaders = loaders[0]
    if loaders is None or isinstance(loaders, (list, tuple, dict)):
        raise CrumpleError(
            f"the landscape needs one validation loader, and the trainer has {loaders!r}; "
            "pass LandscapeCallback(..., data=loader)"
        )
    return loaders


def _val_source(trainer) -> Any:
    """Where the trainer takes its validation loader from (``None`` if not found)."""
    loop = getattr(
        getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "val_loop", None
    )
    return getattr(loop, "_data_source", None)
