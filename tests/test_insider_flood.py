"""A member holding the room key floods the room with minted identities (issue 12, item 3).

Sans-I/O, virtual time: a moderator, an enrolled speaker, a listener and Mallory (a member
who holds the room key). Mallory mints identities and announces them (HELLO with a raised
hand), replays every announcement, flips bits in them, and forges hellos in the moderator's
name (announce-key sealed, bad signature). The state every room keeps stays bounded, the
signature checks it pays for stay within the rates, and the enrolled speaker's over is still
granted, decoded and verified in the middle of it.
"""

from __future__ import annotations

import os
import random
import tracemalloc

from relay.core import roommsg as msg
from relay.core.identity import Identity
from relay.core.room import MAX_STRANGER_HANDS, OverEnded, Room, Voice
from relay.core.session import (
    KNOWN_HELLO_BURST,
    KNOWN_HELLO_RATE,
    MAX_INTRODUCED,
    MAX_INTRODUCED_PER_SHORT,
    NEWCOMER_BURST,
    NEWCOMER_RATE,
    Sender,
)
from relay.core.wire import HEADER_LEN, HELLO_NONCE_LEN, ControlKind
from relay.store.counters import MemoryCounters
from relay.voice.modes import mode_by_name

MODE = mode_by_name("1600")
T0 = 1_750_000_000.0
ROOM_ID = bytes(range(8))
KEY = bytes(range(100, 132))


def _room(ident: Identity, mod: Identity, roster=()) -> Room:
    return Room(ROOM_ID, KEY, 0, [mod.public], ident, MemoryCounters(), roster=roster)


def forged_hellos(mallory: Room, victim: Identity, n: int, now: float) -> list[bytes]:
    """Hellos in ``victim``'s name, sealed with the room's announce key (any key holder can),
    signed by someone else: they pass the cheap checks and fail only the signature."""
    out = []
    for i in range(n):
        sender = Sender(mallory.keys, victim.identity, MemoryCounters())
        sender._next, sender._limit = 10 + i, 11 + i
        out.append(sender.hello(ControlKind.HAND, msg.pack_hand(True), victim, now))
    # re-seal with a broken signature: decrypt, flip the last byte, encrypt again
    keys = mallory.keys
    forged = []
    for packet in out:
        cut = HEADER_LEN + HELLO_NONCE_LEN
        header, nonce, sealed = packet[:HEADER_LEN], packet[HEADER_LEN:cut], packet[cut:]
        plain = bytearray(keys.announce.decrypt(nonce, sealed, header))
        plain[-1] ^= 1
        forged.append(header + nonce + keys.announce.encrypt(nonce, bytes(plain), header))
    return forged


