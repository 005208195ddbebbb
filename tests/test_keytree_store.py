"""Forward secrecy on disk: a home seized after the hourly ratchet holds no key that opens
what was recorded before it (rooms.db and its WAL searched byte by byte, then tried)."""

from __future__ import annotations

from relay.core import roommsg as msg
from relay.core.crypto import RoomKeys
from relay.core.identity import Identity
from relay.core.invite import decode_invite, encode_invite
from relay.core.keytree import ratchet_step, step_start
from relay.core.room import RATCHET_GRACE, Dropped, KeyRotated, OverEnded, Room
from relay.core.session import Receiver
from relay.core.signing import split_signature
from relay.store.counters import MemoryCounters
from relay.store.home import Home
from relay.store.rooms import RoomStore
from relay.voice.modes import mode_by_name

MODE = mode_by_name("1600")
T = step_start(ratchet_step(1_780_000_000)) + 600.0


def _room(store: RoomStore, room_id: bytes, me: Identity, roster=()) -> Room:
    info = store.get(room_id.hex())
    state = store.key_state(room_id)
    room = Room(
        room_id,
        state.key,
        state.epoch,
        info.moderators,
        me,
        MemoryCounters(),
        roster=roster,
        step=state.step,
        tree=state.tree,
        path=state.path,
    )
    room.on_rotate = lambda new: store.save_key_state(room_id, new)
    return room


def _disk(home: Home) -> bytes:
    return b"".join(p.read_bytes() for p in home.path.glob("rooms.db*"))


def test_a_seized_home_after_the_ratchet_cannot_decrypt_earlier_recorded_packets(tmp_path):
    mod_home, ann_home = Home(tmp_path / "mod"), Home(tmp_path / "ann")
    mod_me, ann_me = mod_home.init_identity(), ann_home.init_identity()
    bob = Identity.generate()
    with RoomStore(mod_home) as ms, RoomStore(ann_home) as ann_store:
        info = ms.create("market", "SHORT_FAST", "1600", mod_me, now=T)
        room_id = info.room_id
        # `relay room invite --for`: a leaf for Ann, her path sealed into her invite.
        path = ms.enroll(room_id, ann_me.public, now=T)
        ms.enroll(room_id, bob.public, now=T)
        invite = encode_invite(ms.get("market"), mod_me, ann_me.public, int(T), path)
        ann_store.join(decode_invite(invite, ann_me), me=ann_me.public)
        mod = _room(ms, room_id, mod_me, roster=ms.roster(room_id))
        ann = _room(ann_store, room_id, ann_me)
        old_path_keys = list(ann.path.keys.values())
        old_keys = [ann.key_state().key]

        # Hour r: the moderator talks, removes Bob (a rekey), talks again. All recorded.
        air: list[bytes] = []
        rekeys: list[bytes] = []

        def over(now: float) -> None:
            air.append(mod.grant(mod.me.identity, 30, now))
            air.extend(mod.voice(MODE, 4 * i, [bytes([i + 1]) * 8] * 4, now) for i in range(3))
            air.extend(mod.end_over(now))

        over(T)
        removal = mod.remove(bob.identity, T + 5)
        rekeys += removal[1:]
        air += removal
        assert bob.public not in ms.roster(room_id)  # no later rekey is sealed to him
        over(T + 10)
        heard = [e for p in air for e in ann.receive(p, T + 11)]
        assert [e.verdict for e in heard if isinstance(e, OverEnded)] == ["verified"] * 2
        old_keys += [e.key for e in heard if isinstance(e, KeyRotated)]
        old_path_keys += list(ann.path.keys.values())
        assert len(old_keys) == 2 and ann_store.key_state(room_id).epoch == 1

        # The next hour, past the grace: Ann's device ratchets (no packet) and is seized.
        later = step_start(ratchet_step(T) + 1) + RATCHET_GRACE + 1
        ann.tick(later)
    disk = _disk(ann_home)
    for key in old_keys + old_path_keys:
        assert key not in disk  # erased and overwritten, WAL included
    with RoomStore(ann_home) as seized:
        state = seized.key_state(room_id)
        assert state.step == ratchet_step(later) and state.epoch == 1
        thief = _room(seized, room_id, ann_me)
    opened = [e for p in air for e in thief.receive(p, later) if not isinstance(e, Dropped)]
    assert opened == []
    # Nor do the seized path keys (with Ann's private identity key) open the recorded rekey.
    for packet in rekeys:
        receiver = Receiver(RoomKeys(old_keys[0]), window=4096)  # only to read the wraps
        receiver.add_sender(mod_me.identity, mod.sender.session)
        body, _ = split_signature(receiver.receive(packet, T).payload)
        fragment = msg.RekeyFragment.parse(body)
        assert fragment.wraps and not fragment.sealed
        context = thief._rekey_context(fragment.epoch)
        assert thief.path.apply(fragment.step, fragment.depth, fragment.wraps, context) is None


