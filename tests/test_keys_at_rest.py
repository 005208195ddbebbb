"""Keys at rest: a seized home gives up no private key and no room key without the passphrase.

Every check reads the raw bytes of every file under the home (SQLite WAL and shared memory
included, while a connection is still open so the WAL is there to read).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli import options
from relay.cli.main import cli
from relay.core.crypto import RoomKeys
from relay.core.identity import Identity
from relay.core.invite import decode_invite, encode_invite
from relay.errors import UsageError
from relay.store import keystore
from relay.store.home import Home
from relay.store.rooms import RoomStore, set_home_passphrase

PASS = "tests: a passphrase"


def raw_bytes(home: Path) -> bytes:
    """Every byte of every file under the home."""
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


def secrets_of(home: Home) -> list[bytes]:
    """The private keys, the data key and the room keys this home holds (unlocked)."""
    keys = home.unlock()
    raw = keys.identity.private_bytes()
    found = [raw[:32], raw[32:]]
    if keys.data_key is not None:
        found.append(keys.data_key)
    if home.rooms_db.exists():
        with RoomStore(home) as rooms:
            for summary in rooms.list():
                found += rooms.keys(summary.room_id).values()
    return found


def assert_nothing_in_clear(home_path: Path, secrets: list[bytes]) -> None:
    raw = raw_bytes(home_path)
    for secret in secrets:
        assert len(secret) == 32
        assert secret not in raw
        assert secret.hex().encode() not in raw


def run(*args: str, env: dict[str, str | None] | None = None, input: str | None = None):
    base: dict[str, str | None] = {"RELAY_HOME": None, "RELAY_PASSPHRASE": None}
    return CliRunner().invoke(cli, list(args), env={**base, **(env or {})}, input=input)


def one_line_exit_2(result, match: str) -> None:
    assert result.exit_code == 2, (result.output, result.exception)
    prompts = ("Passphrase:", "New ", "Repeat ")
    lines = [ln for ln in result.stderr.strip().splitlines() if not ln.startswith(prompts)]
    assert len(lines) == 1 and lines[0].startswith("relay: error:"), result.stderr
    assert match in lines[0]


# --------------------------------------------------------------------- the library
def test_no_file_holds_a_private_or_room_key_in_clear(tmp_path):
    """Identity, data key, the room keys of a created and a joined room and a rotated key:
    none of them in any file of the home, WAL included, while the databases are open."""
    home = Home(tmp_path / "h", passphrase=lambda: PASS)
    me = home.init_identity(passphrase=PASS)
    other = Identity.generate()
    with RoomStore(home) as rooms:
        mine = rooms.create("market", "SHORT_FAST", "1600", me)
        # A room someone else moderates, joined by an invite sealed to us.
        other_home = Home(tmp_path / "o")
        other_home.init_identity()
        with RoomStore(other_home) as o:
            room = o.create("night", "SHORT_FAST", "1600", other)
            text = encode_invite(room, other, me.public, 100)
        rooms.join(decode_invite(text, me), me=me.public)
        old_key = rooms.get("night").key
        new_key = os.urandom(32)
        rooms.set_key(room.room_id, 1, new_key)
        assert (tmp_path / "h" / "rooms.db-wal").exists()  # the WAL is there to search
        secrets = [*secrets_of(home), mine.key, old_key, new_key]
        assert_nothing_in_clear(tmp_path / "h", secrets)
        assert rooms.get("night").key == new_key and rooms.get("market").key == mine.key
    assert_nothing_in_clear(tmp_path / "h", secrets)
    assert keystore.is_protected((tmp_path / "h" / "identity.key").read_bytes())


def test_wrong_passphrase_opens_nothing(tmp_path, monkeypatch):
    Home(tmp_path).init_identity(passphrase=PASS)
    with pytest.raises(UsageError, match=r"^wrong passphrase$"):
        Home(tmp_path, passphrase=lambda: PASS + "x").identity()
    monkeypatch.delenv("RELAY_PASSPHRASE", raising=False)
    with pytest.raises(UsageError, match="locked with a passphrase"):
        Home(tmp_path).identity()  # the library's default source is the environment


def test_changing_the_passphrase_keeps_the_rooms(tmp_path):
    home = Home(tmp_path, passphrase=lambda: PASS)
    me = home.init_identity(passphrase=PASS)
    with RoomStore(home) as rooms:
        info = rooms.create("market", "SHORT_FAST", "1600", me)
    home.set_passphrase("a new one")
    with pytest.raises(UsageError, match="wrong passphrase"):
        Home(tmp_path, passphrase=lambda: PASS).identity()
    again = Home(tmp_path, passphrase=lambda: "a new one")
    assert again.identity().public == me.public
    with RoomStore(again) as rooms:
        assert rooms.get("market").key == info.key


def test_a_home_from_an_older_relay_keeps_working_and_moves_to_the_locked_format(tmp_path):
    """64 raw bytes of identity and a clear room key: still opens (with a note saying how to
    lock it); `set_passphrase` seals both and the clear copies are gone from the files."""
    me = Identity.generate()
    (tmp_path / "identity.key").write_bytes(me.private_bytes())
    os.chmod(tmp_path / "identity.key", 0o600)
    notes: list[str] = []
    old = Home(tmp_path, notice=notes.append)
    with RoomStore(old) as rooms:
        info = rooms.create("market", "SHORT_FAST", "1600", me)
    assert notes and "relay id passphrase" in notes[0]
    assert info.key in raw_bytes(tmp_path)  # the old format, as it was
    set_home_passphrase(old, PASS)
    locked = Home(tmp_path, passphrase=lambda: PASS)
    assert locked.identity().public == me.public
    with RoomStore(locked) as rooms:
        assert rooms.get("market").key == info.key
    assert_nothing_in_clear(tmp_path, [*secrets_of(locked), info.key])


def test_a_hostile_identity_file_cannot_ask_for_gigabytes(tmp_path):
    home = Home(tmp_path, passphrase=lambda: PASS)
    home.init_identity(passphrase=PASS)
    blob = bytearray(home.identity_path.read_bytes())
    start = len(keystore.MAGIC) + 1
    blob[start : start + 4] = (1 << 30).to_bytes(4, "big")  # a TiB of memory
    home.identity_path.write_bytes(bytes(blob))
    with pytest.raises(UsageError, match="impossible passphrase settings"):
        Home(tmp_path, passphrase=lambda: PASS).identity()


# --------------------------------------------------------------------- the command line
def test_id_init_asks_twice_hidden_and_every_command_unlocks(tmp_path, monkeypatch):
    monkeypatch.setattr(options, "interactive", lambda: True)
    home = str(tmp_path / "me")
    made = run("id", "init", "--home", home, input="s3cret words\ns3cret words\n")
    assert made.exit_code == 0, made.output
    assert "s3cret" not in made.output  # hidden: nothing echoed
    assert keystore.is_protected((tmp_path / "me" / "identity.key").read_bytes())
    shown = run("id", "show", "--home", home, input="s3cret words\n")
    assert shown.exit_code == 0 and "relayid1:" in shown.stdout
    one_line_exit_2(run("id", "show", "--home", home, input="nope\n"), "wrong passphrase")
    differ = run("id", "init", "--home", str(tmp_path / "b"), input="one\ntwo\n")
    one_line_exit_2(differ, "differ")


def test_scripts_give_the_passphrase_by_file_or_environment(tmp_path):
    home = str(tmp_path / "me")
    secret = tmp_path / "pass.txt"
    secret.write_text("from a file\n")
    assert run("id", "init", "--home", home, "--passphrase-file", str(secret)).exit_code == 0
    created = run("room", "create", "market", "--home", home, "--passphrase-file", str(secret))
    assert created.exit_code == 0, created.output
    assert run("room", "invite", "market", "--home", home, env={
        "RELAY_PASSPHRASE": "from a file"}).exit_code == 0  # fmt: skip
    one_line_exit_2(
        run("room", "invite", "market", "--home", home, env={"RELAY_PASSPHRASE": "wrong"}),
        "wrong passphrase",
    )
    one_line_exit_2(run("room", "invite", "market", "--home", home), "--passphrase-file")
    # Even the list of rooms needs it: names are sealed too.
    one_line_exit_2(run("room", "list", "--home", home), "--passphrase-file")
    listed = run("room", "list", "--home", home, env={"RELAY_PASSPHRASE": "from a file"})
    assert listed.exit_code == 0 and "market" in listed.stdout


def test_no_passphrase_is_said_plainly_and_no_terminal_is_refused(tmp_path):
    home = tmp_path / "gw"
    one_line_exit_2(run("id", "init", "--home", str(home)), "--no-passphrase")
    assert not home.exists() or not (home / "identity.key").exists()
    made = run("id", "init", "--home", str(home), "--no-passphrase")
    assert made.exit_code == 0
    assert "UNENCRYPTED" in made.stderr and "--no-passphrase" in made.stderr
    assert not keystore.is_protected((home / "identity.key").read_bytes())
    assert run("id", "show", "--home", str(home)).exit_code == 0  # no prompt, no env


def test_id_passphrase_locks_an_unlocked_home_and_changes_it(tmp_path):
    home = str(tmp_path / "gw")
    run("id", "init", "--home", home, "--no-passphrase")
    assert run("room", "create", "market", "--home", home).exit_code == 0
    new = run("id", "passphrase", "--home", home, env={"RELAY_NEW_PASSPHRASE": "first"})
    assert new.exit_code == 0, new.output
    one_line_exit_2(run("id", "show", "--home", home), "locked with a passphrase")
    changed = run(
        "id", "passphrase", "--home", home,
        env={"RELAY_PASSPHRASE": "first", "RELAY_NEW_PASSPHRASE": "second"},
    )  # fmt: skip
    assert changed.exit_code == 0, changed.output
    one_line_exit_2(
        run("id", "show", "--home", home, env={"RELAY_PASSPHRASE": "first"}), "wrong passphrase"
    )
    h = Home(home, passphrase=lambda: "second")
    assert_nothing_in_clear(Path(home), secrets_of(h))


def test_voice_messages_are_sealed_at_rest(tmp_path):
    """The speech of the outbox, of received pieces and of the inbox is not in the file;
    it reads back whole, and a blob moved to another row does not open."""
    from relay.clip.wire import Offer
    from relay.runtime.clip import clip_store

    home = Home(tmp_path, passphrase=lambda: PASS)
    home.init_identity(passphrase=PASS)
    room, sender = os.urandom(8), os.urandom(32)
    speech = [os.urandom(40) for _ in range(3)]
    offers = [Offer(os.urandom(4), 2, 10, 40, 20, 1) for _ in range(3)]
    with clip_store(home) as clips:
        clips.add_outgoing(room, offers[0], speech[0])
        clips.save_piece(room, sender, offers[1].msg_id, 0, speech[1][:20])
        clips.complete(room, sender, offers[2], speech[2])
        raw = raw_bytes(tmp_path)
        for s in (speech[0], speech[1][:20], speech[2]):
            assert s not in raw and s[:16] not in raw
        assert clips.outgoing(room, offers[0].msg_id).data == speech[0]
        assert clips.partials(room)[0][3] == {0: speech[1][:20]}
        assert clips.inbox(room)[0].data == speech[2]
        clips._conn.execute("UPDATE inbox SET room_id = ?", (os.urandom(8),))
        with pytest.raises(UsageError, match="does not open"):
            clips.inbox()


def test_replay_marks_do_not_name_the_speakers_at_rest(tmp_path):
    """Whom the owner heard, in which room: neither the speaker's key nor the room key's id
    is in the file; marks read back and move forward; erasing them leaves nothing, also of
    an earlier version's table."""
    import sqlite3

    from relay.core.session import SessionMark
    from relay.store.replay import REPLAY_LABEL, ReplayStore

    def mark(sender: bytes, highest: int) -> SessionMark:
        return SessionMark(sender, b"session1", 1.0, highest, 1, highest, 0.0)

    home = Home(tmp_path, passphrase=lambda: PASS)
    home.init_identity(passphrase=PASS)
    sealer = home.unlock().sealer(REPLAY_LABEL)
    speakers = [os.urandom(32) for _ in range(3)]
    kid = "00112233aabbccdd"
    marks = ReplayStore(home.replay_db, sealer)
    marks.save(kid, [mark(speakers[0], 5)])
    marks.save(kid, [mark(speakers[0], 7), mark(speakers[1], 3)])  # one row per session
    raw = raw_bytes(tmp_path)
    assert speakers[0] not in raw and speakers[1] not in raw and kid.encode() not in raw
    got = {m.identity: m.highest for m in ReplayStore(home.replay_db, sealer).load(kid)}
    assert got == {speakers[0]: 7, speakers[1]: 3}
    with sqlite3.connect(home.replay_db) as old:  # an earlier version's marks, in clear
        old.execute("CREATE TABLE replay (key_id TEXT, sender BLOB, highest INTEGER)")
        old.execute("INSERT INTO replay VALUES (?, ?, 9)", (kid, speakers[2]))
    assert marks.forget([kid]) == 3
    raw = raw_bytes(tmp_path)
    assert not any(sp in raw for sp in speakers) and kid.encode() not in raw


