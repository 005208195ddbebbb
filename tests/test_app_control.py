"""The local control socket behind `relay mod`: the request parser never fails on bad
input, long home paths work, a stale socket is replaced, a second server stands aside."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.app.control import ControlServer, NotRunning, control_path, request
from relay.errors import UsageError
from relay.store.home import Home

ROOM = bytes(range(16))


async def echo(action: str, member: str | None, seconds: int | None) -> str:
    if member == "bad":
        raise UsageError("no member 'bad' in this room")
    return f"{action} {member} {seconds}"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_any_request_gets_an_answer_never_an_exception(line: bytes) -> None:
    server = ControlServer(Home("/nonexistent"), ROOM, echo)
    reply = asyncio.run(server._answer(line))
    assert isinstance(reply, dict) and set(reply) in ({"ok", "error"}, {"ok", "message"})


@given(
    st.fixed_dictionaries(
        {"action": st.text(max_size=10)},
        optional={
            "member": st.none() | st.text(max_size=10) | st.integers(),
            "seconds": st.none() | st.integers() | st.floats() | st.booleans() | st.text(),
        },
    )
)
@settings(max_examples=200, deadline=None)
def test_well_formed_requests_reach_the_handler(body: dict) -> None:
    server = ControlServer(Home("/nonexistent"), ROOM, echo)
    reply = asyncio.run(server._answer(json.dumps(body).encode()))
    member, seconds = body.get("member"), body.get("seconds")
    valid = isinstance(member, str | None) and (
        seconds is None or (type(seconds) is int and 0 < seconds < 65536)
    )
    if not valid:
        assert reply == {"ok": False, "error": "malformed request"}
    elif member == "bad":
        assert reply == {"ok": False, "error": "no member 'bad' in this room"}
    else:
        assert reply == {"ok": True, "message": f"{body['action']} {member} {seconds}"}


def test_a_long_home_path_a_stale_socket_and_a_second_server(tmp_path) -> None:
    home = Home(tmp_path / ("x" * 60) / ("y" * 60))
    home.ensure()
    path = control_path(home, ROOM)
    assert len(os.fsencode(path)) > 108  # too long for sockaddr_un as it is
    with pytest.raises(NotRunning):
        request(home, ROOM, "mute", "ana")

    async def scenario() -> None:
        path.parent.mkdir(mode=0o755)
        path.write_text("left behind")  # a killed moderator's socket file
        first = ControlServer(home, ROOM, echo)
        assert await first.start()
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700  # tightened
        second = ControlServer(home, ROOM, echo)
        assert not await second.start()  # the first one answers: it stands aside
        reply = await asyncio.to_thread(request, home, ROOM, "grant", "ana", 30)
        assert reply == {"ok": True, "message": "grant ana 30"}
        reply = await asyncio.to_thread(request, home, ROOM, "mute", "bad")
        assert reply == {"ok": False, "error": "no member 'bad' in this room"}
        assert first.served == 1
        await first.close()
        assert not path.exists()

    asyncio.run(scenario())
    with pytest.raises(NotRunning):
        request(home, ROOM, "mute", "ana")
