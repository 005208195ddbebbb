"""`relay wipe` and the duress passphrase: nothing of the keys survives in the home's files.

What overwriting cannot reach (flash translation layers, journals, snapshots) is in
THREATS.md; here the files are checked through hard links made before the wipe, which see the
very inodes the wipe overwrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_keys_at_rest import one_line_exit_2, raw_bytes, run, secrets_of

from relay.cli import options
from relay.cli.main import cli
from relay.core.session import SessionMark
from relay.store import keystore
from relay.store.counters import CounterStore
from relay.store.home import Home
from relay.store.replay import ReplayStore
from relay.store.rooms import RoomStore

PASS = "tests: the real one"
DURESS = "tests: the duress one"


def populated_home(base: Path) -> tuple[Path, list[bytes]]:
    """A moderator's home with a room, a member enrolled, counters, replay marks and a
    voice message in the outbox; returns the home and every secret in it."""
    env = {"RELAY_PASSPHRASE": PASS}
    mod, ana = str(base / "mod"), str(base / "ana")
    for h in (mod, ana):
        assert run("id", "init", "--home", h, env=env).exit_code == 0
    assert run("room", "create", "market", "--home", mod, env=env).exit_code == 0
    pub = json.loads(run("id", "show", "--home", ana, "--json", env=env).stdout)["public_id"]
    invite = run("room", "invite", "market", "--for", pub, "--home", mod, env=env)
    assert invite.exit_code == 0
    home = Home(mod, passphrase=lambda: PASS)
    secrets = secrets_of(home)
    with RoomStore(home) as rooms:
        room_id = rooms.get("market").room_id
    counters = CounterStore(home.counters_db)
    counters.reserve("somekey:me", 64, 1 << 24)
    replay = ReplayStore(home.replay_db)
    replay.save("somekey", [SessionMark(bytes(range(32)), b"session1", 1.0, 7, 1, 7, 0.0)])
    from relay.runtime.clip import clip_store

    # The databases stay open (their WAL files exist) when the wipe runs, like a panic
    # wipe while a listener still runs.
    _OPEN.extend((counters, replay, clip_store(home)))
    return Path(mod), [*secrets, room_id]


_OPEN: list[object] = []


def hard_links(home: Path, into: Path) -> dict[Path, int]:
    """A hard link to every file of the home, and each file's size."""
    into.mkdir()
    links = {}
    for i, p in enumerate(sorted(home.rglob("*"))):
        if p.is_file() and not p.is_symlink():
            link = into / f"{i}-{p.name}"
            os.link(p, link)
            links[link] = p.stat().st_size
    return links


def test_wipe_overwrites_every_file_then_removes_the_home(tmp_path):
    home, secrets = populated_home(tmp_path)
    names = {p.name for p in home.iterdir()}
    assert {"identity.key", "rooms.db", "counters.db", "replay.db"} <= names
    assert any(n.endswith("-wal") for n in names)
    before = raw_bytes(home)
    assert any(s in before for s in secrets)  # the room id at least: the search can see
    links = hard_links(home, tmp_path / "links")
    result = run("wipe", "--yes", "--home", str(home))
    assert result.exit_code == 0, result.output
    assert "overwritten and removed" in result.stdout
    assert not home.exists()
    for link, size in links.items():
        data = link.read_bytes()
        assert len(data) >= size  # overwritten in place, not just unlinked
        for secret in secrets:
            assert secret not in data, link.name
    one_line_exit_2(run("id", "show", "--home", str(home)), "relay id init")


def test_wipe_asks_unless_yes(tmp_path, monkeypatch):
    home, _ = populated_home(tmp_path)
    one_line_exit_2(run("wipe", "--home", str(home)), "--yes")
    assert (home / "identity.key").exists()
    monkeypatch.setattr(options, "interactive", lambda: True)
    kept = CliRunner().invoke(cli, ["wipe", "--home", str(home)], input="n\n")
    assert kept.exit_code == 1 and "Aborted" in kept.output and (home / "identity.key").exists()
    gone = CliRunner().invoke(cli, ["wipe", "--home", str(home)], input="y\n")
    assert gone.exit_code == 0 and not home.exists()


def test_wipe_refuses_what_is_not_a_home_and_never_follows_links(tmp_path):
    stranger = tmp_path / "documents"
    stranger.mkdir()
    (stranger / "letter.txt").write_text("keep me")
    one_line_exit_2(run("wipe", "--yes", "--home", str(stranger)), "does not look like")
    assert (stranger / "letter.txt").read_text() == "keep me"
    home = tmp_path / "h"
    Home(home).init_identity()
    os.symlink(stranger / "letter.txt", home / "planted")
    os.symlink(stranger, home / "planted-dir")
    assert run("wipe", "--yes", "--home", str(home)).exit_code == 0
    assert not home.exists() and (stranger / "letter.txt").read_text() == "keep me"


def test_duress_passphrase_wipes_and_fails_like_a_wrong_one(tmp_path):
    home, secrets = populated_home(tmp_path)
    size = (home / "identity.key").stat().st_size
    env = {"RELAY_PASSPHRASE": PASS, "RELAY_DURESS_PASSPHRASE": DURESS}
    assert run("id", "duress", "--home", str(home), env=env).exit_code == 0
    assert (home / "identity.key").stat().st_size == size  # the file does not tell
    refused_same = run("id", "duress", "--home", str(home), env={**env,
                       "RELAY_DURESS_PASSPHRASE": PASS})  # fmt: skip
    one_line_exit_2(refused_same, "must differ")
    # The real passphrase still opens everything; a wrong one changes nothing.
    assert run("room", "invite", "market", "--home", str(home), env=env).exit_code == 0
    wrong = run("id", "show", "--home", str(home), env={"RELAY_PASSPHRASE": "guess"})
    one_line_exit_2(wrong, "wrong passphrase")
    assert (home / "identity.key").exists()
    links = hard_links(home, tmp_path / "links")
    forced = run("id", "show", "--home", str(home), env={"RELAY_PASSPHRASE": DURESS})
    one_line_exit_2(forced, "wrong passphrase")
    assert forced.stderr == wrong.stderr and forced.stdout == wrong.stdout
    assert not home.exists()
    for link in links:
        data = link.read_bytes()
        assert not any(secret in data for secret in secrets)
    listed = run("room", "list", "--home", str(home))
    assert listed.exit_code == 0 and "no rooms yet" in listed.stdout  # an empty home


def test_changing_the_passphrase_keeps_the_duress_one(tmp_path):
    home = Home(tmp_path / "h", passphrase=lambda: PASS)
    home.init_identity(passphrase=PASS)
    home.set_duress(DURESS)
    home.set_passphrase("newer")
    assert keystore.is_protected(home.identity_path.read_bytes())
    with pytest.raises(keystore.WrongPassphrase):
        Home(tmp_path / "h", passphrase=lambda: DURESS).identity()
    assert not (tmp_path / "h").exists()