def test_room_names_and_members_are_sealed_at_rest(tmp_path):
    """Whom the owner talks with: room names, moderators' and members' keys and display
    names are not in the file; everything reads back; an older relay's rows are sealed by
    `relay id passphrase`."""
    me = Identity.generate()
    (tmp_path / "identity.key").write_bytes(me.private_bytes())  # an older relay's home
    os.chmod(tmp_path / "identity.key", 0o600)
    old = Home(tmp_path)
    ann, bob, co = (Identity.generate().public for _ in range(3))
    with RoomStore(old) as rooms:
        first = rooms.create("night shift", "SHORT_FAST", "1600", me)
        rooms.enroll(first.room_id, ann, display_name="Ann from the bakery")
    set_home_passphrase(old, PASS)
    home = Home(tmp_path, passphrase=lambda: PASS)
    with RoomStore(home) as rooms:
        second = rooms.create("market", "SHORT_FAST", "1600", me)
        rooms.enroll(second.room_id, bob)
        rooms.add_moderator(second.room_id, co)
        raw = raw_bytes(tmp_path)
        people = [p for x in (me.public, ann, bob, co) for p in (x.signing_key, x.agreement_key)]
        key_ids = [RoomKeys(r.key).key_id.encode() for r in (first, second)]
        for clear in [b"night shift", b"market", b"Ann from the bakery", *people, *key_ids]:
            assert clear not in raw, clear
        assert [r.name for r in rooms.list()] == ["market", "night shift"]
        assert rooms.get("Night Shift").room_id == first.room_id  # case-folded lookup
        assert rooms.roster(first.room_id) == [ann] and rooms.roster(second.room_id) == [bob]
        assert rooms.get("market").moderators == (me.public, co)
        assert rooms.remove_member(second.room_id, bob.signing_key)
        with pytest.raises(UsageError, match="already a room called"):
            rooms.create("market", "SHORT_FAST", "1600", me)