def test_the_moderators_tree_is_stored_beside_the_room_key_and_survives_a_restart(tmp_path):
    home = Home(tmp_path / "mod")
    me = home.init_identity()
    members = [Identity.generate() for _ in range(20)]
    with RoomStore(home) as store:
        info = store.create("market", "SHORT_FAST", "1600", me, now=T)
        paths = [store.enroll(info.room_id, m.public, now=T) for m in members]
        assert len({p.position for p in paths}) == 20
    with RoomStore(home) as store:
        state = store.advance(info.room_id, T + 2 * 3600)  # two hours on: both ratchet
        assert state.step == ratchet_step(T) + 2 and len(state.tree) == 20
        for m, p in zip(members, paths, strict=True):
            p.ratchet_to(state.step)
            assert state.tree.path_of(m.identity).keys == p.keys
        assert store.key_state(info.room_id).key == state.key


def test_an_invite_made_while_the_tree_is_loaded_is_not_overwritten(tmp_path):
    home = Home(tmp_path / "mod")
    me = home.init_identity()
    first, gone, late = (Identity.generate() for _ in range(3))
    with RoomStore(home) as store:
        info = store.create("market", "SHORT_FAST", "1600", me, now=T)
        store.enroll(info.room_id, first.public, now=T)
        store.enroll(info.room_id, gone.public, now=T)
        running = _room(store, info.room_id, me, roster=store.roster(info.room_id))
        with RoomStore(home) as cli:  # `relay room invite --for` in another terminal
            late_path = cli.enroll(info.room_id, late.public, now=T + 1)
        running.remove(gone.identity, T + 2)  # the running moderator saves its tree
        tree = store.key_state(info.room_id).tree
        assert set(tree.leaves) == {first.identity, late.identity}
        assert tree.leaves[late.identity] == late_path.position


def test_an_open_invite_for_a_newer_epoch_keeps_the_members_leaf(tmp_path):
    mod_home, ann_home = Home(tmp_path / "mod"), Home(tmp_path / "ann")
    mod_me, ann_me = mod_home.init_identity(), ann_home.init_identity()
    with RoomStore(mod_home) as ms, RoomStore(ann_home) as ann_store:
        info = ms.create("market", "SHORT_FAST", "1600", mod_me, now=T)
        path = ms.enroll(info.room_id, ann_me.public, now=T)
        sealed = encode_invite(ms.get("market"), mod_me, ann_me.public, int(T), path)
        ann_store.join(decode_invite(sealed, ann_me), me=ann_me.public)
        mod = _room(ms, info.room_id, mod_me, roster=ms.roster(info.room_id))
        mod.remove(Identity.generate().identity, T + 1)  # a rotation (nobody with a leaf)
        later = int(T + 3600)
        ms.advance(info.room_id, later)
        ann_store.join(decode_invite(encode_invite(ms.get("market"), mod_me, None, later), None))
        state = ann_store.key_state(info.room_id)
        assert state.epoch == 1 and state.step == ratchet_step(later)
        assert state.path is not None and state.path.position == path.position
        path.ratchet_to(state.step)
        assert state.path.keys == path.keys
