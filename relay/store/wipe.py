"""Erasing a home: every file overwritten, synced, then removed.

Generic on purpose: whatever a relay home holds (identity, rooms, counters, replay marks,
voice messages, contacts, and files later versions add) goes, without a list of names to keep
up to date. Symbolic links are removed, never followed: a planted link must not make a wipe
overwrite a file outside the home.

What overwriting cannot reach is said in THREATS.md ("Wipe"): on flash storage (SSDs, SD
cards, phones) and on copy-on-write or journaling filesystems the old blocks may survive
the overwrite; full-disk encryption is what protects those, and the passphrase on the keys
(keystore) is what protects a device seized before a wipe.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from relay.errors import UsageError

# A home is recognised by one of these before anything is erased: `relay wipe --home ~`
# by mistake must not erase someone's home directory.
MARKERS = ("identity.key", "rooms.db", "counters.db", "replay.db", "clips.db")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class WipeResult:
    files: int
    bytes: int
    skipped: int = 0  # files that could not be overwritten (removed all the same)


def looks_like_home(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and any((path / m).exists() for m in MARKERS)


def overwrite(path: str | os.PathLike[str]) -> int:
    """Overwrite a regular file's whole length with random bytes and sync it; its size.

    The length stays (truncating frees the same blocks the overwrite just filled): the file
    is removed afterwards, and a hard link to it elsewhere sees only random bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        return overwrite_fd(fd)
    finally:
        os.close(fd)


def overwrite_fd(fd: int) -> int:
    """:func:`overwrite` through an open descriptor (a file already replaced by a rename
    still has its old blocks: overwrite them through a descriptor kept from before)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return 0
    size = info.st_size
    os.lseek(fd, 0, os.SEEK_SET)
    left = size
    while left > 0:
        n = min(left, _CHUNK)
        os.write(fd, os.urandom(n))
        left -= n
    os.fsync(fd)
    return size


def wipe_home(path: str | os.PathLike[str]) -> WipeResult:
    """Overwrite and remove every file under ``path``, then the directory itself."""
    root = Path(path)
    if root.is_symlink():
        raise UsageError(f"refusing to wipe {root}: it is a symbolic link")
    if not root.exists():
        return WipeResult(0, 0)
    if not looks_like_home(root):
        raise UsageError(f"refusing to wipe {root}: it does not look like a relay home")
    files = total = skipped = 0
    # Bottom-up, never following links: every file is overwritten before any is removed
    # from a directory, so an interruption leaves nothing readable behind.
    walk = list(os.walk(root, topdown=False, followlinks=False))
    for directory, _dirs, names in walk:
        for name in names:
            p = os.path.join(directory, name)
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue  # links, sockets (a console's control socket), fifos: removed
            except FileNotFoundError:
                continue
            try:
                try:
                    total += overwrite(p)
                except PermissionError:  # someone made it read-only: ours to change
                    os.chmod(p, 0o600, follow_symlinks=False)
                    total += overwrite(p)
                files += 1
            except FileNotFoundError:
                continue
            except OSError:  # swapped for a link or a device meanwhile: removed, not written
                skipped += 1
    for directory, dirs, names in walk:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
        for name in dirs:
            p = os.path.join(directory, name)
            with contextlib.suppress(FileNotFoundError, OSError):
                if os.path.islink(p):
                    os.unlink(p)
                else:
                    os.rmdir(p)
    with contextlib.suppress(OSError):
        os.rmdir(root)
    _sync_dir(root.parent)
    return WipeResult(files, total, skipped)


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