def test_voice_message_records_do_not_name_senders_or_receivers(tmp_path):
    """Whom the owner exchanged voice messages with: neither the sender's key, a receiver's
    key nor the sender's fingerprint is in the file; everything reads back."""
    from relay.clip.wire import Ack, Offer
    from relay.runtime.clip import clip_store

    home = Home(tmp_path, passphrase=lambda: PASS)
    home.init_identity(passphrase=PASS)
    room, sender, receiver = os.urandom(8), os.urandom(32), os.urandom(32)
    offers = [Offer(os.urandom(4), 2, 10, 40, 20, 1) for _ in range(3)]
    with clip_store(home) as clips:
        clips.add_outgoing(room, offers[0], os.urandom(40))
        clips.save_acks(room, offers[0].msg_id, {receiver: Ack(offers[0].msg_id, 1)})
        clips.save_offer(room, sender, offers[1])
        clips.save_piece(room, sender, offers[1].msg_id, 0, b"x" * 20)
        assert clips.complete(room, sender, offers[2], b"y" * 40, "abcd-efgh-ijkl-mnop")
        assert not clips.complete(room, sender, offers[2], b"y" * 40, "abcd-efgh-ijkl-mnop")
        raw = raw_bytes(tmp_path)
        for clear in (sender, receiver, b"abcd-efgh-ijkl-mnop"):
            assert clear not in raw
        assert set(clips.outgoing(room, offers[0].msg_id).acks) == {receiver}
        ((who, msg, offer, pieces),) = clips.partials(room)
        assert (who, msg, offer, pieces) == (sender, offers[1].msg_id, offers[1], {0: b"x" * 20})
        (got,) = clips.inbox(room)
        assert (got.sender, got.sender_name, got.data) == (sender, "abcd-efgh-ijkl-mnop", b"y" * 40)
        clips.erase(got)
        assert clips.inbox(room) == []
        clips.drop_partial(room, sender, offers[1].msg_id)
        assert clips.partials(room) == []


