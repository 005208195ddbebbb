"""The user's state directory: one identity and the databases that go with it.

Everything a seized device could betray lives here, so the directory is created 0700 and every
file in it 0600. The identity and the counter store must stay together on one device: copying
the directory to a second device (or restoring an old backup) could reuse nonces.

``--home DIR`` (or ``RELAY_HOME``) picks another directory: tests use it, and so does anyone
keeping several identities on one machine.

Every key the home holds is reached through one call, :meth:`Home.unlock`: it reads the
identity file, asks for the passphrase if one guards it (``relay.store.keystore``), wipes the
home if the duress passphrase was given, and keeps the result for the life of the object, so
a command asks once.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import platformdirs

from relay.core.identity import Identity
from relay.errors import UsageError
from relay.store import keystore
from relay.store.keystore import DuressPassphrase, Keys
from relay.store.wipe import WipeResult, overwrite_fd, wipe_home

ENV_VAR = "RELAY_HOME"
PASSPHRASE_ENV = "RELAY_PASSPHRASE"
IDENTITY_FILE = "identity.key"
_MAX_IDENTITY_LEN = 4096
LEGACY_NOTE = (
    "the keys in {path} are stored unencrypted (an older relay made them); protect them "
    "with `relay id passphrase`"
)

PassphraseSource = Callable[[], str]


def env_passphrase() -> str:
    """The library's default passphrase source: ``$RELAY_PASSPHRASE``, else a clear error."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None:
        raise UsageError(
            f"this identity is locked with a passphrase: set {PASSPHRASE_ENV} or use "
            "--passphrase-file FILE"
        )
    return value


