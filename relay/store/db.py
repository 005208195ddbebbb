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
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    except (OSError, sqlite3.Error) as exc:
        raise UsageError(f"cannot open state database {path}: {exc}") from None
    return conn
