"""Opening the project's SQLite files the same way everywhere."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from relay.errors import UsageError


def connect(path: str | os.PathLike[str], *, durable: bool = True) -> sqlite3.Connection:
    """Open (creating 0600 if new) a SQLite database in autocommit mode.

    ``durable`` keeps ``synchronous=FULL``: a commit has reached the disk before it returns,
    which is what the nonce counter needs. Files are private to the user: they hold state an
    adversary who seizes the device could use.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _create_private(path)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        conn.execute("PRAGMA fullfsync=ON")  # macOS: fsync alone is not a write barrier
        conn.execute("PRAGMA checkpoint_fullfsync=ON")
    except (OSError, sqlite3.Error) as exc:
        raise UsageError(f"cannot open state database {path}: {exc}") from None
    return conn


def _create_private(path: Path) -> None:
    """Create ``path`` 0600 without following a planted symlink; tighten an existing file."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        if path.is_symlink():
            raise UsageError(f"refusing to use {path}: it is a symbolic link") from None
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
    else:
        os.close(fd)


def vacuum(conn: sqlite3.Connection) -> bool:
    """Rewrite the file and empty the WAL so erased rows leave no copy in free pages; False
    if another process holds the database (what it erased is zeroed, not compacted)."""
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError:
        return False
    return True
