"""Atomic outputs: write to a temporary sibling, then ``os.replace`` it into place.

A failure (an exception, Ctrl-C, a full disk) therefore never leaves a half-written file or
directory under the final name; the temporary is removed. Used for Fisher files, reports,
results tables and plots.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sst_merge_plugin.core.errors import SSTError


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
