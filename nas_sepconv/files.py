"""Checks that an output folder can be written, made before anything is computed.

One helper for every command that writes (``search --out``, ``report``, ``convert --out``,
the folder of a SQLite ``--storage``): a folder we could not write would otherwise be found out
after minutes of training, or end in a traceback.  The check creates nothing that stays behind:
it looks for the nearest folder that exists and creates (and removes) a temporary file there,
which also catches what a permission test misses (root on a read-only or immutable folder,
``/proc``, a read-only mount).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserInputError

__all__ = ["ensure_writable_dir"]


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

