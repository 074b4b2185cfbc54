"""Writing files: the check that an output folder can be written, made before anything is
computed, and the one atomic write every output goes through.

One writability check for every command that writes (``search --out``, ``report``, ``convert --out``,
the folder of a SQLite ``--storage``): a folder we could not write would otherwise be found out
after minutes of training, or end in a traceback.  The check creates nothing that stays behind:
it looks for the nearest folder that exists and creates (and removes) a temporary file there,
which also catches what a permission test misses (root on a read-only or immutable folder,
``/proc``, a read-only mount).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import UserInputError

__all__ = ["ensure_writable_dir", "atomic_path", "atomic_write", "staging_dir", "publish"]

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def ensure_writable_dir(path: str | Path, field: str, *, fix: str = "give a folder you can write to") -> Path:
    """Refuse (``UserInputError`` naming ``field``) a folder that cannot be created or written.

    ``path`` need not exist: then its nearest existing ancestor must be a writable folder (the
    folders in between are created later, by the writer).  Nothing is created here.
    """
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = f"{existing}" if existing == path else f"{existing} (in the path {path})"
        raise UserInputError(field, f"{where} is a file, not a folder", fix)
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".nas_sepconv_write_test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        target = "" if existing == path else f" (to create {path})"
        raise UserInputError(field, f"cannot write in {existing}{target}: {reason}", fix) from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` for the caller to write; when the block ends without an
    exception it replaces ``path`` in one rename, so a reader (another worker, a crash, a full
    disk) never sees half a file.  The file gets the ordinary mode (0666 less the umask), not
    mkstemp's 0600: results folders are shared.  The mode is set again after the block, as a
    writer may replace the file by one of its own (safetensors' ``save_file`` writes a 0600 file
    and renames it over the path it is given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | Path, content: str | bytes | Callable[[IO], None], *, binary: bool = False) -> Path:
    """Write ``content`` (text, bytes, or a function given the open file) to ``path`` atomically
    (see :func:`atomic_path`), flushed to disk before the rename."""
    binary = binary or isinstance(content, bytes)
    with atomic_path(path) as tmp:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


@contextlib.contextmanager
def staging_dir(path: str | Path) -> Iterator[Path]:
    """A private, empty temporary folder beside ``path``, for a writer that makes several files
    or names its files itself (ONNX external data is written as one file per tensor, named after
    it): nothing lands beside ``path`` until :func:`publish` moves it there.  The folder, and
    whatever is left in it, is removed when the block ends, with or without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(src: str | Path, path: str | Path) -> Path:
    """Move the finished file ``src`` (written in a :func:`staging_dir` beside ``path``) onto
    ``path`` in one rename, flushed to disk first, with the ordinary mode (0666 less the umask).
    A symbolic link at ``path`` is replaced by the file; the link's target is never written."""
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(src, 0o666 & ~_UMASK)
    os.replace(src, path)
    return Path(path)