def test_only_home_unlock_opens_the_identity_file():
    """Every command reaches the keys through one function, Home.unlock: no other module of
    relay reads the identity file, opens it with keystore.unpack or builds Keys itself."""
    import ast

    root = Path(__file__).resolve().parent.parent / "relay"
    allowed = {root / "store" / "home.py", root / "store" / "keystore.py"}
    offenders = []
    for path in root.rglob("*.py"):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Name):
                name = node.id
            if name in {"unpack", "read_identity_file", "identity_path", "IDENTITY_FILE"}:
                if name == "unpack" and not (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "keystore"
                ):
                    continue  # struct.unpack and the like
                offenders.append(f"{path.relative_to(root)}:{node.lineno} {name}")
            wipe = root / "store" / "wipe.py"  # names the file only as a home's marker
            if isinstance(node, ast.Constant) and node.value == "identity.key" and path != wipe:
                offenders.append(f"{path.relative_to(root)}:{node.lineno} identity.key")
    assert offenders == []


def test_a_web_gateways_people_are_locked_like_the_gateway(tmp_path):
    """The browser people a gateway holds keys for live inside its home, locked under the
    gateway's passphrase: no private key of theirs is in any file either."""
    from relay.web.people import add_person

    gateway = Home(tmp_path / "gw", passphrase=lambda: PASS)
    me = gateway.init_identity(passphrase=PASS)
    with RoomStore(gateway) as rooms:
        rooms.create("market", "SHORT_FAST", "1600", me)
    seat = add_person(gateway, "market", "ann")
    person = seat.guest.home(gateway)
    assert person.path.parent.parent == gateway.path
    assert keystore.is_protected(person.identity_path.read_bytes())
    assert person.identity().public == seat.public  # opened with the gateway's passphrase
    secrets = secrets_of(person) + secrets_of(gateway)
    assert_nothing_in_clear(gateway.path, secrets)


