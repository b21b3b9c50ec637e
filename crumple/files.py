"""Files crumple writes with the permissions any program of the user's would give them."""

from __future__ import annotations

import os
from pathlib import Path


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
