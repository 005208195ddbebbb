"""The state directory and the room store: private files, atomic writes, trust on first use."""

import os
import stat

import pytest

from relay.core.identity import Identity
from relay.core.invite import decode_invite, encode_invite
from relay.errors import UsageError
from relay.store.home import ENV_VAR, Home
from relay.store.rooms import MEMBER, MODERATOR, RoomStore


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_home_paths_and_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env-home"))
    assert Home().path == tmp_path / "env-home"
    home = Home(tmp_path / "h")
    assert home.identity_path.parent == home.path
    names = {home.rooms_db.name, home.counters_db.name, home.replay_db.name}
    assert names == {"rooms.db", "counters.db", "replay.db"}
    assert not home.path.exists()  # constructing touches nothing


def test_default_home_is_the_platform_data_dir(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert Home().path.name.lower() == "relay"


def test_init_identity_is_private_and_round_trips(tmp_path):
    home = Home(tmp_path / "h")
    created = home.init_identity()
    assert mode_of(home.path) == 0o700
    assert mode_of(home.identity_path) == 0o600
    assert home.identity().public == created.public
    assert list(home.path.iterdir()) == [home.identity_path]  # no temp file left behind


def test_init_identity_refuses_to_overwrite_without_force(tmp_path):
    home = Home(tmp_path)
    first = home.init_identity()
    with pytest.raises(UsageError, match="--force"):
        home.init_identity()
    assert home.identity().public == first.public
    second = home.init_identity(force=True)
    assert second.public != first.public and home.identity().public == second.public
    assert mode_of(home.identity_path) == 0o600


def test_missing_or_wrong_identity_is_a_usage_error(tmp_path):
    home = Home(tmp_path / "nothing")
    with pytest.raises(UsageError, match="relay id init"):
        home.identity()
    home = Home(tmp_path)
    home.identity_path.write_bytes(b"short")
    with pytest.raises(UsageError, match="wrong size"):
        home.identity()


def test_loosened_identity_file_is_tightened(tmp_path):
    home = Home(tmp_path)
    home.init_identity()
    os.chmod(home.identity_path, 0o644)
    home.identity()
    assert mode_of(home.identity_path) == 0o600


def test_symlinked_identity_is_refused(tmp_path):
    home = Home(tmp_path / "h")
    home.ensure()
    target = tmp_path / "elsewhere"
    target.write_bytes(bytes(64))
    home.identity_path.symlink_to(target)
    with pytest.raises(UsageError):
        home.identity()


@pytest.fixture
def alice(tmp_path):
    home = Home(tmp_path / "alice")
    me = home.init_identity()
    with RoomStore(home) as store:
        yield home, me, store


@pytest.fixture
def bob(tmp_path):
    home = Home(tmp_path / "bob")
    me = home.init_identity()
    with RoomStore(home) as store:
        yield home, me, store


def test_create_get_list_and_files_private(alice):
    home, me, store = alice
    info = store.create("market", "short_fast", "700", me)
    assert (info.preset, info.mode, info.epoch) == ("SHORT_FAST", "700C", 0)
    assert len(info.room_id) == 8 and len(info.key) == 32
    assert info.moderators == (me.public,)
    assert store.get("market") == info
    assert store.get(info.id_hex[:4]) == info
    assert store.get("MARKET") == info  # case-insensitive when unambiguous
    assert store.role(info.room_id) == MODERATOR
    [summary] = store.list()
    assert summary.name == "market" and "key" not in summary.as_dict()
    assert mode_of(home.rooms_db) == 0o600
    assert info.key.hex() not in repr(info)


def test_names_unique_and_unknown_refs_explained(alice):
    _, me, store = alice
    store.create("market", "SHORT_FAST", "1600", me)
    with pytest.raises(UsageError, match="already a room called"):
        store.create("market", "SHORT_FAST", "1600", me)
    with pytest.raises(UsageError, match="did you mean 'market'"):
        store.get("markte")
    with pytest.raises(UsageError, match="no room"):
        store.get("abc")  # too short to be an id prefix


def test_bad_room_settings_refused(alice):
    _, me, store = alice
    for name, preset, mode in [
        ("", "SHORT_FAST", "1600"),
        ("x" * 65, "SHORT_FAST", "1600"),
        ("evil\x1b[2J", "SHORT_FAST", "1600"),
        ("rtl\u202eroom", "SHORT_FAST", "1600"),
        ("ok", "NOPE", "1600"),
        ("ok", "SHORT_FAST", "9999"),
    ]:
        with pytest.raises(UsageError):
            store.create(name, preset, mode, me)
    assert store.list() == []


def test_join_as_member_then_newer_key_and_moderator_no_op(alice, bob):
    _, a_me, a_store = alice
    _, b_me, b_store = bob
    info = a_store.create("market", "SHORT_FAST", "1600", a_me)
    invite = decode_invite(encode_invite(info, a_me, b_me.public, 100), b_me)
    joined = b_store.join(invite, me=b_me.public)
    assert joined.key == info.key and b_store.role(info.room_id) == MEMBER
    # The moderator joining their own room changes nothing.
    a_store.join(decode_invite(encode_invite(info, a_me, None, 100), a_me), me=a_me.public)
    assert a_store.get("market") == info
    # Rotation: a newer epoch replaces the key and older keys are erased.
    for epoch in (1, 2):
        a_store.set_key(info.room_id, epoch, bytes([epoch]) * 32)
    assert set(a_store.keys(info.room_id)) == {2}
    rotated = a_store.get("market")
    b_store.join(decode_invite(encode_invite(rotated, a_me, None, 200), None))
    assert b_store.get("market").epoch == 2
    assert set(b_store.keys(info.room_id)) == {2}
    # An older invite does not roll the key back.
    b_store.join(invite)
    assert b_store.get("market").key == bytes([2]) * 32
    with pytest.raises(UsageError, match="not newer"):
        a_store.set_key(info.room_id, 2, bytes(32))


def test_member_holding_the_key_cannot_take_the_room_over(alice, bob):
    _, a_me, a_store = alice
    _, _, b_store = bob
    info = a_store.create("market", "SHORT_FAST", "1600", a_me)
    b_store.join(decode_invite(encode_invite(info, a_me, None, 100), None))
    mallory = Identity.generate()
    forged_room = type(info)(
        info.room_id, info.name, info.preset, info.mode, 9, bytes(32), (mallory.public,)
    )
    forged = decode_invite(encode_invite(forged_room, mallory, None, 500), None)
    with pytest.raises(UsageError, match="not one of that room's moderators"):
        b_store.join(forged)
    assert b_store.get("market").key == info.key


def test_same_epoch_different_key_refused(alice, bob):
    _, a_me, a_store = alice
    _, _, b_store = bob
    info = a_store.create("market", "SHORT_FAST", "1600", a_me)
    b_store.join(decode_invite(encode_invite(info, a_me, None, 100), None))
    other = type(info)(
        info.room_id, info.name, info.preset, info.mode, 0, bytes(32), info.moderators
    )
    with pytest.raises(UsageError, match="different key"):
        b_store.join(decode_invite(encode_invite(other, a_me, None, 101), None))


def test_join_name_clash_and_rename(alice, bob):
    _, a_me, a_store = alice
    _, b_me, b_store = bob
    b_store.create("market", "SHORT_FAST", "1600", b_me)
    info = a_store.create("market", "SHORT_FAST", "1600", a_me)
    invite = decode_invite(encode_invite(info, a_me, None, 100), None)
    with pytest.raises(UsageError, match="--name"):
        b_store.join(invite)
    assert b_store.join(invite, name="market-a").name == "market-a"
    assert {r.name for r in b_store.list()} == {"market", "market-a"}


def test_co_moderator_joins_as_moderator_and_newer_invite_updates_moderators(alice, bob):
    _, a_me, a_store = alice
    _, b_me, b_store = bob
    carol = Identity.generate()
    info = a_store.create("market", "SHORT_FAST", "1600", a_me)
    b_store.join(decode_invite(encode_invite(info, a_me, None, 100), None), me=b_me.public)
    a_store.add_moderator(info.room_id, carol.public)
    a_store.add_moderator(info.room_id, carol.public)  # idempotent
    updated = a_store.get("market")
    assert updated.moderators == (a_me.public, carol.public)
    b_store.join(decode_invite(encode_invite(updated, a_me, None, 200), None))
    assert b_store.get("market").moderators == updated.moderators
    # Carol herself, invited with the updated list, is a moderator on her device.
    c_home = Home(a_store.path.parent.parent / "carol")
    c_home.init_identity()  # room keys are sealed under a home's data key: it needs one
    with RoomStore(c_home) as c_store:
        c_store.join(decode_invite(encode_invite(updated, a_me, None, 200), None), carol.public)
        assert c_store.role(info.room_id) == MODERATOR


def test_roster_enroll_remove(alice):
    _, me, store = alice
    info = store.create("market", "SHORT_FAST", "1600", me)
    m1, m2 = Identity.generate().public, Identity.generate().public
    store.enroll(info.room_id, m1)
    store.enroll(info.room_id, m2, display_name="ana")
    store.enroll(info.room_id, m1)
    assert store.roster(info.room_id) == [m1, m2]
    assert store.roster(info.room_id, enrolled_only=True) == [m1, m2]
    assert store.remove_member(info.room_id, m1.signing_key)
    assert not store.remove_member(info.room_id, m1.signing_key)
    assert store.roster(info.room_id) == [m2]
    with pytest.raises(UsageError):
        store.enroll(bytes(8), m1)


def test_leave_erases_keys_from_the_file(alice):
    home, me, store = alice
    info = store.create("market", "SHORT_FAST", "1600", me)
    before = b"".join(p.read_bytes() for p in home.path.glob("rooms.db*"))
    assert info.room_id in before and info.key not in before  # sealed under the data key
    store.leave("market")
    assert store.list() == []
    raw = b"".join(p.read_bytes() for p in home.path.glob("rooms.db*"))
    assert info.key not in raw and info.room_id not in raw
    with pytest.raises(UsageError):
        store.get("market")


def test_failed_transaction_leaves_nothing_half_written(alice, monkeypatch):
    _, me, store = alice

    def boom(*args, **kwargs):
        raise RuntimeError("crash mid-write")

    monkeypatch.setattr(RoomStore, "_replace_moderators", boom)
    with pytest.raises(RuntimeError):
        store.create("market", "SHORT_FAST", "1600", me)
    monkeypatch.undo()
    assert store.list() == []
    assert store._db.execute("SELECT count(*) FROM room_keys").fetchone()[0] == 0