def test_a_new_gateway_passphrase_locks_its_people_too(tmp_path):
    from relay.web.people import add_person

    gateway = Home(tmp_path / "gw", passphrase=lambda: PASS)
    me = gateway.init_identity(passphrase=PASS)
    with RoomStore(gateway) as rooms:
        rooms.create("market", "SHORT_FAST", "1600", me)
    seat = add_person(gateway, "market", "ann")
    set_home_passphrase(gateway, "a new one")
    again = Home(tmp_path / "gw", passphrase=lambda: "a new one")
    assert seat.guest.home(again).identity().public == seat.public
    with pytest.raises(UsageError, match="wrong passphrase"):
        seat.guest.home(Home(tmp_path / "gw", passphrase=lambda: PASS)).identity()


def test_key_tree_keys_are_sealed_at_rest(tmp_path):
    """The moderator's whole key tree and a member's leaf-to-root path (relay.core.keytree)
    are keys like the room key: none is in any file, and the tree's leaves do not name the
    members."""
    mod_home = Home(tmp_path / "mod", passphrase=lambda: PASS)
    mod = mod_home.init_identity(passphrase=PASS)
    ann_home = Home(tmp_path / "ann", passphrase=lambda: PASS)
    ann = ann_home.init_identity(passphrase=PASS)
    with RoomStore(mod_home) as rooms:
        info = rooms.create("market", "SHORT_FAST", "1600", mod)
        path = rooms.enroll(info.room_id, ann.public)
        text = encode_invite(rooms.get("market"), mod, ann.public, int(time.time()), path=path)
        tree = rooms.key_state(info.room_id).tree
        assert tree is not None and tree.leaves
        tree_keys = [k for _, k in tree.nodes()]
        assert_nothing_in_clear(tmp_path / "mod", [*tree_keys, *secrets_of(mod_home)])
        assert ann.public.signing_key not in raw_bytes(tmp_path / "mod")
    with RoomStore(ann_home) as rooms:
        rooms.join(decode_invite(text, ann), me=ann.public)
        held = rooms.key_state(info.room_id).path
        assert held is not None and held.keys
        assert_nothing_in_clear(tmp_path / "ann", [*held.keys.values(), *secrets_of(ann_home)])
