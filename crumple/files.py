"""Files crumple writes: whole or not at all (written to a temporary name beside, then
renamed), with the permissions any program of the user's would give them, and a write that
fails (disk full, no permission) as a :class:`CrumpleError` naming the file."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from crumple.errors import CrumpleError

# what an OSError's errno says about the folder, and how to fix it
_FULL = "the disk is full, or a limit on file size such as ulimit -f, or a quota, was reached"
_FREE = "free some space or raise the limit, or write to another folder"
_NOT_FOLDER = "a part of its folder's path is a file, not a folder"
_CAUSES = {
    errno.ENOSPC: (_FULL, _FREE),
    errno.EFBIG: (_FULL, _FREE),
    errno.EDQUOT: (_FULL, _FREE),
    None: (f"written in part: {_FULL}", _FREE),  # a short write, as numpy's tofile reports it
    errno.EACCES: ("no permission to write there", "write to a folder you may write to"),
    errno.EPERM: ("no permission to write there", "write to a folder you may write to"),
    errno.EROFS: ("the file system is read-only", "write to a folder on a writable disk"),
    errno.ENOTDIR: (_NOT_FOLDER, "give a file name inside a folder"),
    errno.EEXIST: (_NOT_FOLDER, "give a file name inside a folder"),  # from making the folder
    errno.EISDIR: ("a folder has that name", "give another file name, or remove the folder"),
}


def save_tensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> Path:
    """``safetensors.torch.save_file`` through :func:`written`: the file whole or not at
    all, its mode ``0o666`` less the umask (safetensors writes ``0o600``, while zarr and the
    pages follow the umask).

    Example:
        >>> import tempfile, torch
        >>> path = save_tensors({"w": torch.zeros(2)}, f"{tempfile.mkdtemp()}/w.safetensors")
        >>> oct(path.stat().st_mode & 0o777) == oct(0o666 & ~umask())
        True
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    with written(path) as temporary:
        try:
            save_file(tensors, str(temporary), metadata=metadata)
        except SafetensorError as e:  # its I/O errors end "(os error 27)": an OSError here
            found = re.search(r"I/O error: .*\(os error (\d+)\)", str(e))
            if found is None:
                raise
            raise OSError(int(found[1]), os.strerror(int(found[1]))) from e
    return path


@contextlib.contextmanager
def written(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to (hidden, with the process id and a random
    part, and ``path``'s suffix, for libraries that pick a format by it); renamed to ``path``
    when the block ends without error, so ``path`` holds a whole file or, as before, what it
    held. On an error the temporary file is removed, and an :class:`OSError` (disk full,
    ``ulimit -f``, no permission, read-only...) becomes a :class:`CrumpleError` naming
    ``path``. Folders are made; the file gets ``0o666`` less the umask, as any program's.

    Example:
        >>> import tempfile
        >>> with written(f"{tempfile.mkdtemp()}/sub/page.html") as temporary:
        ...     _ = temporary.write_text("<html></html>")
        >>> temporary.exists(), temporary.with_name("page.html").read_text()
        (False, '<html></html>')
    """
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        temporary.chmod(0o666 & ~umask())
        os.replace(temporary, path)
    except OSError as e:
        raise write_error(path, e, "an earlier file of that name is left as it was") from e
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def write_error(path: str | Path, error: OSError, note: str = "") -> CrumpleError:
    """The :class:`CrumpleError` for ``error`` met writing ``path``: the file, the cause, the
    fix, and ``note`` (what became of the file) if given.

    Example:
        >>> error = write_error("run/x.nc", OSError(errno.EFBIG, "File too large"))
        >>> print(error)  # doctest: +ELLIPSIS
        could not write 'run/x.nc': [Errno 27] File too large (the disk is full, ...); free some ...
    """
    cause, fix = _CAUSES.get(
        error.errno, ("", "check that its folder exists and can be written, or write elsewhere")
    )
    said = f" ({cause})" if cause else ""
    noted = f" ({note})" if note else ""
    message = f"could not write {str(path)!r}: {error}{said}; {fix}, then run again"
    return CrumpleError(message + noted)


def append_text(path: str | Path, text: str, new: bool = False) -> None:
    """Append ``text`` to the file ``path`` (made, with its folders, if missing; with
    ``new``, made here or a :class:`FileExistsError`, so two writers cannot both start it); any
    other :class:`OSError` becomes a :class:`CrumpleError` naming the file (:func:`write_error`).

    Example:
        >>> import tempfile
        >>> file = f"{tempfile.mkdtemp()}/index.jsonl"
        >>> append_text(file, "a\\n"); append_text(file, "b\\n"); open(file).read()
        'a\\nb\\n'
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x" if new else "a", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError as e:
        if new and Path(path).is_file():  # the file itself, made before: the caller says why
            raise
        raise write_error(path, e) from e  # a part of its folder is a file
    except OSError as e:
        raise write_error(path, e) from e


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


def inside(folder: str | Path, name: object, index: str | Path) -> Path:
    """``folder / name``, the file ``index`` names by ``name``, once it is known to lie inside
    ``folder`` after resolving ``..`` and symbolic links; else a :class:`CrumpleError` naming
    ``index``. An index (a trajectory's, a Hugging Face shard index) then never makes crumple
    read a file outside the folder it describes.

    Example:
        >>> inside("model", "shard-1.safetensors", "model/index.json").as_posix()
        'model/shard-1.safetensors'
        >>> inside("model", "../outside/x.safetensors", "model/index.json")
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: 'model/index.json' names '../outside/x.safetensors', ...
    """
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        raise CrumpleError(
            f"{str(index)!r} names {name!r} where a file name belongs; the index is damaged: "
            "write it again (or restore it) so that it names the files beside it"
        )
    path = Path(folder) / name
    if Path(name).is_absolute() or not path.resolve().is_relative_to(Path(folder).resolve()):
        plain = Path(name).is_absolute() or os.path.normpath(name).startswith("..")
        link = "" if plain else " through a symbolic link"
        raise CrumpleError(
            f"{str(index)!r} names {name!r}, which lies outside {str(folder)!r}{link}, and "
            "crumple reads only the files inside the folder an index describes: move the file "
            "into that folder and name it relative to it"
        )
    return path
