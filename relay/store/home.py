"""The user's state directory: one identity and the databases that go with it.

Everything a seized device could betray lives here, so the directory is created 0700 and every
file in it 0600. The identity and the counter store must stay together on one device: copying
the directory to a second device (or restoring an old backup) could reuse nonces.

``--home DIR`` (or ``RELAY_HOME``) picks another directory: tests use it, and so does anyone
keeping several identities on one machine.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import platformdirs

from relay.core.identity import Identity
from relay.errors import UsageError

ENV_VAR = "RELAY_HOME"
IDENTITY_FILE = "identity.key"
_IDENTITY_LEN = 64


def default_home_path() -> Path:
    """``$RELAY_HOME`` if set, else the platform's per-user data directory."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path(platformdirs.user_data_dir("relay"))


class Home:
    """Paths in the state directory, and the identity stored there.

    Constructing a Home touches nothing on disk; writers call :meth:`ensure` first.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_home_path()

    def __repr__(self) -> str:
        return f"Home({str(self.path)!r})"

    @property
    def identity_path(self) -> Path:
        return self.path / IDENTITY_FILE

    @property
    def rooms_db(self) -> Path:
        return self.path / "rooms.db"

    @property
    def counters_db(self) -> Path:
        return self.path / "counters.db"

    @property
    def replay_db(self) -> Path:
        return self.path / "replay.db"

    def ensure(self) -> Path:
        """Create the directory 0700 if it is missing (an existing one is left as it is)."""
        if self.path.is_symlink():
            raise UsageError(f"refusing to use {self.path}: it is a symbolic link")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.mkdir(mode=0o700)
        except FileExistsError:
            if not self.path.is_dir():
                raise UsageError(f"{self.path} exists and is not a directory") from None
        except OSError as exc:
            raise UsageError(f"cannot create the relay home {self.path}: {exc}") from None
        else:
            os.chmod(self.path, 0o700)  # mkdir's mode is filtered by the umask
        return self.path

    def has_identity(self) -> bool:
        return self.identity_path.exists()

    def identity(self) -> Identity:
        """The identity stored here; UsageError if there is none or the file is not one."""
        try:
            fd = os.open(self.identity_path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise UsageError(f"no identity here ({self.path}); run `relay id init`") from None
        except OSError as exc:
            raise UsageError(f"cannot read the identity in {self.path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UsageError(f"{self.identity_path} is not a regular file")
            if info.st_mode & 0o077:
                os.fchmod(fd, 0o600)  # someone loosened it: close the gap before reading
            raw = os.read(fd, _IDENTITY_LEN + 1)
        finally:
            os.close(fd)
        if len(raw) != _IDENTITY_LEN:
            raise UsageError(f"{self.identity_path} is not a relay identity (wrong size)")
        return Identity.from_private_bytes(raw)

    def init_identity(self, force: bool = False) -> Identity:
        """Create and store a new identity; without ``force`` an existing one is kept."""
        if self.has_identity() and not force:
            raise UsageError(
                f"an identity already exists in {self.path}; replacing it loses the rooms you "
                "moderate (use --force if you mean it)"
            )
        self.ensure()
        identity = Identity.generate()
        self._write_private(self.identity_path, identity.private_bytes(), replace=force)
        return identity

    def _write_private(self, path: Path, data: bytes, *, replace: bool) -> None:
        """Write ``data`` to ``path`` atomically: 0600 temp file, fsync, then link/rename."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a leftover of a crashed run of this very pid
        try:
            fd = os.open(tmp, flags, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if another process created it meanwhile
            self._fsync_dir()
        except FileExistsError:
            raise UsageError(f"{path} appeared while writing it; nothing was changed") from None
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _fsync_dir(self) -> None:
        """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
