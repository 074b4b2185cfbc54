"""Optuna storage, read by the search and the results alike: storage URLs (normalised, with the
password redacted or left out), opening a storage for a search or a results source for reading,
and the lock file local workers claim trial slots under."""

from __future__ import annotations

import contextlib
import fcntl
import random
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from .errors import StorageError, UserInputError
from .jsonfile import check_regular_file, read_json

__all__ = [
    "storage_url_for",
    "normalise_storage_url",
    "open_storage",
    "open_source",
    "sqlite_path",
    "without_password",
    "redact",
    "lock",
    "is_disk_fault",
    "disk_fault",
]


#: The largest journal file opened (Optuna replays it whole, in memory): a link to a huge
#: or endless file (``/dev/zero``) is refused instead of read.
MAX_JOURNAL_BYTES = 2 * 2**30

#: The largest ``meta.json`` read (ours hold a few lines).
MAX_META_BYTES = 2**20


# -- URLs and opening for a search -------------------------------------------------------------
def storage_url_for(storage: str | None, out_dir: Path) -> str:
    """The storage URL: SQLite under the results directory by default."""
    if storage is None:
        return f"sqlite:///{(out_dir / 'study.db').resolve()}"
    return normalise_storage_url(storage)


def normalise_storage_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` with the PostgreSQL driver that is installed:
    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3, while our ``postgres`` extra
    installs psycopg2."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql"):
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return f"postgresql://{rest}"


def open_storage(url: str, *, heartbeat: int = 0, stale_callback: Any = None) -> optuna.storages.BaseStorage:
    if url.endswith((".log", ".journal")) and "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        if Path(url).exists():  # (a path that does not exist yet makes a new journal)
            fix = "give the journal file a search wrote, or a path that does not exist yet"
            check_regular_file(url, field="storage", fix=fix, max_bytes=MAX_JOURNAL_BYTES)
        try:  # reading replays the whole file: junk fails here, not in the middle of a search
            return optuna.storages.JournalStorage(JournalFileBackend(url))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            if is_disk_fault(exc):
                raise disk_fault(url, "reading it", first) from None
            raise UserInputError(
                "storage",
                f"{url} is not an Optuna journal file ({type(exc).__name__}: {first})",
                "give the journal file a search wrote, or a path that does not exist yet",
            ) from None
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme.split("+")[0] not in ("sqlite", "postgresql", "postgres", "mysql"):
        raise UserInputError(
            "storage",
            f"{url!r} is not a storage URL",
            "use sqlite:///path/study.db, postgresql://user:pass@host/db, or a path ending in .log (journal file)",
        )
    kwargs: dict[str, Any] = {}
    new_file = None  # a SQLite file this call creates: removed if its tables cannot all be made
    if scheme.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
        path = sqlite_path(url)
        if path and not Path(path).parent.is_dir():
            raise UserInputError("storage", f"the folder of {path} does not exist", "create it or give another path")
        new_file = Path(path) if path and not Path(path).exists() else None
    if heartbeat:
        kwargs.update(
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=stale_callback,
        )
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as exc:  # sqlalchemy raises many types; the user needs one line
            text = str(exc)
            if attempt < 4 and any(
                m in text for m in ("duplicate key", "already exists", "UNIQUE constraint failed", "IntegrityError")
            ):
                # workers on several machines creating the schema of a fresh database at once
                time.sleep(0.5 + random.random())
                continue
            first = (text.strip().splitlines() or [type(exc).__name__])[0][:200]
            if is_disk_fault(exc):
                if new_file is not None:  # half a schema (a table without its unique index) would break the next run
                    for made in (new_file, new_file.with_name(new_file.name + "-journal")):
                        made.unlink(missing_ok=True)
                raise disk_fault(url, "opening it", first) from None
            raise UserInputError(
                "storage", f"cannot open {redact(url)} ({first})", "check the URL, the server and the credentials"
            ) from None
    raise AssertionError("unreachable")


#: what a database says when the disk under it fails or fills (SQLite, PostgreSQL, MySQL, the OS)
_DISK_FAULTS = (
    "disk i/o error",
    "database or disk is full",
    "no space left",
    "disk full",
    "file too large",
    "could not extend file",
    "input/output error",
)


def is_disk_fault(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk failed or is full:
    a fault of the machine, not of the URL the user gave."""
    seen: BaseException | None = exc
    for _ in range(10):  # StorageInternalError <- OperationalError <- sqlite3.OperationalError ...
        if seen is None:
            return False
        if any(m in str(seen).lower() for m in _DISK_FAULTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def disk_fault(url: str, doing: str, detail: str) -> StorageError:
    """The one line for a storage whose disk failed or is full (exit status 1 in the CLI)."""
    return StorageError(
        f"storage: the disk of {redact(url)} failed while {doing} ({detail}); "
        "free disk space (or mend the disk), then run the same command again"
    )


def sqlite_path(url: str) -> str | None:
    """The database file of a SQLite URL.  An in-memory database is refused: it vanishes with
    the process, so workers, ``report`` and a resumed search could never read what it held."""
    rest = url.split("://", 1)[1]
    path, _, query = rest.removeprefix("/").partition("?")
    if not path or ":memory:" in path or "mode=memory" in query:
        raise UserInputError(
            "storage",
            f"{url} is an in-memory database, which no other process (workers, report, a resumed search) can reopen",
            "give a file, e.g. sqlite:///study.db, or leave storage= out (SQLite in the results folder)",
        )
    return path.removeprefix("file:")


def without_password(url: str) -> str:
    """The URL as written to meta.json (results folders get shared and committed): the password
    is left out; libpq then takes it from PGPASSWORD or ~/.pgpass."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}@{host}"
    return url


def redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url


@contextlib.contextmanager
def lock(folder: Path):
    """An exclusive lock file in the results directory (local workers claim slots under it)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- opening a results source for reading ----------------------------------------------------
_JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def open_source(source: str | Path) -> tuple[Any, str, str | None]:
    """Return (storage or URL, a label for messages, the study name from meta.json)."""
    if isinstance(source, str) and "://" in source:
        _check_sqlite_url(source, base=None)
        return _rdb(source), source, None
    path = Path(source).expanduser()
    if not path.exists():
        raise UserInputError(
            "source",
            f"no such file or directory: {str(path)!r}",
            "pass a results directory, a storage URL (sqlite:///study.db) or a journal file",
        )
    if path.is_file() and path.name == "meta.json":
        path = path.parent
    if path.is_dir():
        return _open_results_dir(path)
    return _open_storage_file(path), str(path), None


def _open_results_dir(path: Path) -> tuple[Any, str, str | None]:
    meta_path = path / "meta.json"
    if not meta_path.exists():  # (one that is not a regular file is refused by the reader)
        raise UserInputError(
            "source",
            f"{str(path)!r} holds no meta.json",
            "pass the results/<study> directory a search wrote, or storage=URL study=NAME",
        )
    fix = "rewrite it as JSON with keys storage and study"
    try:
        meta = read_json(meta_path, field="meta.json", fix=fix, max_bytes=MAX_META_BYTES)
    except OSError as exc:
        raise UserInputError("meta.json", f"cannot read {str(meta_path)!r} ({exc.strerror or exc})", fix) from None
    storage = meta.get("storage") if isinstance(meta, dict) else None
    if not isinstance(storage, str) or not storage:
        raise UserInputError(
            "meta.json", f"{str(meta_path)!r} has no 'storage' URL", 'add "storage": "sqlite:///..." to it'
        )
    name = meta.get("study")
    name = name if isinstance(name, str) and name else None
    if "://" in storage:
        storage = _check_sqlite_url(storage, base=path)
        return _rdb(storage), storage, name
    file = _resolve_relative(Path(storage), path)
    if file is None:
        raise UserInputError(
            "meta.json",
            f"storage file {storage!r} not found",
            "fix the 'storage' entry or run from the directory the search ran in",
        )
    return _open_storage_file(file), str(file), name


def _resolve_relative(path: Path, base: Path | None) -> Path | None:
    """Find a storage file named relative to the cwd, else to the results dir, else in it."""
    candidates = [path]
    if base is not None and not path.is_absolute():
        candidates += [base / path, base / path.name]
    elif base is not None:
        candidates.append(base / path.name)
    for candidate in candidates:
        if candidate.exists() and not candidate.is_dir():  # (a device or a pipe is refused when opened)
            return candidate
    return None


def _check_sqlite_url(url: str, base: Path | None) -> str:
    """SQLAlchemy would create an empty database for a missing file: refuse instead."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url[len(prefix) :] in ("", ":memory:"):
        return url
    raw = url[len(prefix) :].split("?", 1)[0]
    found = _resolve_relative(Path(raw), base)
    fix = "check the path (sqlite:///relative.db or sqlite:////absolute.db)"
    if found is None:
        raise UserInputError("storage", f"SQLite file {raw!r} does not exist", fix)
    check_regular_file(found, field="storage", fix=fix, max_bytes=sys.maxsize)  # not a device: SQLite would read it
    return prefix + str(found) if str(found) != raw else url


def _rdb(url: str) -> Any:

    try:
        return optuna.storages.RDBStorage(normalise_storage_url(url))
    except Exception as exc:  # sqlalchemy/driver errors: report as bad input, unless the disk failed
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        if is_disk_fault(exc):
            raise disk_fault(url, "reading it", first) from None
        raise UserInputError(
            "storage",
            f"cannot open {redact(url)} ({type(exc).__name__}: {first})",
            "check the URL and that its database driver is installed",
        ) from None


def _open_storage_file(path: Path) -> Any:
    from optuna.storages.journal import JournalFileBackend

    fix = "pass an Optuna JournalFileStorage file or a sqlite:/// URL"
    check_regular_file(path, field="storage", fix=fix, max_bytes=sys.maxsize)  # a device or a pipe is never read
    suffix = path.suffix.lower()
    is_sqlite = suffix in _SQLITE_SUFFIXES
    if not is_sqlite and suffix not in _JOURNAL_SUFFIXES:
        with open(path, "rb") as fh:
            is_sqlite = fh.read(16) == b"SQLite format 3\x00"
    if is_sqlite:
        return _rdb(f"sqlite:///{path}")
    check_regular_file(path, field="storage", fix=fix, max_bytes=MAX_JOURNAL_BYTES)  # Optuna reads it whole
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except Exception as exc:
        if is_disk_fault(exc):
            raise disk_fault(str(path), "reading it", str(exc)[:200]) from None
        raise UserInputError(
            "storage",
            f"cannot read journal file {str(path)!r} ({exc})",
            "pass an Optuna JournalFileStorage file or a sqlite:/// URL",
        ) from exc