def test_a_flood_of_minted_identities_keeps_state_bounded_and_speech_verified():
    rng = random.Random(7)
    mod_id, sp_id, li_id, mal_id = (Identity.generate() for _ in range(4))
    mod = _room(mod_id, mod_id, roster=[sp_id.public, li_id.public])
    speaker, listener, mallory = _room(sp_id, mod_id), _room(li_id, mod_id), _room(mal_id, mod_id)
    targets = [mod, listener]
    now = T0

    minted = [Identity.generate() for _ in range(800)]
    fresh = []
    for ident in minted:
        s = Sender(mallory.keys, ident.identity, MemoryCounters())
        fresh.append(s.hello(ControlKind.HAND, msg.pack_hand(True), ident, now))
    replays = [rng.choice(fresh) for _ in range(6_000)]
    garbage = []
    for _ in range(2000):
        p = bytearray(rng.choice(fresh))
        p[rng.randrange(7, len(p))] ^= 1 << rng.randrange(8)
        garbage.append(bytes(p))
    forged = forged_hellos(mallory, mod_id, 300, now)
    flood = fresh + replays + garbage + forged + [os.urandom(rng.randrange(1, 240))] * 10
    rng.shuffle(flood)

    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    seconds = 600.0  # long enough for the newcomer rate to turn the table over
    step = seconds / len(flood)
    granted = heard = None
    for i, packet in enumerate(flood):
        now = T0 + i * step
        for room in targets:
            room.receive(packet, now)
        if i == len(flood) // 2:  # mid-flood: the enrolled speaker asks for the floor
            for room in targets:
                room.receive(speaker.raise_hand(now), now)
            member = mod.next_hand()
            assert member == sp_id.identity  # enrolled hands go before strangers'
            grant = mod.grant(member, 30, now)
            granted = [e for room in (speaker, listener) for e in room.receive(grant, now)]
            events = []
            for k in range(10):
                frames = [bytes([k]) * MODE.bytes_per_frame] * 4
                events += listener.receive(speaker.voice(MODE, 4 * k, frames, now), now)
                for junk in flood[i + 1 + 40 * k : i + 41 + 40 * k]:  # the flood goes on
                    listener.receive(junk, now)
            for seal in speaker.end_over(now):
                events += listener.receive(seal, now)
            heard = events
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()

    assert granted and speaker.floor is None  # the over released it
    assert sum(isinstance(e, Voice) for e in heard) == 10
    (ended,) = [e for e in heard if isinstance(e, OverEnded)]
    assert ended.verdict == "verified"

    # Strangers never evicted the enrolled, the moderator, or the floor holder.
    assert all(mod.receiver.knows(i.identity) for i in (mod_id, sp_id, li_id))
    assert listener.receiver.knows(mod_id.identity) and listener.receiver.knows(sp_id.identity)
    for room in targets:
        r = room.receiver
        assert r.evicted > 0  # the flood did push strangers out
        assert r.introduced_count <= MAX_INTRODUCED
        assert len(room.introduced) <= MAX_INTRODUCED
        assert len(room._hand_counter) <= MAX_INTRODUCED + len(room.roster)
        assert sum(1 for h in room.hands if h not in room.roster) <= MAX_STRANGER_HANDS
        assert len(r.highest_counters()) <= MAX_INTRODUCED + len(room.roster) + 1
        assert all(
            sum(p.introduced for p in group) <= MAX_INTRODUCED_PER_SHORT
            for group in r._by_short.values()
        )
        # Signature checks paid for: newcomers at their rate, the moderator's name at its own.
        verified = r.accepted + r.rejected["forged"]
        newcomers = NEWCOMER_BURST + NEWCOMER_RATE * seconds
        in_names = (KNOWN_HELLO_BURST + KNOWN_HELLO_RATE * seconds) * 3  # mod, speaker, self
        assert verified <= newcomers + in_names + 200, r.rejected  # + voice, grants, seals
        assert r.rejected["hello_rate"] > 4_000
        assert r.rejected["replay"] + r.rejected["auth"] > 1_500
    # Memory: what the flood left behind in these rooms, bounded (about 1 kB per peer).
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 2_000_000, grown


def test_voice_injected_as_the_floor_holder_cannot_make_a_listener_keep_a_million_frames():
    """Mallory (key holder) injects voice in the floor holder's name, consecutive counters,
    each packet jumping the position (a "DTX skip") as far as it can: the listener keeps at
    most MAX_KEPT_FRAMES of the over, and the over can then be no better than partial."""
    from relay.core.room import MAX_KEPT_FRAMES, MAX_SKIP_FILL

    mod_id, sp_id, li_id, mal_id = (Identity.generate() for _ in range(4))
    mod = _room(mod_id, mod_id, roster=[sp_id.public])
    speaker, listener, mallory = _room(sp_id, mod_id), _room(li_id, mod_id), _room(mal_id, mod_id)
    now = T0
    mod.receive(speaker.raise_hand(now), now)
    grant = mod.grant(sp_id.identity, 600, now)
    for room in (speaker, listener):
        room.receive(grant, now)
    # The strongest key holder: it read the speaker's session off the air (it travels masked
    # under the room key) and seals under it.
    forger = Sender(mallory.keys, sp_id.identity, MemoryCounters(), session=speaker.sender.session)
    forger._next, forger._limit = speaker.sender.next_counter, 1 << 24
    frame = [bytes(MODE.bytes_per_frame)] * 4
    position = 0
    for _ in range(3000):
        listener.receive(forger.voice(MODE, position, frame, now), now)
        position += 4 + MAX_SKIP_FILL - 8  # a skip just inside what a fill may be
    kept = listener._listening[sp_id.identity]
    assert MAX_KEPT_FRAMES // 2 < len(kept.frames) <= MAX_KEPT_FRAMES + 4  # it did fill
    assert len(kept.copies) <= MAX_KEPT_FRAMES + 4
