"""Meshtastic: the real meshtastic library and relay's links against the emulated mesh.

The emulator runs on its own event loop thread (a device beside its host); the library's
clients run in the test thread or behind relay's links. Clients are closed before the
emulator (the library's TCP client reconnects on EOF).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("meshtastic")

from click.testing import CliRunner
from meshtastic.mesh_interface import MeshInterface
from meshtastic.protobuf import mesh_pb2
from meshtastic.serial_interface import SerialInterface
from meshtastic.tcp_interface import TCPInterface
from pubsub import pub

from relay.cli.main import cli
from relay.emulate.meshtastic import EmulatorThread
from relay.emulate.meshtastic_air import Identity, decode_air, encode_air
from relay.emulate.meshtastic_stream import StreamDecoder, frame
from relay.errors import LinkError, UsageError
from relay.links.meshtastic.link import MeshtasticLink, parse_url
from relay.links.url import open_link
from relay.radio.profiles import preset

PRESET = "SHORT_TURBO"  # the fastest air: keeps the file quick


@pytest.fixture
def mesh() -> Iterator[EmulatorThread]:
    emu = EmulatorThread(nodes=2, preset=PRESET)
    try:
        yield emu
    finally:
        emu.close()


def tcp_url(port: int, query: str = "") -> str:
    return f"meshtastic+tcp://127.0.0.1:{port}" + (f"?{query}" if query else "")


async def off_loop(emu: EmulatorThread, fn: Any, *args: Any) -> Any:
    """Drive the emulator from async test code without blocking this loop."""
    return await asyncio.to_thread(emu.run, fn, *args)


async def take(link: Any, n: int, timeout: float = 10) -> list[bytes]:
    return [(await asyncio.wait_for(link.recv(), timeout)).data for _ in range(n)]


async def take_until_quiet(link: Any, quiet: float) -> list[bytes]:
    out = []
    while True:
        try:
            out.append((await asyncio.wait_for(link.recv(), quiet)).data)
        except TimeoutError:
            return out


class Heard:
    """A pubsub listener; a bound method kept alive by the test (pubsub holds it weakly)."""

    def __init__(self) -> None:
        self.got: list[tuple[Any, bytes]] = []

    def on_data(self, packet: dict[str, Any], interface: Any) -> None:
        self.got.append((interface, packet["decoded"]["payload"]))

    def wait(self, n: int, timeout: float = 15) -> list[tuple[Any, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.got


@pytest.fixture
def heard() -> Iterator[Heard]:
    h = Heard()
    pub.subscribe(h.on_data, "meshtastic.receive.data.PRIVATE_APP")
    yield h
    pub.unsubscribe(h.on_data, "meshtastic.receive.data.PRIVATE_APP")


# --- sans-I/O pieces -----------------------------------------------------------------------


def _parse(body: bytes) -> bytes | None:
    return body if body.startswith(b"ok") else None


def test_stream_decoder_skips_junk_and_finds_frames_behind_it() -> None:
    dec = StreamDecoder(_parse)
    stream = (
        b"\xc3" * 32  # a client's wake-up
        + b"firmware log line\r\n"
        + b"\x94\xc3\x07\xff"  # oversize header
        + frame(b"ok-1")
        + b"\x94\xc3\x00\x20ok"  # truncated: claims 32 bytes, the next frame follows
        + frame(b"ok-2")
        + frame(b"junk")
        + frame(b"ok-3")
    )
    got = [m for i in range(0, len(stream), 5) for m in dec.feed(stream[i : i + 5], now=1.0)]
    assert got == [b"ok-1"]  # the rest waits behind the truncated frame...
    assert dec.expire(now=1.2) == []
    assert dec.expire(now=1.6) == [b"ok-2", b"ok-3"]  # ...until it is given up on
    assert dec.feed(b"\x94\xc3\x00\x10ok" + frame(b"ok-4"), now=2.0) == []
    assert dec.close() == [b"ok-4"]  # the line goes dead: what was buried still counts
    c = dec.counters
    assert (c.frames, c.wake_bytes, c.oversize, c.truncated) == (4, 32, 1, 2)
    assert c.garbage_bytes >= len(b"firmware log line\r\n") and c.bad_frames == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.binary(max_size=40).map(lambda b: b.replace(b"\x94", b"")),
            st.binary(min_size=1, max_size=60).map(lambda b: b"ok" + b),
        ),
        max_size=8,
    ),
    st.integers(1, 64),
)
def test_stream_decoder_recovers_every_frame_from_noise(
    parts: list[tuple[bytes, bytes]], chunk: int
) -> None:
    stream = b"".join(noise + frame(body) for noise, body in parts)
    dec = StreamDecoder(_parse)
    got = [m for i in range(0, len(stream), chunk) for m in dec.feed(stream[i : i + chunk])]
    assert got == [body for _, body in parts]


def test_air_frame_round_trip_keeps_what_the_client_reads() -> None:
    pkt = mesh_pb2.MeshPacket(to=0xFFFFFFFF, id=0x1234, channel=2, hop_limit=3, want_ack=True)
    pkt.decoded.portnum = 256
    pkt.decoded.payload = bytes(range(233))
    air = encode_air(pkt, sender=Identity(0x5E1A0001, "a", "A").num)
    assert len(air) == 16 + len(pkt.decoded.SerializeToString()) <= 255
    back = decode_air(air)
    assert getattr(back, "from") == 0x5E1A0001
    assert (back.to, back.id, back.channel, back.hop_limit, back.want_ack) == (
        0xFFFFFFFF,
        0x1234,
        2,
        3,
        True,
    )
    assert back.decoded.payload == pkt.decoded.payload
    with pytest.raises(ValueError):
        decode_air(b"short")


# --- URLs ----------------------------------------------------------------------------------


def test_url_options() -> None:
    o = parse_url("meshtastic:///dev/ttyACM0")
    assert (o.tcp, o.device, o.port, o.channel, o.want_ack, o.hop_limit) == (
        False,
        "/dev/ttyACM0",
        256,
        0,
        False,
        None,
    )
    o = parse_url("meshtastic+tcp://node.local?port=PRIVATE_APP&channel=2&hop_limit=1&want_ack=on")
    assert (o.tcp, o.device, o.tcp_port, o.channel, o.hop_limit, o.want_ack) == (
        True,
        "node.local",
        4403,
        2,
        1,
        True,
    )
    o = parse_url("meshtastic+tcp://10.0.0.5:4404?port=300&preset=short-fast&queue=4&timeout=3")
    assert (o.tcp_port, o.port, o.preset, o.queue, o.timeout) == (4404, 300, "SHORT_FAST", 4, 3.0)


@pytest.mark.parametrize(
    "url",
    [
        "meshtastic://ttyACM0",  # two slashes: a host, not a path
        "meshtastic+tcp://",
        "meshtastic+tcp://host/path",
        "meshtastic+tcp://host:99999",
        "meshtastic:///dev/x?channel=8",
        "meshtastic:///dev/x?hop_limit=-1",
        "meshtastic:///dev/x?port=NOT_A_PORT",
        "meshtastic:///dev/x?port=0",
        "meshtastic:///dev/x?want_ack=maybe",
        "meshtastic:///dev/x?preset=FASTEST",
        "meshtastic:///dev/x?queue=0",
        "meshtastic:///dev/x?timeout=abc",
        "meshtastic:///dev/x?colour=red",
        "meshtastic:///dev/x?channel=1&channel=2",
    ],
)
def test_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        open_link(url)


# --- the real library against the emulator --------------------------------------------------


def test_real_tcp_interfaces_carry_233_bytes_and_refuse_234(
    mesh: EmulatorThread, heard: Heard
) -> None:
    ports = [mesh.run(mesh.mesh.serve_tcp, i) for i in range(2)]
    a = TCPInterface("127.0.0.1", portNumber=ports[0])
    b = TCPInterface("127.0.0.1", portNumber=ports[1])
    try:
        assert a.myInfo.my_node_num == mesh.mesh.nodes[0].ident.num
        assert set(a.nodes) == {"!5e1a0001", "!5e1a0002"}
        payload = bytes(range(233))
        a.sendData(payload)
        assert heard.wait(1) == [(b, payload)]
        with pytest.raises(MeshInterface.MeshInterfaceError):
            a.sendData(payload + b"!")
    finally:
        a.close()
        b.close()


def test_real_serial_interface_over_a_pty(mesh: EmulatorThread, heard: Heard) -> None:
    device = mesh.run(mesh.mesh.serve_pty, 0)
    port = mesh.run(mesh.mesh.serve_tcp, 1)
    serial_if = SerialInterface(device)
    tcp_if = TCPInterface("127.0.0.1", portNumber=port)
    try:
        assert serial_if.myInfo.my_node_num == mesh.mesh.nodes[0].ident.num
        serial_if.sendData(b"from the usb node")
        assert heard.wait(1) == [(tcp_if, b"from the usb node")]
        tcp_if.sendData(b"from the wifi node")
        assert heard.wait(2)[1] == (serial_if, b"from the wifi node")
    finally:
        serial_if.close()
        tcp_if.close()


# --- relay's links -------------------------------------------------------------------------


def test_links_exchange_relay_sized_datagrams(mesh: EmulatorThread) -> None:
    ports = [mesh.run(mesh.mesh.serve_tcp, i) for i in range(2)]

    async def main() -> None:
        a = open_link(tcp_url(ports[0]))
        b = open_link(tcp_url(ports[1], "channel=0&hop_limit=2"))
        assert isinstance(a, MeshtasticLink) and a.mtu == 233
        try:
            await asyncio.gather(a.wait_connected(10), b.wait_connected(10))
            assert a.preset == PRESET  # learnt from the node's LoRa config
            sizes = [1, 16, 100, 233]
            for n in sizes:
                await a.send(bytes([n]) * n)
                await b.send(bytes([n + 1]) * n)
            assert await take(b, 4) == [bytes([n]) * n for n in sizes]
            assert await take(a, 4) == [bytes([n + 1]) * n for n in sizes]
            with pytest.raises(UsageError):
                await a.send(bytes(234))
            assert a.stats.refused == 1 and a.stats.sent == 4 and b.stats.received == 4
            assert a.airtime(233) == pytest.approx(preset(PRESET).airtime(233))
            assert a.stats.airtime_s == pytest.approx(sum(a.airtime(n) for n in sizes))
        finally:
            await a.close()
            await b.close()
        with pytest.raises(LinkError):
            await a.recv()
        with pytest.raises(LinkError):
            await a.send(b"x")

    asyncio.run(main())


def test_burst_of_50_arrives_in_order(mesh: EmulatorThread) -> None:
    ports = [mesh.run(mesh.mesh.serve_tcp, i) for i in range(2)]

    async def main() -> None:
        async with open_link(tcp_url(ports[0])) as a, open_link(tcp_url(ports[1])) as b:
            await asyncio.gather(a.wait_connected(10), b.wait_connected(10))
            sent = [i.to_bytes(2, "big") * 20 for i in range(50)]
            for d in sent:
                await a.send(d)
            first = await asyncio.wait_for(b.recv(), 10)
            assert (first.data, first.rssi, first.snr) == (sent[0], -40, 10.0)
            assert await take(b, 49) == sent[1:]
            await a.drain()
            assert a.stats.sent == 50 and a.queued == 0

    asyncio.run(main())
    s = mesh.mesh.summary()
    assert s["packets_in"] == s["air_delivered"] == 50 and s["air_collisions"] == 0


# --- faults --------------------------------------------------------------------------------


def test_tcp_server_restart_mid_stream(mesh: EmulatorThread) -> None:
    ports = [mesh.run(mesh.mesh.serve_tcp, i) for i in range(2)]
    total = 50

    async def main() -> tuple[list[int], Any, Any]:
        async with open_link(tcp_url(ports[0], "queue=16")) as a, open_link(tcp_url(ports[1])) as b:
            await asyncio.gather(a.wait_connected(10), b.wait_connected(10))

            async def stream() -> None:
                for i in range(total):
                    await a.send(i.to_bytes(2, "big") * 10)
                    await asyncio.sleep(0.04)

            sender = asyncio.create_task(stream())
            await asyncio.sleep(0.5)
            for i in range(2):
                await off_loop(mesh, mesh.mesh.stop_node, i)
            await asyncio.sleep(1.3)  # longer than the library's own 1 s reconnect
            for i in range(2):
                await off_loop(mesh, mesh.mesh.serve_tcp, i, "127.0.0.1", ports[i])
            await sender
            await asyncio.wait_for(a.drain(), 10)
            got = [int.from_bytes(d[:2], "big") for d in await take_until_quiet(b, 1.5)]
            return got, a.stats, b.stats

    got, sa, sb = asyncio.run(main())
    s = mesh.mesh.summary()
    assert got == sorted(set(got)), "in order, no duplicates"
    assert got[-1] == total - 1, "the stream resumed"
    assert sa.extra["reconnects"] >= 1 and sb.extra["reconnects"] >= 1
    missing = total - len(got)
    accounted = (
        sa.extra.get("dropped_while_down", 0)
        + s["no_client"]  # heard while the receiving client was reconnecting
        + s["dropped_on_stop"]
        + sa.extra.get("send_failed", 0)
    )
    assert missing <= accounted <= missing + sa.extra.get("resent", 0)


def test_garbage_on_the_stream_is_skipped_and_counted(mesh: EmulatorThread) -> None:
    ports = [mesh.run(mesh.mesh.serve_tcp, i) for i in range(2)]
    pkt = mesh_pb2.ToRadio()
    pkt.packet.to = 0xFFFFFFFF
    pkt.packet.id = 77
    pkt.packet.decoded.portnum = 256
    pkt.packet.decoded.payload = b"survivor"

    async def main() -> None:
        async with open_link(tcp_url(ports[0])) as a, open_link(tcp_url(ports[1])) as b:
            await asyncio.gather(a.wait_connected(10), b.wait_connected(10))
            # client -> node: a rogue program writes junk, then one good frame, then dies
            with socket.create_connection(("127.0.0.1", ports[0])) as raw:
                raw.sendall(
                    b"\xc3" * 32
                    + b"AT+RESET\r\n"
                    + os.urandom(64).replace(b"\x94", b"")
                    + b"\x94\xc3\x7f\xff"
                    + frame(b"\xff\xff\xff")  # a frame that is not a ToRadio
                    + b"\x94\xc3\x00\x30half"
                    + frame(pkt.SerializeToString())
                    + b"\x94\xc3\x00\x40cut"
                )
            assert await take(b, 1) == [b"survivor"]
            # node -> client: noise between frames while a stream flows
            for i in range(10):
                if i % 3 == 0:
                    noise = b"INFO | boot noise\r\n\x00\xff\x94\xc3\x00\x03xyz"
                    await asyncio.to_thread(mesh.call, mesh.mesh.inject, 1, noise)
                await a.send(bytes([i]) * 30)
            assert await take(b, 10) == [bytes([i]) * 30 for i in range(10)]

    asyncio.run(main())
    s = mesh.mesh.summary()
    assert s["stream_garbage_bytes"] >= len(b"AT+RESET\r\n")
    assert s["stream_oversize"] >= 1 and s["stream_bad_frames"] >= 1
    assert s["stream_truncated"] == 2  # one hid the good frame, one was cut by the hang-up


def test_pty_vanishes_and_comes_back(mesh: EmulatorThread, tmp_path: Any) -> None:
    device = str(tmp_path / "ttyMESH0")
    mesh.run(mesh.mesh.serve_pty, 0, device)
    port = mesh.run(mesh.mesh.serve_tcp, 1)

    async def main() -> None:
        async with (
            open_link(f"meshtastic://{device}?queue=4") as a,
            open_link(tcp_url(port)) as b,
        ):
            await asyncio.gather(a.wait_connected(10), b.wait_connected(10))
            await a.send(b"before")
            assert await take(b, 1) == [b"before"]
            await off_loop(mesh, mesh.mesh.stop_node, 0)  # unplugged
            while a.connected:
                await asyncio.sleep(0.05)
            for i in range(6):
                await a.send(bytes([i]) * 20)  # accepted; the oldest two overflow
                await asyncio.sleep(0.1)
            assert not a.connected and a.stats.extra["connection_lost"] == 1
            assert a.stats.extra["dropped_while_down"] == 2
            await off_loop(mesh, mesh.mesh.serve_pty, 0, device)  # plugged back in
            await a.wait_connected(10)
            assert await take(b, 4) == [bytes([i]) * 20 for i in range(2, 6)]
            await a.drain()  # serial: the library returns 0.1 s after the bytes left
            assert a.stats.extra["reconnects"] == 1 and a.stats.sent == 5

    asyncio.run(main())


def test_unreachable_node_queues_drops_oldest_and_closes_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here

    async def main() -> None:
        link = open_link(tcp_url(port, "queue=3"))
        for i in range(5):
            await link.send(bytes([i]))
        with pytest.raises(LinkError):
            await link.wait_connected(0.6)
        assert link.stats.extra["dropped_while_down"] == 2
        assert link.stats.extra["connect_failures"] >= 1
        started = time.monotonic()
        await link.close()
        assert time.monotonic() - started < 1
        assert link.stats.extra["discarded_on_close"] == 3

    asyncio.run(main())


def test_cli_emulate_meshtastic() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["emulate", "meshtastic", "--tcp", "0", "--duration", "0.2"])
    assert result.exit_code == 0, result.output
    assert result.output.count("meshtastic+tcp://127.0.0.1:") == 2
    result = runner.invoke(
        cli, ["emulate", "meshtastic", "--pty", "--nodes", "1", "--duration", "0"]
    )
    assert result.exit_code == 0 and "meshtastic:///dev/" in result.output
    result = runner.invoke(cli, ["emulate", "meshtastic", "--tcp", "1", "--pty"])
    assert result.exit_code == 2 and "not both" in result.output
    assert "meshtastic" in runner.invoke(cli, ["emulate", "--help"]).output
