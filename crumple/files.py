"""Files crumple writes with the permissions any program of the user's would give them."""

from __future__ import annotations

import os
from pathlib import Path

from crumple.errors import CrumpleError


def save_tensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> Path:
    """``safetensors.torch.save_file``, then the file's mode set to ``0o666`` less the
    umask (safetensors writes ``0o600``, while zarr and the pages follow the umask).

    Example:
        >>> import tempfile, torch
        >>> path = save_tensors({"w": torch.zeros(2)}, f"{tempfile.mkdtemp()}/w.safetensors")
        >>> oct(path.stat().st_mode & 0o777) == oct(0o666 & ~umask())
        True
    """
    from safetensors.torch import save_file

    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    path.chmod(0o666 & ~umask())
    return path


def umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def suffixed_path(path: object, option: str, allowed: tuple[str, ...], example: str) -> Path:
    """``path`` as a Path if it is a file name (not a folder) whose suffix is one of
    ``allowed`` (any case), else a :class:`CrumpleError` naming ``option`` and the fix.

    Example:
        >>> suffixed_path("fig.PNG", "--png", (".png",), "surface.png").name
        'fig.PNG'
        >>> try:
        ...     suffixed_path("x.png", "--pdf", (".pdf",), "surface.pdf")
        ... except CrumpleError as e:
        ...     print(e)
        --pdf='x.png' ends in '.png', not .pdf; give a file name ending in .pdf, e.g. 'x.pdf'
    """
    if not isinstance(path, (str, os.PathLike)):
        raise CrumpleError(f"{option}={path!r} is not a file name; give one such as {example!r}")
    p = Path(path)
    if p.suffix.lower() in allowed:
        if p.is_dir():
            raise CrumpleError(f"{option}={str(path)!r} is a folder; give a file name in it")
        return p
    given = f"ends in {p.suffix!r}, not" if p.suffix else "has no suffix; the format follows it:"
    choices = " or ".join(allowed)
    fix = f", e.g. {str(p.with_suffix(allowed[0]))!r}" if p.name else ""
    raise CrumpleError(
        f"{option}={str(path)!r} {given} {choices}; give a file name ending in {choices}{fix}"
    )
