"""mqtt:// links through a real mosquitto (tests/mosquitto.py; skipped only without it)."""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest

from relay.bridge.envelope import Envelope
from relay.errors import LinkError, PacketError, UsageError
from relay.links.mqtt import (
    MAX_RX_QUEUE,
    MqttLink,
    decode_batch,
    encode_batches,
    open_url,
    redact,
    topic_for,
)
from relay.links.url import open_link


def packet(hint: int, seq: int) -> bytes:
    """A stand-in for a sealed packet: byte 1 is the room hint, then a sequence number."""
    return bytes([0x40, hint]) + seq.to_bytes(4, "big") + bytes(10)


def seq_of(data: bytes) -> int:
    return int.from_bytes(data[2:6], "big")


def run(coro, timeout: float = 12.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def fast(link: MqttLink) -> MqttLink:
    link.backoff_min = 0.05
    link.backoff_max = 0.3
    return link


def test_two_links_exchange_and_never_hear_themselves(mosquitto) -> None:
    async def main() -> None:
        async with (
            open_link(mosquitto.url + "?client=a") as a,
            open_link(mosquitto.url + "?client=b") as b,
        ):
            await a.connect()
            await b.connect()
            for i in range(20):
                await a.send(packet(0x3F, i))
                await b.send(packet(0x3F, 1000 + i))
            got_b = [seq_of((await b.recv()).data) for _ in range(20)]
            got_a = [seq_of((await a.recv()).data) for _ in range(20)]
            assert got_b == list(range(20))
            assert got_a == [1000 + i for i in range(20)]
            await asyncio.sleep(0.2)  # anything echoed back would have arrived by now
            assert a.pending() == 0 and b.pending() == 0
            assert a.stats.sent == a.stats.received == 20
            assert b.stats.sent == b.stats.received == 20
            assert a.mtu == 4096 and a.airtime(4096) == 0.0

    run(main())


def test_one_topic_per_room_hint(mosquitto) -> None:
    async def main() -> None:
        async with (
            open_link(mosquitto.url + "?room=0a") as only_a,
            open_link(mosquitto.url + "?room=0a,0b") as both,
            open_link(mosquitto.url) as sender,
        ):
            assert isinstance(only_a, MqttLink)
            assert only_a.topics() == ["relay/v2/0a"]
            await only_a.connect()
            await both.connect()
            await sender.connect()
            await sender.send(packet(0x0B, 1))
            await sender.send(packet(0x0A, 2))
            await sender.send(packet(0x0C, 3))
            assert seq_of((await only_a.recv()).data) == 2
            assert [seq_of((await both.recv()).data) for _ in range(2)] == [1, 2]
            await asyncio.sleep(0.2)
            assert only_a.pending() == 0 and both.pending() == 0
            # rooms can change while running (hints rotate hourly)
            await only_a.set_rooms([0x0C])
            await sender.send(packet(0x0A, 4))
            await sender.send(packet(0x0C, 5))
            assert seq_of((await only_a.recv()).data) == 5
            await asyncio.sleep(0.1)
            assert only_a.pending() == 0

    run(main())


def test_broker_restart_mid_stream_is_survived_and_counted(mosquitto, caplog) -> None:
    caplog.set_level(logging.INFO, logger="relay.links.mqtt")
    total = 60

    async def main() -> tuple[MqttLink, MqttLink, list[int]]:
        a = fast(open_url(mosquitto.url + "?client=tx&queue=8"))
        b = fast(open_url(mosquitto.url + "?client=rx"))
        got: list[int] = []

        async def listen() -> None:
            while True:
                got.append(seq_of((await b.recv()).data))

        async with a, b:
            await a.connect()
            await b.connect()
            listener = asyncio.create_task(listen())
            for i in range(total):
                if i == 20:
                    await a.drain()
                    await asyncio.to_thread(mosquitto.stop)
                    while a.connected or b.connected:
                        await asyncio.sleep(0.01)
                if i == 40:  # 20 sent while down, into a queue of 8: 12 dropped, counted
                    await asyncio.to_thread(mosquitto.start)
                    while not (a.connected and b.connected):
                        await asyncio.sleep(0.01)
                    await a.drain()
                await a.send(packet(0x3F, i))
            await a.drain()
            while not got or got[-1] != total - 1:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            listener.cancel()
            return a, b, got

    a, b, got = run(main())
    # nothing accepted is unaccounted for at the sender
    assert a.stats.sent + a.stats.dropped == total
    assert a.stats.dropped == a.stats.extra["tx_dropped"] == 12
    assert a.stats.extra["queued_while_down"] == 20
    # what followed the reconnect is counted as at risk (a peer may not be back yet)
    assert a.stats.extra["sent_after_reconnect"] >= 8
    assert a.stats.extra["reconnects"] >= 1 and b.stats.extra["reconnects"] >= 1
    # before and after the outage, everything; during it, the 8 queued ones at most
    assert got[:20] == list(range(20))
    assert got[-20:] == list(range(40, 60))
    middle = set(got[20:-20])
    assert middle <= set(range(32, 40))
    assert b.stats.received == len(got)
    assert "dropped the oldest" in caplog.text
    assert "lost the broker" in caplog.text


def test_unreachable_broker_is_a_link_error() -> None:
    from mosquitto import free_port

    async def main() -> None:
        link = open_url(f"mqtt://127.0.0.1:{free_port()}")
        with pytest.raises(LinkError, match="cannot reach the MQTT broker"):
            await link.send(packet(1, 1))
        await link.close()

    run(main())


def test_send_size_limits(mosquitto) -> None:
    async def main() -> None:
        async with open_link(mosquitto.url) as link:
            with pytest.raises(UsageError, match="MTU"):
                await link.send(bytes(4097))
            with pytest.raises(UsageError, match="room hint"):
                await link.send(b"\x01")
            assert link.stats.refused == 2

    run(main())


@pytest.mark.parametrize(
    "url, match",
    [
        ("mqtt://", "no broker host"),
        ("mqtt://host:99999", "bad MQTT URL"),
        ("mqtt://host?bogus=1", "unknown mqtt:// option"),
        ("mqtt://host?room=3", "2 hex digits"),
        ("mqtt://host?room=zz", "not hex"),
        ("mqtt://host?prefix=a/%2B", "prefix"),
        ("mqtt://host?prefix=", "prefix"),
        ("mqtt://host?queue=0", "queue"),
        ("mqtt://host?qos=2", "qos"),
        ("mqtt://host?qos=x", "qos"),
        ("mqtt://host?linger=-1", "linger"),
        ("mqtt://host?linger=500", "linger"),
        ("mqtt://host?ca=/x.pem", "mqtts"),
        ("mqtt://host/path", "unexpected path"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        open_link(url)


def test_url_parts_and_password_is_never_shown(tmp_path) -> None:
    ca = ssl.get_default_verify_paths().cafile
    if ca is None:
        pytest.skip("no system CA bundle to stand in for a broker's CA")
    link = open_url(f"mqtts://alice:s%40cret@broker.example?ca={ca}&room=3f,A0&prefix=x/y")
    assert link.tls and link.port == 8883 and link.ca == ca
    assert link.username == "alice" and link._password == "s@cret"
    assert "cret" not in link.url and "cret" not in repr(link)
    assert link.url.startswith("mqtts://alice:***@broker.example")
    assert link.rooms == {0x3F, 0xA0}
    assert link.topics() == ["x/y/v2/3f", "x/y/v2/a0"]
    assert topic_for("relay", 7) == "relay/v2/07"
    plain = open_url("mqtt://127.0.0.1")
    assert plain.port == 1883 and not plain.tls and plain.topics() == ["relay/v2/+"]
    assert redact("mqtt://u:p@h:1") == "mqtt://u:***@h:1"
    # A CA file that is missing or is not a CA bundle is the user's to fix, said at once.
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    for bad in ("/no/such/ca.pem", str(not_pem)):
        with pytest.raises(UsageError, match="cannot use it as a CA bundle"):
            open_url(f"mqtts://broker.example?ca={bad}")


def test_batch_format_round_trip_and_splitting() -> None:
    records = [(i % 3, packet(0x3F, i)) for i in range(100)]
    payloads = encode_batches(0xDEADBEEF, records, limit=300)
    assert len(payloads) > 1 and all(len(p) <= 300 for p in payloads)
    assert payloads[0][:5] == bytes([2]) + (0xDEADBEEF).to_bytes(4, "big")
    back = []
    for p in payloads:
        origin, recs = decode_batch(p)
        assert origin == 0xDEADBEEF
        back.extend(recs)
    assert back == records
    for bad in (b"", bytes([2, 0, 0, 0, 1]), bytes([9, 0, 0, 0, 1, 0, 0, 2, 1, 2])):
        with pytest.raises(PacketError):
            list(decode_batch(bad)[1])
    with pytest.raises(PacketError, match="does not fit"):  # length runs past the end
        list(decode_batch(bytes([2, 0, 0, 0, 1, 0, 0, 9, 1, 2]))[1])


@pytest.mark.parametrize("qos", [0, 1])
def test_batches_many_packets_per_message_in_order(mosquitto, qos: int) -> None:
    async def main() -> tuple[MqttLink, MqttLink, list[bytes]]:
        a = open_url(mosquitto.url + f"?qos={qos}&linger=50")
        b = open_url(mosquitto.url + f"?qos={qos}")
        async with a, b:
            await a.connect()
            await b.connect()
            for i in range(300):
                await a.send(packet(0x10 + i % 3, i))
            got = [(await b.recv()).data for _ in range(300)]
            return a, b, got

    a, b, got = run(main())
    assert sorted(seq_of(d) for d in got) == list(range(300))
    for hint in (0x10, 0x11, 0x12):  # in order within a room
        assert [seq_of(d) for d in got if d[1] == hint] == list(range(hint - 0x10, 300, 3))
    assert a.stats.sent == b.stats.received == 300
    assert a.qos == b.qos == qos


def test_malformed_messages_are_counted_and_survived(mosquitto) -> None:
    import aiomqtt

    async def main() -> MqttLink:
        link = open_url(mosquitto.url)
        async with link, aiomqtt.Client(mosquitto.host, mosquitto.port) as raw:
            await link.connect()
            for junk in (b"", b"\x02\x00", b"\x01" + bytes(20), bytes([2, 0, 0, 0, 1, 0, 0, 50])):
                await raw.publish("relay/v2/3f", junk, qos=1)
            await raw.publish("relay/v2/3f", encode_batches(5, [(0, packet(0x40, 1))])[0], qos=1)
            await raw.publish("relay/v2/3f", encode_batches(5, [(0, packet(0x3F, 2))])[0], qos=1)
            assert seq_of((await link.recv()).data) == 2
            return link

    link = run(main())
    assert link.stats.extra["bad_payload"] == 4
    assert link.stats.extra["hint_mismatch"] == 1
    assert link.stats.received == 1


def test_received_datagrams_nobody_reads_are_dropped_and_counted(mosquitto) -> None:
    extra = 100
    total = MAX_RX_QUEUE + extra

    async def main() -> MqttLink:
        a = open_url(mosquitto.url + f"?queue={total}&linger=10")
        b = open_url(mosquitto.url)
        async with a, b:
            await a.connect()
            await b.connect()
            for i in range(total):
                await a.send(packet(0x3F, i))
            await a.drain()
            while b.stats.received < total:
                await asyncio.sleep(0.01)
            assert b.pending() == MAX_RX_QUEUE
            assert seq_of((await b.recv()).data) == extra  # the oldest went first
            return b

    b = run(main(), timeout=25.0)
    assert b.stats.extra["rx_dropped"] == extra


def test_bridge_links_carry_hops_and_origin(mosquitto) -> None:
    async def main() -> tuple[list[Envelope], int]:
        a, b = open_url(mosquitto.url), open_url(mosquitto.url)
        member = open_url(mosquitto.url)
        a.carry_envelopes(0xA)
        b.carry_envelopes(0xB)
        for link in (a, b, member):
            link.clock = lambda: 1_700_000_000.0  # one hint epoch: origins stay put
        async with a, b, member:
            for link in (a, b, member):
                await link.connect()
            await a.send(Envelope(hops=2, gateway=0xA, packet=packet(0x3F, 1)).pack())
            await member.send(packet(0x3F, 2))
            got = [Envelope.parse((await b.recv()).data) for _ in range(2)]
            assert (await member.recv()).data == packet(0x3F, 1)  # members see bare packets
            with pytest.raises(UsageError, match="envelopes"):
                await a.send(packet(0x3F, 3))
            return got, member.origin, a.origin

    got, member_origin, a_origin = run(main())
    assert sorted(got, key=lambda e: e.hops) == [
        Envelope(hops=0, gateway=member_origin, packet=packet(0x3F, 2)),  # a member: hop 0
        Envelope(hops=2, gateway=a_origin, packet=packet(0x3F, 1)),  # hops and origin ride along
    ]
    assert a_origin != 0xA  # the gateway id itself never leaves the process
