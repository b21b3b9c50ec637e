"""crumple's error type and the helper for optional extras."""

from __future__ import annotations

import importlib
from types import ModuleType


class CrumpleError(ValueError):
    """Raised for input crumple cannot use; the message says what was wrong and how to fix it."""


def require_extra(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or say which crumple extra installs it.

    Example:
        >>> require_extra("math", "none").sqrt(4.0)
        2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{module!r} is needed for this and is not installed; "
            f"install it with: pip install 'crumple[{extra}]'"
        ) from e
