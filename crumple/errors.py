"""crumple's error type and the helper for optional extras."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType


class CrumpleError(ValueError):
    """Raised for input crumple cannot use; the message says what was wrong and how to fix it."""


class CrumpleTypeError(CrumpleError, TypeError):
    """A :class:`CrumpleError` for an argument of the wrong type (also a ``TypeError``).

    Example:
        >>> issubclass(CrumpleTypeError, TypeError), issubclass(CrumpleTypeError, ValueError)
        (True, True)
    """


@contextlib.contextmanager
def user_code(where: str, **details: object) -> Iterator[None]:
    """A context in which an error from the user's own code (model, loss, data) passes
    through with a one-line note of where crumple called it: ``where.format(**details)``,
    formatted only when there is an error (this runs once per batch and point).

    Example:
        >>> try:
        ...     with user_code("the loss on batch {b}", b=0):
        ...         1 / 0
        ... except ZeroDivisionError as e:
        ...     print(e.__notes__)
        ["crumple: raised by the user's code, called for the loss on batch 0"]
    """
    try:
        yield
    except CrumpleError:
        raise
    except Exception as e:
        if hasattr(e, "add_note"):  # Python 3.11+
            e.add_note(f"crumple: raised by the user's code, called for {where.format(**details)}")
        raise


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
