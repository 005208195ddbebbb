"""`relay room leave` erases everything of the room from the home, and only that room."""

from __future__ import annotations

import os
import sqlite3

from test_keys_at_rest import raw_bytes, run

from relay.clip.wire import Offer
from relay.core.crypto import RoomKeys
from relay.core.session import SessionMark
from relay.store.clips import ClipStore
from relay.store.counters import CounterStore
from relay.store.home import Home
from relay.store.replay import REPLAY_LABEL, ReplayStore
from relay.store.rooms import RoomStore

PASS = "tests: leaving"


def test_leave_erases_every_trace_of_the_room(tmp_path):
    """Keys (current and rotated away), room id, name, moderators, roster, the speakers'
    public keys in the replay marks, voice messages and send counters: none left in the
    raw bytes of any file, WAL included. Another room is untouched and its nonces safe."""
    env = {"RELAY_PASSPHRASE": PASS}
    home_dir = str(tmp_path / "me")
    assert run("id", "init", "--home", home_dir, env=env).exit_code == 0
    home = Home(home_dir, passphrase=lambda: PASS)
    me = home.identity()
    speaker = os.urandom(32)
    member_pub = Home(tmp_path / "ann")
    member_pub.init_identity()
    ann = member_pub.identity().public
    with RoomStore(home) as rooms:
        gone = rooms.create("secret meeting", "SHORT_FAST", "1600", me)
        kept = rooms.create("market", "SHORT_FAST", "1600", me)
        first_key = gone.key
        rooms.set_key(gone.room_id, 1, os.urandom(32))  # a rotation: two key ids
        rooms.enroll(gone.room_id, ann)
        now_key = rooms.get("secret meeting").key
    ids = [RoomKeys(k).key_id for k in (first_key, now_key)]
    kept_id = RoomKeys(kept.key).key_id
    sealer = home.unlock().sealer(REPLAY_LABEL)
    replay = ReplayStore(home.replay_db, sealer)
    for key_id in [ids[1], kept_id]:
        replay.save(key_id, [SessionMark(speaker, b"session1", 1.0, 41, 1, 41, 0.0)])
    with sqlite3.connect(home.replay_db) as old:  # a mark of an earlier version, in clear
        old.execute("CREATE TABLE replay (key_id TEXT, sender BLOB, highest INTEGER)")
        old.execute("INSERT INTO replay VALUES (?, ?, 40)", (ids[0], speaker))
    counters = CounterStore(home.counters_db)
    spent = counters.reserve(f"{ids[1]}:me", 5000, 1 << 24) + 5000
    counters.reserve(f"{kept_id}:me", 10, 1 << 24)
    offer = Offer(os.urandom(4), 2, 10, 40, 20, 1_700_000_000)
    with ClipStore(home.path / "clips.db") as clips:
        clips.add_outgoing(gone.room_id, offer, b"speech of the meeting" * 2)
        clips.add_outgoing(kept.room_id, Offer(os.urandom(4), 2, 10, 40, 20, 1), b"x" * 40)
    before = raw_bytes(home.path)
    assert gone.room_id in before and speaker in before and ids[0].encode() in before

    left = run("room", "leave", "secret meeting", "--home", home_dir, env=env)
    assert left.exit_code == 0, left.output
    assert "erased" in left.stdout

    # Read while replay.db and counters.db are still open in this process (their WAL too).
    raw = raw_bytes(home.path)
    traces = [
        gone.room_id,
        gone.room_id.hex().encode(),
        first_key,
        now_key,
        b"secret meeting",
        ann.signing_key,
        ann.agreement_key,
        b"speech of the meeting",
        offer.msg_id,
        *(i.encode() for i in ids),
        *(bytes.fromhex(i) for i in ids),
    ]
    for trace in traces:
        assert trace not in raw, trace
    # The other room's marks still name the speaker: that room was not left.
    (mark,) = ReplayStore(home.replay_db, sealer).load(kept_id)
    assert (mark.identity, mark.highest) == (speaker, 41)
    assert ReplayStore(home.replay_db, sealer).load(ids[1]) == []
    with RoomStore(Home(home_dir, passphrase=lambda: PASS)) as rooms:
        assert [r.name for r in rooms.list()] == ["market"]
    # Joining the left room again with the same key never reuses a counter.
    fresh = CounterStore(home.counters_db)
    assert fresh.reserve(f"{ids[1]}:me", 1, 1 << 24) >= spent
    assert fresh.reserve(f"{kept_id}:me", 1, 1 << 24) >= 10
    with ClipStore(home.path / "clips.db") as clips:
        assert clips.outgoing(gone.room_id, offer.msg_id) is None
        assert len(clips.pending(kept.room_id)) == 1
