"""Send counters survive restarts and kill -9: a nonce is never used twice."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from relay.core import RoomKeys, Sender
from relay.core.wire import COUNTER_LIMIT, Header
from relay.errors import UsageError
from relay.store.counters import RESTORE_JUMP, CounterStore
from relay.voice.modes import DEFAULT_MODE

KEY = bytes(range(32))
FRAMES = [bytes(8)] * 5


def test_counters_only_grow_across_clean_restarts(tmp_path):
    seen = []
    for _run in range(3):
        store = CounterStore(tmp_path / "c.db")
        sender = Sender(RoomKeys(KEY), b"alice", store, block=16)
        for i in range(10):
            seen.append(Header.parse(sender.voice(DEFAULT_MODE, i, FRAMES, 0.0)).counter)
        store.close()
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_a_restored_backup_never_reuses_what_the_lost_device_used(tmp_path):
    """A backup taken at counter C; the device goes on (to C + k, and into a new room key),
    is lost; the backup is restored (a new file): every counter, including the new key's,
    starts past anything the lost device could plausibly have used."""
    live = tmp_path / "live"
    live.mkdir()
    store = CounterStore(live / "c.db")
    assert not store.moved
    store.reserve("room-a", 64, COUNTER_LIMIT)
    store.close()
    backup = (live / "c.db").read_bytes()
    store = CounterStore(live / "c.db")  # the device carries on
    assert not store.moved
    used = [store.reserve("room-a", 64, COUNTER_LIMIT) for _ in range(50)]
    store.reserve("room-b", 64, COUNTER_LIMIT)  # a key rotated after the backup
    store.close()
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "c.db").write_bytes(backup)
    os.chmod(restored / "c.db", 0o600)
    store = CounterStore(restored / "c.db")
    assert store.moved
    assert store.reserve("room-a", 64, COUNTER_LIMIT) > max(used) + 64
    assert store.reserve("room-b", 64, COUNTER_LIMIT) >= RESTORE_JUMP
    store.close()
    reopened = CounterStore(restored / "c.db")  # the same file again: no further jump
    assert not reopened.moved and reopened.peek("room-b") < RESTORE_JUMP + 256
    reopened.close()


def test_key_file_is_private(tmp_path):
    CounterStore(tmp_path / "c.db").close()
    assert (tmp_path / "c.db").stat().st_mode & 0o777 == 0o600


def test_existing_loose_file_is_tightened_and_symlinks_refused(tmp_path):
    loose = tmp_path / "loose.db"
    loose.touch(mode=0o644)
    CounterStore(loose).close()
    assert loose.stat().st_mode & 0o777 == 0o600
    link = tmp_path / "link.db"
    link.symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(UsageError, match="symbolic link"):
        CounterStore(link)
    assert not (tmp_path / "elsewhere.db").exists()


def test_exhausted_counter_refuses_to_send(tmp_path):
    store = CounterStore(tmp_path / "c.db")
    store.reserve("x", COUNTER_LIMIT - 10, COUNTER_LIMIT)
    with pytest.raises(UsageError, match="rotate the room key"):
        store.reserve("x", 64, COUNTER_LIMIT)


SENDER = textwrap.dedent(
    """
    import sys
    from relay.core import RoomKeys, Sender
    from relay.core.wire import Header
    from relay.store.counters import RESTORE_JUMP, CounterStore
    from relay.voice.modes import DEFAULT_MODE
    sender = Sender(RoomKeys(bytes(range(32))), b"alice", CounterStore(sys.argv[1]), block=8)
    i = 0
    while True:
        packet = sender.voice(DEFAULT_MODE, i, [bytes(8)] * 5, 0.0)
        print(Header.parse(packet).counter, flush=True)
        i += 5
    """
)


def test_kill_9_mid_stream_never_reuses_a_counter(tmp_path):
    db = tmp_path / "c.db"
    used: list[int] = []
    for _run in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", SENDER, str(db)], stdout=subprocess.PIPE, text=True
        )
        run = []
        for line in proc.stdout:
            run.append(int(line))
            if len(run) >= 37:  # stop in the middle of a block
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert not used or min(run) > max(used), "a restarted sender went back in counters"
        used.extend(run)
    assert len(used) == len(set(used))
