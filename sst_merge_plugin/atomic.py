"""Safe outputs: atomic files and folders, and cached entries made once under a lock.

* :func:`atomic_path` / :func:`write_text` — write to a temporary sibling, then ``os.replace``
  it into place. A failure (an exception, Ctrl-C, a full disk) therefore never leaves a
  half-written file or directory under the final name; the temporary is removed. Used for
  Fisher files, reports, results tables and plots. :func:`check_writable` checks an output
  path before the work that produces it starts.
* :func:`entry_lock` / :func:`make_once` — an exclusive ``fcntl.flock`` on a lock file next to
  a cached entry (``.<name>.lock``), held while the entry is checked and, if missing, made. A
  second process (a concurrent benchmark run on the same workspace, a FusionBench run on the
  same Fisher cache) waits and then reuses the first one's entry instead of making it again.
  The operating system releases the lock when its holder dies, so a killed run never blocks
  the next one; the lock file is removed by the holder on release (a killed holder leaves it
  behind, harmlessly). POSIX only (``fcntl``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from sst_merge_plugin.core.errors import SSTError

log = logging.getLogger(__name__)


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


#: the process umask, read once at import (``os.umask`` can only be read by setting it, which
#: is not thread-safe)
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    With ``directory=True`` the temporary is an (empty, existing) directory and an existing
    directory at ``path`` is replaced; otherwise the caller creates the temporary file. Parent
    directories of ``path`` are created.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    if directory:
        temporary = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, dir=final.parent)
        os.close(handle)
        temporary = Path(name)
    try:
        yield temporary
        _default_permissions(temporary, directory)
        if directory and final.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            old.rmdir()
            final.rename(old)
            temporary.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, final)
    except BaseException:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        raise


def _default_permissions(path: Path, directory: bool) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have (mkstemp/mkdtemp use 0600/0700)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def entry_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive lock of the cached entry ``path`` (module doc); blocks while another
    process (or another open of the same lock in this process) holds it.

    The lock file ``.<name>.lock`` next to ``path`` is created (with its parent) and removed
    again on release. A holder that finds, once locked, that the file it locked is no longer
    the one at the lock path (its previous holder removed it meanwhile) opens it again, so two
    processes never hold two different lock files of one entry.
    """
    import fcntl

    entry = Path(path)
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = entry.parent / f".{entry.name}.lock"
    while True:
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("%s: waiting for another process to finish it", entry)
                fcntl.flock(handle, fcntl.LOCK_EX)
            locked = os.fstat(handle)
            current = os.stat(lock)
        except FileNotFoundError:  # removed by the previous holder: lock the new file
            os.close(handle)
            continue
        except BaseException:
            os.close(handle)
            raise
        if (locked.st_dev, locked.st_ino) == (current.st_dev, current.st_ino):
            break
        os.close(handle)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(handle)


def make_once(
    path: str | os.PathLike[str],
    make: Callable[[Path], object],
    present: Callable[[Path], bool] = Path.exists,
) -> bool:
    """Make the cached entry ``path`` with ``make(path)`` unless ``present(path)``; returns
    whether this call made it.

    ``make`` must write the entry atomically (:func:`atomic_path`), so a present entry is a
    complete one and is reused without locking; otherwise :func:`entry_lock` is held while
    ``present`` is checked again and ``make`` runs, so concurrent callers make it once.
    """
    entry = Path(path)
    if present(entry):
        return False
    with entry_lock(entry):
        if present(entry):
            return False
        make(entry)
        return True


def check_writable(path: str | os.PathLike[str], option: str) -> None:
    """Raise :class:`SSTError` unless :func:`atomic_path` could write the file ``path``.

    ``path`` must not be a directory; its folder must exist or be creatable (the nearest
    existing ancestor is a folder); and a file (a folder, when folders are missing) can really
    be created there — probed with a temporary that is removed at once, so read-only mounts,
    permissions and immutable folders are all caught and nothing is left behind. ``option``
    (e.g. ``"--out"``) starts the message.
    """
    final = Path(path)
    if final.is_dir():
        raise SSTError(f"{option} {str(final)!r} is a directory; give a file name")
    folder = final.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = (
            f"{str(folder)!r} is not a folder"
            if existing == folder
            else f"cannot create the folder {str(folder)!r}: {str(existing)!r} is not a folder"
        )
        raise SSTError(f"{option} {str(final)!r}: {where}")
    what = "write in" if existing == folder else "create folders in"
    try:
        if existing == folder:
            handle, name = tempfile.mkstemp(prefix=".sst-write-check-", dir=existing)
            os.close(handle)
            os.unlink(name)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".sst-write-check-", dir=existing))
    except OSError as error:
        raise SSTError(
            f"{option} {str(final)!r}: cannot {what} {str(existing)!r} ({error.strerror or error})"
        ) from None
