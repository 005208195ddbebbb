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
from relay.store.counters import CounterStore
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


def test_counters_stay_per_identity_and_key_across_sessions(tmp_path):
    """Each start draws a new session, but counters keep growing in one file: even two
    starts that drew the same session would not repeat a counter (defence in depth)."""
    store = CounterStore(tmp_path / "c.db")
    a = Sender(RoomKeys(KEY), b"alice", store, block=16)
    b = Sender(RoomKeys(KEY), b"alice", store, block=16)
    assert a.session != b.session
    seen = [Header.parse(s.voice(DEFAULT_MODE, 0, FRAMES, 0.0)).counter for s in (a, b, a, b)]
    assert len(set(seen)) == 4
    store.close()


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
    from relay.store.counters import CounterStore
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
