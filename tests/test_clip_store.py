"""The voice-message store: durable steps, nothing twice, a full disk said clearly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay.clip.message import build_offer
from relay.clip.wire import Ack
from relay.core.identity import Identity
from relay.errors import UsageError
from relay.store.clips import ClipStore
from relay.voice.modes import mode_by_name

ROOM = b"r" * 8


def offer_and_data(ident: Identity):
    frames = [bytes([i % 256, 1, 2, 3]) for i in range(200)]
    return build_offer(ident, ROOM, mode_by_name("700C"), frames, 100, 0.0, max_bytes=10_000)


def test_outbox_keeps_the_message_and_each_receivers_acks(tmp_path: Path) -> None:
    ident = Identity.generate()
    offer, data = offer_and_data(ident)
    with ClipStore(tmp_path / "clips.db") as store:
        store.add_outgoing(ROOM, offer, data)
        ack = Ack.of(offer.msg_id, {0, 1, 5}, have_offer=True, complete=False)
        store.save_acks(ROOM, offer.msg_id, {b"x" * 32: ack})
    assert (os.stat(tmp_path / "clips.db").st_mode & 0o777) == 0o600
    with ClipStore(tmp_path / "clips.db") as store:  # "after a restart"
        (clip,) = store.pending(ROOM)
        assert clip.offer == offer and clip.data == data and clip.acks == {b"x" * 32: ack}
        assert store.find_outgoing(ROOM, data) == clip  # the same speech resumes
        store.mark_sent(ROOM, offer.msg_id)
        assert store.pending(ROOM) == [] and store.find_outgoing(ROOM, data) is None
        assert store.outgoing(ROOM, offer.msg_id).data == b""  # the record stays, not the speech
    # Delivered speech is overwritten on disk, not just unlinked (a seized device).
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("clips"))
    assert data[:64] not in on_disk


def test_inbox_is_unique_and_partials_survive_until_complete(tmp_path: Path) -> None:
    ident = Identity.generate()
    offer, data = offer_and_data(ident)
    sender = ident.identity
    with ClipStore(tmp_path / "clips.db") as store:
        store.save_offer(ROOM, sender, offer)
        store.save_piece(ROOM, sender, offer.msg_id, 0, data[:100])
        store.save_piece(ROOM, sender, offer.msg_id, 0, data[:100])  # a duplicate
    with ClipStore(tmp_path / "clips.db") as store:
        assert store.partials(ROOM) == [(sender, offer.msg_id, offer, {0: data[:100]})]
        assert store.complete(ROOM, sender, offer, data, "name")
        assert not store.complete(ROOM, sender, offer, data, "name")  # never twice
        assert store.partials(ROOM) == []
        (clip,) = store.inbox(ROOM)
        assert clip.data == data and clip.sender_name == "name"
        assert store.find(clip.id[:3]).id == clip.id
        with pytest.raises(UsageError, match="no voice message"):
            store.find("ffffffffff")
        store.drop_partial(ROOM, sender, b"zzzz")  # nothing to drop is fine
        store.erase(clip)  # `relay clip delete`
        assert store.inbox(ROOM) == []
        assert not store.complete(ROOM, sender, offer, data, "name")  # not collected again
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("clips"))
    assert data[:64] not in on_disk  # overwritten, not unlinked


def test_a_full_disk_is_one_clear_error(tmp_path: Path) -> None:
    """SQLite's own SQLITE_FULL ('database or disk is full'), provoked by a page limit."""
    ident = Identity.generate()
    offer, _ = offer_and_data(ident)
    with ClipStore(tmp_path / "clips.db") as store:
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages + 1}")
        with pytest.raises(UsageError, match="disk full"):
            for i in range(200):
                store.save_piece(ROOM, ident.identity, offer.msg_id, i, os.urandom(2000))
