"""`relay bridge` and `relay repeat` as a person meets them: what they say when they start,
rooms given by name (their rotating hints followed), and credentials never shown."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import ENV, invoke, ok, refused
from mosquitto import MOSQUITTO, Broker, free_port

from relay.core.crypto import HINT_EPOCH_SECONDS, RoomKeys
from relay.core.session import HINT_TOLERANCE
from relay.links.url import open_link, redact
from relay.runtime.bridge import BridgeLink, RoomFilter, follow_rooms, link_kind
from relay.runtime.clock import run
from relay.store.home import Home
from relay.store.rooms import find_room

PASSWORD = "pw-7Hq2-never-shown"


def relay(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


# --- saying what runs -------------------------------------------------------------------


def test_repeat_says_what_it_repeats_on_start() -> None:
    two = relay("repeat", "--link", "sim://say_a", "--link", "sim://say_b", "--duration", "0.2")
    assert two.returncode == 0, two.stderr
    first = two.stderr.splitlines()[0]
    assert first == (
        "relay repeat: repeating between sim://say_a and sim://say_b; running for 0.2 s"
    )
    one = relay("repeat", "--link", "sim://say_c", "--duration", "0.2")
    assert one.returncode == 0, one.stderr
    assert one.stderr.splitlines()[0].startswith(
        "relay repeat: store and forward on sim://say_c: every packet goes out twice"
    )


# --- rooms by name ----------------------------------------------------------------------


@pytest.fixture
def home_with_room(tmp_path: Path) -> Home:
    home = tmp_path / "bridge-home"
    ok("id", "init", "--home", str(home))
    ok("room", "create", "market", "--home", str(home))
    return Home(home)


def test_room_names_become_their_rotating_hints(home_with_room: Home) -> None:
    keys = RoomKeys(find_room(home_with_room, "market").key)
    rooms = RoomFilter({0x3F}, [keys], names=["market"])
    now = 1_800_001_000.0  # 1000 s into an hour
    expected = keys.hints_near(now, HINT_TOLERANCE) | {0x3F}
    assert rooms.hints(now) == expected and keys.hint(int(now // 3600)) in expected
    assert rooms.next_change(now) == (int(now // HINT_EPOCH_SECONDS) + 1) * HINT_EPOCH_SECONDS
    assert rooms.describe() == "room market, hint 3f"
    assert RoomFilter({0x3F}).next_change(now) is None  # fixed hints never change

    class FakeLink:
        def __init__(self) -> None:
            self.sets: list[tuple[float, frozenset[int]]] = []

        async def set_rooms(self, hints: frozenset[int]) -> None:
            self.sets.append((asyncio.get_running_loop().time(), hints))

    async def follow_for(seconds: float) -> FakeLink:
        loop = asyncio.get_running_loop()
        start = now - loop.time()
        link = FakeLink()
        task = asyncio.ensure_future(follow_rooms([link], rooms, clock=lambda: start + loop.time()))
        await asyncio.sleep(seconds)
        task.cancel()
        return link

    link = run(follow_for(3 * HINT_EPOCH_SECONDS), virtual=True)
    # One set at once, then one per hint epoch (hourly), each the hints of that hour.
    assert len(link.sets) == 4, link.sets
    for at, hints in link.sets:
        assert hints == rooms.hints(now + at), at


def test_bridge_takes_a_room_by_name(home_with_room: Home, mosquitto) -> None:
    home = str(home_with_room.path)
    done = relay(
        "bridge", "--link", "sim://named", "--mqtt", mosquitto.url, "--room", "market",
        "--duration", "0.3", "--home", home,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == (
        f"relay bridge: bridging sim://named to the broker {mosquitto.url}, room market; "
        "running for 0.3 s"
    )
    refused(
        "bridge", "--link", "sim://named", "--mqtt", mosquitto.url, "--room", "bazaar",
        "--home", home, match="not a room hint of 2 hex digits",
    )  # fmt: skip


# --- credentials never shown --------------------------------------------------------------


def test_a_bridge_run_never_shows_the_mqtt_password(tmp_path: Path) -> None:
    """Every way a bridge with a password can end — running through a broker restart with
    verbose logs and JSON, a wrong password, an unreachable broker, URLs given to the wrong
    option — and the link objects' repr: the password appears nowhere."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    broker = Broker(tmp_path, users={"island-a": PASSWORD})
    broker.start()
    good = f"mqtt://island-a:{PASSWORD}@127.0.0.1:{broker.port}"
    shown = f"mqtt://island-a:***@127.0.0.1:{broker.port}"
    outputs: list[str] = []
    try:
        for as_json in ("--json", None):
            args = ["--json"] if as_json else []
            proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "bridge", "--link", "sim://pw", "--mqtt", good,
                 "--duration", "3", "-v", *args],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
            )  # fmt: skip
            first = proc.stderr.readline()  # type: ignore[union-attr]  # the start line
            assert f"to the broker {shown}" in first, first
            broker.restart(down=0.5)  # logs "lost the broker", "reconnected"
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            outputs += [first, out, err]
            if as_json:
                stats = json.loads(out)
                assert set(stats["links"]) == {"sim://pw", shown}
                assert stats["links"][shown]["url"] == shown
            else:
                assert re.search(r"lost the broker|reconnect", err), err
                assert shown in out
        wrong = relay(
            "bridge", "--link", "sim://pw", "--mqtt",
            f"mqtt://island-a:{PASSWORD}x@127.0.0.1:{broker.port}", "--duration", "1", "-v",
        )  # fmt: skip
        assert wrong.returncode == 2 and "refused the login of user 'island-a'" in wrong.stderr
        outputs += [wrong.stdout, wrong.stderr]
    finally:
        broker.stop()
    dead = f"mqtt://island-a:{PASSWORD}@127.0.0.1:{free_port()}"
    for args, code in [
        (["bridge", "--link", "sim://pw", "--mqtt", dead, "--duration", "1", "-v"], 1),
        (["bridge", "--link", dead, "--mqtt", dead], 2),
        (["bridge", "--link", "sim://pw", "--mqtt", f"http://u:{PASSWORD}@h"], 2),
        (["repeat", "--link", "sim://pw", "--link", dead], 2),
        (["listen", "market", "--link", dead, "--home", str(tmp_path / "nobody")], 2),
    ]:
        result = invoke(*args)  # in-process: exceptions and logs are captured too
        assert result.exit_code == code, (args, result.output)
        outputs += [result.stdout, result.stderr, repr(result.exception)]

    async def reprs() -> list[str]:
        link = open_link(good)
        try:
            named = BridgeLink(redact(good), link, link_kind(good))
            return [repr(link), str(link), repr(named), link.url]
        finally:
            await link.close()

    outputs += asyncio.run(reprs())
    leaked = [text for text in outputs if PASSWORD in text]
    assert not leaked, leaked