def default_home_path() -> Path:
    """``$RELAY_HOME`` if set, else the platform's per-user data directory."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path(platformdirs.user_data_dir("relay"))


class Home:
    """Paths in the state directory, and the identity stored there.

    Constructing a Home touches nothing on disk; writers call :meth:`ensure` first.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        passphrase: PassphraseSource | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path).expanduser() if path is not None else default_home_path()
        self._passphrase = passphrase or env_passphrase
        self._notice = notice
        self._keys: Keys | None = None
        self._secret: str | None = None  # the passphrase that unlocked it (to re-seal)
        self._children: dict[Path, Home] = {}

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
        """The identity stored here (unlocking the home if need be)."""
        return self.unlock().identity

    def read_identity_file(self) -> bytes:
        """The identity file's raw bytes; UsageError if there is none or it is not a file."""
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
            return os.read(fd, _MAX_IDENTITY_LEN + 1)
        finally:
            os.close(fd)

    def is_protected(self) -> bool:
        """Whether a passphrase guards this home's keys (False if there is no identity)."""
        return self.has_identity() and keystore.is_protected(self.read_identity_file())

    def unlock(self) -> Keys:
        """The one way to this home's keys: identity and data key, asked for once.

        A wrong passphrase is a UsageError (one line, exit 2). The duress passphrase wipes
        the home first and then fails exactly like a wrong one.
        """
        if self._keys is not None:
            return self._keys
        raw = self.read_identity_file()
        if len(raw) > _MAX_IDENTITY_LEN:
            raise UsageError(f"{self.identity_path} is not a relay identity (wrong size)")
        passphrase = self._passphrase() if keystore.is_protected(raw) else None
        try:
            keys = keystore.unpack(raw, passphrase)
        except DuressPassphrase:
            self.wipe()
            raise keystore.WrongPassphrase() from None
        if keys.legacy and self._notice is not None:
            self._notice(LEGACY_NOTE.format(path=self.path))
        self._keys, self._secret = keys, passphrase
        return keys

    def init_identity(self, force: bool = False, passphrase: str | None = None) -> Identity:
        """Create and store a new identity with a new data key; without ``force`` an existing
        one is kept. ``passphrase`` None stores the keys unprotected (say so to the user)."""
        if self.has_identity() and not force:
            raise UsageError(
                f"an identity already exists in {self.path}; replacing it loses the rooms you "
                "moderate (use --force if you mean it)"
            )
        if passphrase is not None:
            keystore.check_new_passphrase(passphrase)
        self.ensure()
        identity = Identity.generate()
        data_key = keystore.new_data_key()
        blob = keystore.pack(identity, data_key, passphrase)
        self._write_private(self.identity_path, blob, replace=force)
        self._keys = None  # the next unlock reads what was written
        return identity

    def set_passphrase(self, passphrase: str | None) -> Keys:
        """Lock the keys under a new passphrase (None: store them unprotected).

        A home in the old format gets a data key; ``relay.store.rooms.set_home_passphrase``
        also seals its room keys under it (the clear copies overwritten). A duress
        passphrase already set is kept.
        """
        keys = self.unlock()
        if passphrase is not None:
            keystore.check_new_passphrase(passphrase)
        # Homes kept inside this one (a web gateway's people) follow it: all of them are
        # opened first, so a passphrase that does not open one changes nothing.
        inner = [
            self.child(p.parent)
            for p in sorted(self.path.rglob(IDENTITY_FILE))
            if p.parent != self.path and not p.parent.is_symlink()
        ]
        for home in inner:
            home.unlock()
        raw = self.read_identity_file()
        duress = keystore.parse(raw).duress if keystore.is_protected(raw) else None
        if passphrase is None:
            duress = None  # nothing asks for a passphrase any more: no duress either
        data_key = keys.data_key or keystore.new_data_key()
        blob = keystore.pack(keys.identity, data_key, passphrase, duress=duress)
        # A crash after this write leaves clear room keys beside a data key: still readable,
        # and sealed by the next run of `relay id passphrase`.
        self._write_private(self.identity_path, blob, replace=True)
        self._keys = Keys(keys.identity, data_key, protected=passphrase is not None)
        self._secret = passphrase
        for home in inner:
            home.set_passphrase(passphrase)
        return self._keys

    def set_duress(self, duress: str | None) -> None:
        """Set (or with None clear) the passphrase that wipes the home instead of opening it."""
        keys = self.unlock()
        if not keys.protected or self._secret is None or keys.data_key is None:
            raise UsageError(
                "a duress passphrase needs a passphrase on the keys first: `relay id passphrase`"
            )
        if duress is not None and duress == self._secret:
            raise UsageError("the duress passphrase must differ from the passphrase")
        field = keystore.duress_field(duress) if duress is not None else None
        blob = keystore.pack(keys.identity, keys.data_key, self._secret, duress=field)
        self._write_private(self.identity_path, blob, replace=True)

    def child(self, path: Path | str) -> Home:
        """A home kept inside this one (a web gateway's people): locked like this one, with
        its passphrase, and unlocked once per process (the same object is returned)."""
        key = Path(path)
        home = self._children.get(key)
        if home is None:
            home = self._children[key] = Home(key, self._passphrase_of_child, self._notice)
        return home

    def child_passphrase(self) -> str | None:
        """The passphrase a new home inside this one gets: this one's (None: unprotected,
        as this one is)."""
        self.unlock()
        return self._secret

    def _passphrase_of_child(self) -> str:
        secret = self.child_passphrase()
        if secret is None:
            raise UsageError(f"a home inside {self.path} is locked but {self.path} is not")
        return secret

    def wipe(self) -> WipeResult:
        """Overwrite and remove everything in the home (see relay.store.wipe)."""
        self._keys = None
        return wipe_home(self.path)

    def _write_private(self, path: Path, data: bytes, *, replace: bool) -> None:
        """Write ``data`` to ``path`` atomically: 0600 temp file, fsync, then link/rename.

        A file replaced is overwritten afterwards through a descriptor opened before the
        rename: a rename alone leaves the old keys in the old blocks, and overwriting first
        would lose them if the machine stopped in between."""
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
                old = _open_old(path)
                try:
                    os.replace(tmp, path)
                    if old is not None:
                        overwrite_fd(old)
                finally:
                    if old is not None:
                        os.close(old)
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


def _open_old(path: Path) -> int | None:
    try:
        return os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError:
        return None
