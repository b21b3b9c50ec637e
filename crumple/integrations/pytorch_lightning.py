"""``LandscapeCallback`` for the standalone ``pytorch_lightning`` package, whose ``Trainer``
takes only its own ``Callback`` subclasses; the same as
:class:`crumple.integrations.lightning.LandscapeCallback` in every other way."""

from __future__ import annotations

from crumple.errors import require_extra
from crumple.integrations.lightning_hooks import LightningHooks

pl = require_extra("pytorch_lightning", "lightning")


class LandscapeCallback(LightningHooks, pl.Callback):
    """:class:`crumple.integrations.lightning.LandscapeCallback` for ``pytorch_lightning``.

    Example:
        >>> callback = LandscapeCallback(every=2)
        >>> isinstance(callback, pl.Callback), callback.trajectory
        (True, None)
    """
