"""`relay broker`: the embedded MQTT 3.1.1 broker, with real mqtt:// links through it."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from mosquitto import free_port

from relay.links.mqtt import MqttLink, open_url

pytest.importorskip("amqtt")


def relay(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def relay_broker() -> Iterator[str]:
    """`relay broker` as a subprocess on a free port; yields its URL once it listens."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli.main", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the broker listens
        assert f"listening on mqtt://127.0.0.1:{port}" in line, (line, proc.stderr.read())
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        assert "Traceback" not in err, err
        assert "stopped" in out


def packet(hint: int, seq: int) -> bytes:
    return bytes([0x40, hint]) + seq.to_bytes(4, "big") + bytes(10)


def test_two_links_meet_on_relay_broker_and_never_hear_themselves(relay_broker: str) -> None:
    async def main() -> tuple[MqttLink, MqttLink]:
        a, b = open_url(relay_broker + "?linger=0"), open_url(relay_broker)
        async with a, b:
            await a.connect()
            await b.connect()
            for i in range(30):
                await a.send(packet(0x3F, i))
                await b.send(packet(0x3F, 100 + i))
            got_b = [(await b.recv()).data for _ in range(30)]
            got_a = [(await a.recv()).data for _ in range(30)]
            assert got_b == [packet(0x3F, i) for i in range(30)]
            assert got_a == [packet(0x3F, 100 + i) for i in range(30)]
            await asyncio.sleep(0.3)  # an echo would have arrived by now
            assert a.pending() == b.pending() == 0
            return a, b

    a, b = asyncio.run(asyncio.wait_for(main(), 20.0))
    # amqtt speaks MQTT 3.1.1 only: the links fell back, and the broker's echoes of their
    # own batches were recognised by origin and dropped, counted.
    assert not a.mqtt5 and not b.mqtt5
    assert a.stats.extra.get("own_echo", 0) >= 1 and b.stats.extra.get("own_echo", 0) >= 1
    assert a.stats.sent == a.stats.received == b.stats.sent == b.stats.received == 30


def test_busy_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = relay("broker", "--port", str(port))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.strip().count("\n") == 0
    assert f"port {port} on 127.0.0.1 is already in use" in out.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "0"], "--port"),
        (["--port", "http"], "--port"),
        (["--host", "no-such-host.invalid"], "not an address of this machine"),
        (["--bogus"], "No such option"),
    ],
)
def test_bad_flags_exit_2_without_traceback(args: list[str], needle: str) -> None:
    out = relay("broker", *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert needle in out.stderr and "Traceback" not in out.stderr


def test_help_and_duration() -> None:
    out = relay("broker", "--help")
    assert out.returncode == 0 and "Examples:" in out.stdout and "--port" in out.stdout
    port = free_port()
    t0 = time.monotonic()
    out = relay("broker", "--port", str(port), "--duration", "0.5")
    assert out.returncode == 0, out.stderr
    assert f"mqtt://127.0.0.1:{port}" in out.stdout and "stopped" in out.stdout
    assert time.monotonic() - t0 < 15


def test_origins_rotate_with_the_hint_epoch_and_echoes_are_still_recognised(
    relay_broker: str,
) -> None:
    """On a 3.1.1 broker (echoes come back): a link publishes in one hint epoch, then in the
    next; the listening bridge link sees two unrelated origins, the publisher still drops
    both echoes as its own, nothing is lost or doubled."""
    from relay.bridge.envelope import Envelope
    from relay.core.crypto import HINT_EPOCH_SECONDS

    now = [1_700_000_000.0]

    async def main() -> tuple[MqttLink, list[Envelope]]:
        a, b = open_url(relay_broker + "?linger=0"), open_url(relay_broker)
        b.carry_envelopes(0xB)
        a.clock = b.clock = lambda: now[0]
        async with a, b:
            await a.connect()
            await b.connect()
            for i in range(5):
                await a.send(packet(0x3F, i))
            first = [Envelope.parse((await b.recv()).data) for _ in range(5)]
            now[0] += HINT_EPOCH_SECONDS
            for i in range(5, 10):
                await a.send(packet(0x3F, i))
            second = [Envelope.parse((await b.recv()).data) for _ in range(5)]
            await asyncio.sleep(0.3)  # an echo would have arrived by now
            assert a.pending() == b.pending() == 0
            return a, first + second

    a, got = asyncio.run(asyncio.wait_for(main(), 20.0))
    assert [e.packet for e in got] == [packet(0x3F, i) for i in range(10)]
    origins = [e.gateway for e in got]
    assert len(set(origins[:5])) == 1 and len(set(origins[5:])) == 1
    assert origins[0] != origins[5]
    assert a.stats.extra.get("own_echo", 0) >= 2  # each epoch's echoes recognised
    assert a.stats.received == 0
