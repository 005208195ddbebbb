"""`relay id` and `relay room` as a user meets them: real processes, one --home per person."""

import json
import os
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner

from relay.cli.main import cli


def relay(*args, input=None):
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "RELAY_HOME"},
    )


def ok(*args, input=None):
    out = relay(*args, input=input)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return out


def refused(*args, match, input=None):
    """Exit 2, exactly one line on stderr, no traceback."""
    out = relay(*args, input=input)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relay: error:"), out.stderr
    assert match in lines[0], lines[0]
    return out


def public_id(home):
    return json.loads(ok("id", "show", "--home", home, "--json").stdout)["public_id"]


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    """A moderator with a room, and two would-be members, each with an identity."""
    base = tmp_path_factory.mktemp("homes")
    mod, ana, ben = (str(base / n) for n in ("mod", "ana", "ben"))
    for home in (mod, ana, ben):
        ok("id", "init", "--home", home)
    created = json.loads(
        ok(
            "room",
            "create",
            "market",
            "--preset",
            "SHORT_TURBO",
            "--mode",
            "700c",
            "--home",
            mod,
            "--json",
        ).stdout
    )
    return {"mod": mod, "ana": ana, "ben": ben, "room": created}


def test_help_teaches_with_examples():
    """In-process (help needs no state): every command shows Examples."""
    runner = CliRunner()
    for cmd in ("id", "room"):
        group = cli.get_command(None, cmd)
        assert "Examples" in runner.invoke(cli, [cmd, "--help"]).output
        for sub in group.commands:
            out = runner.invoke(cli, [cmd, sub, "--help"])
            assert out.exit_code == 0 and "Examples" in out.output, (cmd, sub)
    assert "Examples" in ok("room", "join", "--help").stdout  # and through a real process


def test_id_init_show_and_private_files(tmp_path):
    home = tmp_path / "me"
    out = ok("id", "init", "--home", str(home)).stdout
    assert "fingerprint:" in out and "relayid1:" in out
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "identity.key").stat().st_mode) == 0o600
    shown = json.loads(ok("id", "show", "--home", str(home), "--json").stdout)
    assert shown["public_id"] in out and shown["fingerprint"] in out
    private = (home / "identity.key").read_bytes()
    assert private.hex() not in out and private[:32].hex() not in out
    refused("id", "init", "--home", str(home), match="--force")
    ok("id", "init", "--home", str(home), "--force")
    assert json.loads(ok("id", "show", "--home", str(home), "--json").stdout) != shown


