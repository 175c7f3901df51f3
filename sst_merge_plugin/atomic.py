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
