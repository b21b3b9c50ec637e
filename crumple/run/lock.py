"""One writer per run folder. Every writer of a run folder (``cr.surface(store=...)``,
``crumple surface``, ``crumple hessian``, ``crumple demo``, the training callbacks,
``save_run``, ``save_hessian``, ``save_spread``) holds :func:`writer` while it reads the
folder's state and writes, so a second writer is refused at once, before it reads or touches
anything. Readers (``open_run``, ``crumple info``, ``plot``, ``export``) take no lock.

The lock is ``fcntl.flock`` on the folder's ``crumple.lock``, which the kernel frees when
the process ends, however it ends: a writer killed with SIGKILL leaves no stale lock, only its
name in the file, and the next writer takes over with a note. The file stays, empty, when its
writer ends, except in a folder the writer made and wrote nothing to, which is removed again.
Where there is no ``fcntl`` (Windows) the holder is written down but a second writer is not
refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO

from crumple.errors import CrumpleError
from crumple.files import write_error
from crumple.names import LOCK

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

WAIT = 2.0  # seconds a refused writer waits for the holder to write its name
_HELD: dict[Path, int] = {}  # the folders this process holds: resolved folder -> thread id


@contextlib.contextmanager
def writer(folder: str | Path | None) -> Iterator[None]:
    """Hold the run folder ``folder`` (made if missing) for this process as its one writer,
    or raise a :class:`CrumpleError` naming the process that holds it. Nested writers of the
    same folder in one thread (the CLI, then ``cr.surface`` inside it) share the outer one's
    lock; ``folder=None`` (no run folder) holds nothing. A folder made here in which nothing
    was written (a run refused for its inputs) is removed again.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with writer(folder):
        ...     with writer(folder):  # nested: the same writer
        ...         holder(folder)["pid"] == os.getpid()
        True
        >>> holder(folder) is None  # released
        True
    """
    if folder is None:
        yield
        return
    path = Path(folder)
    made = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    key = make_folder(path).resolve()
    if _HELD.get(key) == threading.get_ident():
        yield  # the outer writer releases it
        return
    file = _acquire(path)
    _HELD[key] = threading.get_ident()
    try:
        yield
    finally:
        del _HELD[key]
        _release(file, path / LOCK, made)


def holder(folder: str | Path) -> dict | None:
    """Who holds ``folder`` (``pid``, ``host``, ``since``), or ``None`` if no writer holds
    it or the folder has no lock file. A writer that died holding it is still named here
    until the next writer takes over.

    Example:
        >>> holder("no/such/run") is None
        True
    """
    try:
        with open(Path(folder) / LOCK, encoding="utf-8") as file:
            return _named(file)
    except OSError:
        return None


def make_folder(folder: str | Path) -> Path:
    """``folder`` as a Path, made if missing; a :class:`CrumpleError` if it is a file or
    cannot be made or written to.

    Example:
        >>> import tempfile
        >>> make_folder(f"{tempfile.mkdtemp()}/a/b").is_dir()
        True
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise CrumpleError(
            f"store {str(folder)!r} is a file, not a folder; give a folder for the run "
            "(it is made if missing)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CrumpleError(
            f"cannot make the run folder {str(folder)!r} ({e.strerror or e}); choose a folder "
            "you can write to"
        ) from None
    if not os.access(path, os.W_OK):
        raise CrumpleError(f"cannot write to the run folder {str(folder)!r}; choose another")
    return path


def _acquire(folder: Path) -> IO[str]:
    """The open lock file of ``folder``, locked and naming this process. A holder that has
    not yet written its name is waited for (``WAIT``), so that the refusal can name it; a
    lock file removed by its holder as this one locked it (:func:`_release`) is made again."""
    path = folder / LOCK
    deadline = time.monotonic() + WAIT
    while True:
        make_folder(folder)
        try:
            file = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+", encoding="utf-8")
        except OSError as e:
            raise write_error(path, e) from e
        if _locked(file.fileno()):
            if _is_at(file, path):
                break
            file.close()  # removed meanwhile: lock the new one
            continue
        other = _named(file)
        file.close()
        if other is not None or time.monotonic() > deadline:
            raise CrumpleError(
                f"the run folder {str(folder)!r} is being written by {_describe(other)}; "
                "wait for it to finish or write to another folder"
            )
        time.sleep(0.01)
    file.folder = os.open(folder, os.O_RDONLY)  # locked too: removing crumple.lock lets no one in
    if not _locked(file.folder):
        os.close(file.folder)
        file.close()
        raise CrumpleError(
            f"the run folder {str(folder)!r} is being written by another process (its {LOCK} "
            "was removed while it held it); wait for it to finish or write to another folder"
        )
    earlier = _named(file)
    if earlier is not None:
        print(
            f"crumple: {str(folder)!r} was left locked by {_describe(earlier)}, which ended "
            "without releasing it; its lock is taken over",
            file=sys.stderr,
        )
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
    try:
        _rewrite(file, json.dumps(me))
    except OSError as e:  # disk full: unlocked as it closes
        file.close()
        os.close(file.folder)
        raise write_error(path, e) from e
    return file


def _release(file: IO[str], path: Path, made: list[Path]) -> None:
    """Empty the lock file (no holder), then unlock it. The file stays, unless the writer
    made the folder (and the folders ``made`` above it) and wrote nothing there: then none
    of them is left."""
    try:
        _rewrite(file, "")
        with contextlib.suppress(OSError):
            if made and [p.name for p in path.parent.iterdir()] == [LOCK]:
                path.unlink()
                for folder in made:
                    folder.rmdir()
    finally:
        if fcntl is not None:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
        file.close()
        os.close(file.folder)  # and the folder's lock with it


def _locked(fd: int) -> bool:
    """Whether this process now holds the lock of the open file or folder ``fd`` (``False``:
    another one does)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_at(file: IO[str], path: Path) -> bool:
    """Whether the open ``file`` is still the file at ``path``."""
    try:
        return os.path.samestat(os.fstat(file.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _named(file: IO[str]) -> dict | None:
    """The holder the lock file names, or ``None`` if it names none (empty: released)."""
    file.seek(0)
    try:
        named = json.loads(file.read() or "null")
    except ValueError:
        return None
    return named if isinstance(named, dict) and "pid" in named else None


def _rewrite(file: IO[str], text: str) -> None:
    file.seek(0)
    file.truncate()
    file.write(text)
    file.flush()


def _describe(named: dict | None) -> str:
    if named is None:
        return f"another process (its {LOCK} names none yet)"
    return f"process {named['pid']} on host {named.get('host')} since {named.get('since')}"


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