def test_env_var_selects_the_home(tmp_path):
    env = dict(os.environ, RELAY_HOME=str(tmp_path / "env"))
    out = subprocess.run(
        [sys.executable, "-m", "relay", "id", "init"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0 and (tmp_path / "env" / "identity.key").exists()


def test_no_identity_is_a_clear_error(tmp_path):
    refused("id", "show", "--home", str(tmp_path / "none"), match="relay id init")
    refused("room", "create", "x", "--home", str(tmp_path / "none"), match="relay id init")


def test_create_records_settings_and_is_private(homes):
    room = homes["room"]
    assert (room["name"], room["role"], room["preset"], room["mode"], room["epoch"]) == (
        "market",
        "moderator",
        "SHORT_TURBO",
        "700C",
        0,
    )
    assert len(room["room_id"]) == 16
    db = os.path.join(homes["mod"], "rooms.db")
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    refused("room", "create", "market", "--home", homes["mod"], match="already a room")
    refused("room", "create", "x", "--preset", "NOPE", "--home", homes["mod"], match="preset")
    refused("room", "create", "x", "--mode", "42", "--home", homes["mod"], match="codec mode")


def test_sealed_invite_joins_only_its_member(homes):
    mod, ana, ben = homes["mod"], homes["ana"], homes["ben"]
    out = ok("room", "invite", "market", "--for", public_id(ana), "--home", mod)
    text = out.stdout.strip()
    assert text.startswith("relay1:") and "sealed for" in out.stderr
    refused("room", "join", text, "--home", ben, match="made for someone else")
    joined = ok("room", "join", text, "--home", ana).stdout
    mod_fp = json.loads(ok("id", "show", "--home", mod, "--json").stdout)["fingerprint"]
    assert "'market'" in joined and mod_fp in joined and "sealed for you" in joined
    listed = json.loads(ok("room", "list", "--home", ana, "--json").stdout)["rooms"]
    assert [(r["name"], r["role"], r["room_id"]) for r in listed] == [
        ("market", "member", homes["room"]["room_id"])
    ]
    # Ana is a member: she cannot invite.
    refused("room", "invite", "market", "--home", ana, match="only a moderator")
    # The moderator's roster now knows Ana, so her fingerprint works with --for.
    ana_fp = json.loads(ok("id", "show", "--home", ana, "--json").stdout)["fingerprint"]
    ok("room", "invite", "market", "--for", ana_fp, "--home", mod)
    # Her invite carried her key-tree path: the moderator's tree and her store agree.
    from relay.store.home import Home
    from relay.store.rooms import RoomStore

    room_id = bytes.fromhex(homes["room"]["room_id"])
    with RoomStore(Home(mod)) as ms, RoomStore(Home(ana)) as ans:
        tree, path = ms.key_state(room_id).tree, ans.key_state(room_id).path
        assert tree is not None and path is not None and len(tree) == 1
        (position,) = tree.leaves.values()
        assert path.position == position


def test_open_invite_warns_and_joins_from_stdin(homes, tmp_path):
    out = ok("room", "invite", homes["room"]["room_id"][:6], "--home", homes["mod"])
    assert "anyone who sees it" in out.stderr
    joiner = str(tmp_path / "joiner")
    ok("id", "init", "--home", joiner)
    ok("room", "join", "-", "--home", joiner, input=out.stdout)
    table = ok("room", "list", "--home", joiner).stdout
    assert "market" in table and homes["room"]["room_id"][:8] in table and "member" in table


def test_qr_is_printed_with_the_text(homes):
    out = ok("room", "invite", "market", "--qr", "--home", homes["mod"]).stdout
    lines = out.strip().splitlines()
    assert lines[-1].startswith("relay1:") and len(lines) > 20


def test_tampered_and_garbage_invites_refused(homes, tmp_path):
    text = ok("room", "invite", "market", "--home", homes["mod"]).stdout.strip()
    joiner = str(tmp_path / "j")
    ok("id", "init", "--home", joiner)
    i = len(text) // 2
    flipped = text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]
    refused("room", "join", flipped, "--home", joiner, match="invite")
    blob_i = len(text) - 100  # inside the room key / signature: certainly signed content
    flipped = text[:blob_i] + ("A" if text[blob_i] != "A" else "B") + text[blob_i + 1 :]
    refused("room", "join", flipped, "--home", joiner, match="signature does not verify")
    refused("room", "join", "hello", "--home", joiner, match="relay1:")
    refused("room", "join", "relay1:%%%", "--home", joiner, match="base64url")
    refused("room", "join", text[:60], "--home", joiner, match="cut short")
    refused("room", "join", "-", "--home", joiner, match="no invite", input="")
    assert json.loads(ok("room", "list", "--home", joiner, "--json").stdout) == {"rooms": []}


def test_unknown_room_and_leave(homes, tmp_path):
    refused("room", "invite", "markte", "--home", homes["mod"], match="did you mean 'market'")
    refused("room", "leave", "nowhere", "--home", homes["mod"], match="no room")
    home = str(tmp_path / "leaver")
    ok("id", "init", "--home", home)
    ok("room", "create", "temp", "--home", home)
    ok("room", "create", "keep", "--home", home)
    assert "left room 'temp'" in ok("room", "leave", "temp", "--home", home).stdout
    names = [
        r["name"] for r in json.loads(ok("room", "list", "--home", home, "--json").stdout)["rooms"]
    ]
    assert names == ["keep"]
    refused("room", "leave", "temp", "--home", home, match="no room")


def test_bad_public_id_for_invite(homes):
    refused(
        "room",
        "invite",
        "market",
        "--for",
        "relayid1:zzzz",
        "--home",
        homes["mod"],
        match="public id",
    )
    refused(
        "room", "invite", "market", "--for", "nobody", "--home", homes["mod"], match="public id"
    )
