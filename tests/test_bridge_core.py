"""The sans-I/O bridge core: dedup, no echo, loop prevention, envelope, airtime pacing."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.bridge.core import BridgeCore, LinkKind, Send
from relay.bridge.dedup import DedupCache
from relay.bridge.envelope import ENVELOPE_HEADER_LEN, Envelope
from relay.bridge.pacer import Pacer
from relay.core.wire import MAX_PACKET_LEN, Header, PacketType
from relay.errors import PacketError, UsageError


def packet(
    ptype: int = PacketType.VOICE,
    hint: int = 7,
    sender: int = 0x0102,
    counter: int = 0,
    n: int = 24,
) -> bytes:
    """A sealed-looking packet: a real clear header and opaque bytes (the bridge cannot read)."""
    body = bytes((counter * 31 + i) & 0xFF for i in range(n))
    return Header(ptype=ptype, sub=0, hint=hint, sender=sender, counter=counter).pack() + body


def control(counter: int = 0, sender: int = 0x0102) -> bytes:
    return packet(PacketType.CONTROL, sender=sender, counter=counter, n=12)


def bridge(gateway: int, *links: tuple[str, LinkKind], **kw: object) -> BridgeCore:
    core = BridgeCore(gateway, **kw)  # type: ignore[arg-type]
    for name, kind in links:
        core.add_link(name, kind)
    return core


# -- dedup and echo


def test_same_packet_from_radio_and_mqtt_is_forwarded_once() -> None:
    core = bridge(1, ("radio", LinkKind.RADIO), ("mqtt", LinkKind.MQTT))
    p = packet()
    first = core.receive("radio", p, 0.0)
    assert [s.link for s in first.sends] == ["mqtt"]
    assert Envelope.parse(first.sends[0].data) == Envelope(hops=0, gateway=1, packet=p)
    other_gateway = Envelope(hops=0, gateway=2, packet=p).pack()
    again = core.receive("mqtt", other_gateway, 0.1)
    assert again.sends == [] and again.dropped == "duplicate"
    assert core.stats.dropped == {"duplicate": 1}


def test_forward_never_returns_to_source_and_hits_each_link_once() -> None:
    core = bridge(
        1,
        ("r1", LinkKind.RADIO),
        ("r2", LinkKind.RADIO),
        ("m1", LinkKind.MQTT),
        ("m2", LinkKind.MQTT),
    )
    for i, src in enumerate(("r1", "r2", "m1", "m2")):
        p = packet(counter=i)
        data = p if src.startswith("r") else Envelope(0, 9, p).pack()
        links = [s.link for s in core.receive(src, data, float(i)).sends]
        assert src not in links
        assert sorted(links) == sorted({"r1", "r2", "m1", "m2"} - {src})


def test_a_repeating_link_gets_each_packet_back_exactly_once() -> None:
    core = BridgeCore(1)
    core.add_link("hill", LinkKind.RADIO, repeat=True)
    core.add_link("other", LinkKind.RADIO)
    p = packet()
    assert sorted(s.link for s in core.receive("hill", p, 0.0).sends) == ["hill", "other"]
    echo = core.receive("hill", p, 0.5)  # our own copy, heard back through another repeater
    assert echo.sends == [] and echo.dropped == "duplicate"
    assert [s.link for s in core.receive("other", packet(counter=1), 1.0).sends] == ["hill"]
    with pytest.raises(UsageError, match="only radio links repeat"):
        core.add_link("m", LinkKind.MQTT, repeat=True)


def test_dedup_cache_is_bounded_by_count_and_age() -> None:
    cache = DedupCache(max_entries=3, max_age=10.0)
    for i in range(5):
        assert cache.check_and_add(packet(counter=i), 0.0)
    assert len(cache) == 3 and cache.evicted == 2
    assert not cache.check_and_add(packet(counter=4), 5.0)
    assert cache.check_and_add(packet(counter=0), 5.0)  # evicted, so new again
    cache.expire(10.5)
    assert len(cache) == 1  # only counter 0, first seen at 5.0
    assert cache.check_and_add(packet(counter=4), 10.5)  # expired, so new again


def test_junk_is_dropped_and_counted_not_raised() -> None:
    core = bridge(1, ("radio", LinkKind.RADIO), ("mqtt", LinkKind.MQTT))
    assert core.receive("mqtt", b"\x01\x00", 0.0).dropped == "malformed_envelope"
    assert core.receive("mqtt", Envelope(0, 2, b"short").pack(), 0.0).dropped == "malformed_packet"
    assert core.receive("radio", b"\xff" * 20, 0.0).dropped == "malformed_packet"
    with pytest.raises(UsageError):
        core.receive("nowhere", packet(), 0.0)


# -- loops and hop limit


class Network:
    """Bridges on shared radio channels and brokers; runs deliveries until quiet."""

    def __init__(self, tick: float = 0.0) -> None:
        self.tick = tick  # seconds each delivery takes
        self.attach: dict[str, list[tuple[BridgeCore, str]]] = {}  # medium -> (bridge, link)
        self.transmissions: dict[str, int] = {}
        self.queue: deque[tuple[str, bytes, BridgeCore | None]] = deque()
        self.delivered: dict[str, list[bytes]] = {}  # medium -> bare packets seen by a listener

    def connect(self, core: BridgeCore, link: str, medium: str) -> None:
        self.attach.setdefault(medium, []).append((core, link))

    def emit(self, medium: str, data: bytes, by: BridgeCore | None) -> None:
        self.transmissions[medium] = self.transmissions.get(medium, 0) + 1
        self.queue.append((medium, data, by))

    def run(self, limit: int = 1000) -> None:
        steps = 0
        now = 0.0
        while self.queue:
            steps += 1
            now += self.tick
            assert steps < limit, "traffic is amplifying"
            medium, data, by = self.queue.popleft()
            self.delivered.setdefault(medium, []).append(data)
            for core, link in self.attach.get(medium, []):
                # a radio does not hear itself; a broker echoes to its own publisher
                if core is by and not medium.startswith("broker"):
                    continue
                for send in core.receive(link, data, now).sends:
                    self.emit(self.medium_of(core, send), send.data, core)

    def medium_of(self, core: BridgeCore, send: Send) -> str:
        for medium, ends in self.attach.items():
            if (core, send.link) in ends:
                return medium
        raise AssertionError(send)


def test_two_bridges_on_one_channel_and_one_broker_do_not_amplify() -> None:
    a = bridge(0xA, ("radio", LinkKind.RADIO), ("mqtt", LinkKind.MQTT))
    b = bridge(0xB, ("radio", LinkKind.RADIO), ("mqtt", LinkKind.MQTT))
    net = Network()
    for core in (a, b):
        net.connect(core, "radio", "air")
        net.connect(core, "mqtt", "broker")
    for i in range(20):
        net.emit("air", packet(counter=i), None)  # a member talks; both bridges hear it
    net.run()
    assert net.transmissions["air"] == 20  # no bridge re-transmitted onto the channel
    assert net.transmissions["broker"] == 40  # each bridge published each packet once
    for core in (a, b):
        assert core.stats.dropped == {"duplicate": 20, "own_echo": 20}


def test_two_islands_are_joined_once_each_way() -> None:
    a = bridge(0xA, ("radio", LinkKind.RADIO), ("mqtt", LinkKind.MQTT))
    b = bridge(0xB, ("radio", LinkKind.RADIO), ("mqtt", LinkKind.MQTT))
    net = Network()
    net.connect(a, "radio", "air1")
    net.connect(b, "radio", "air2")
    net.connect(a, "mqtt", "broker")
    net.connect(b, "mqtt", "broker")
    net.emit("air1", packet(counter=1), None)
    net.emit("air2", packet(counter=2), None)
    net.run()
    assert net.delivered["air2"] == [packet(counter=2), packet(counter=1)]
    assert net.delivered["air1"] == [packet(counter=1), packet(counter=2)]
    assert net.transmissions == {"air1": 2, "air2": 2, "broker": 2}


def test_hop_limit_and_own_gateway_are_dropped_and_counted() -> None:
    core = bridge(
        1, ("radio", LinkKind.RADIO), ("m1", LinkKind.MQTT), ("m2", LinkKind.MQTT), hop_limit=3
    )
    p = packet()
    assert core.receive("m1", Envelope(3, 2, p).pack(), 0.0).dropped == "hop_limit"
    assert core.receive("m1", Envelope(0, 1, p).pack(), 0.0).dropped == "own_echo"
    out = core.receive("m1", Envelope(1, 2, p).pack(), 0.0)
    assert out.sends == [Send("radio", p), Send("m2", Envelope(2, 1, p).pack())]
    last = core.receive("m1", Envelope(2, 2, packet(counter=1)).pack(), 0.0)
    assert [s.link for s in last.sends] == ["radio"]  # a third publish would exceed the limit
    assert core.stats.dropped == {"hop_limit": 1, "own_echo": 1, "hop_limit_out": 1}


def test_hop_limit_ends_a_broker_ring_even_when_dedup_forgets() -> None:
    # Three bridges join three brokers in a ring; a dedup window shorter than one hop means
    # only the hop count can stop the packet going round forever.
    hop_limit = 4
    cores = [
        bridge(
            i + 1,
            ("in", LinkKind.MQTT),
            ("out", LinkKind.MQTT),
            hop_limit=hop_limit,
            dedup=DedupCache(max_entries=1, max_age=1e-9),
        )
        for i in range(3)
    ]
    net = Network(tick=1.0)
    for i, core in enumerate(cores):
        net.connect(core, "in", f"broker{i}")
        net.connect(core, "out", f"broker{(i + 1) % 3}")
    net.emit("broker0", Envelope(0, 99, packet()).pack(), None)
    net.run()
    # both ways round the ring: republished with hops 1, 2, 3, and never with hops 4
    assert net.transmissions == {"broker0": 3, "broker1": 2, "broker2": 2}
    assert sum(c.stats.dropped.get("hop_limit_out", 0) for c in cores) == 2


# -- envelope


@given(
    hops=st.integers(0, 255),
    gateway=st.integers(0, (1 << 32) - 1),
    body=st.binary(min_size=1, max_size=MAX_PACKET_LEN),
)
def test_envelope_round_trip(hops: int, gateway: int, body: bytes) -> None:
    env = Envelope(hops, gateway, body)
    data = env.pack()
    assert len(data) == ENVELOPE_HEADER_LEN + len(body)
    assert Envelope.parse(data) == env


@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_packet_error(data: bytes) -> None:
    try:
        env = Envelope.parse(data)
    except PacketError:
        return
    assert env.pack() == data


@given(
    hops=st.integers(-5, 300),
    gateway=st.integers(-5, 1 << 33),
    body=st.binary(max_size=8),
)
def test_envelope_pack_refuses_impossible_values(hops: int, gateway: int, body: bytes) -> None:
    valid = 0 <= hops <= 255 and 0 <= gateway < 1 << 32 and body
    if valid:
        Envelope(hops, gateway, body).pack()
    else:
        with pytest.raises(UsageError):
            Envelope(hops, gateway, body).pack()


def test_oversized_or_other_version_envelopes_are_packet_errors() -> None:
    with pytest.raises(PacketError):
        Envelope.parse(b"\x01\x00\x00\x00\x00\x01" + b"x" * (MAX_PACKET_LEN + 1))
    with pytest.raises(PacketError) as err:
        Envelope.parse(b"\x02\x00\x00\x00\x00\x01xx")
    assert err.value.reason == "envelope_version"


# -- pacer


def airtime(nbytes: int) -> float:
    """A slow radio: 10 ms per byte."""
    return nbytes * 0.01


def drain(pacer: Pacer, start: float, until: float) -> list[tuple[float, bytes]]:
    """Run the pacer's clock by its own wakeups; return (time, packet) transmissions."""
    sent: list[tuple[float, bytes]] = []
    now = start
    while now <= until:
        sent += [(now, p) for p in pacer.due(now)]
        wake = pacer.next_wakeup(now)
        if wake is None:
            break
        now = max(wake, now + 1e-6) if wake <= now else wake
    return sent


def test_control_goes_before_voice() -> None:
    pacer = Pacer(airtime)
    voice = [packet(counter=i) for i in range(5)]
    for v in voice:
        assert pacer.offer(v, 0.0)[0].queued
    ctl = control(counter=99)
    hello = packet(PacketType.HELLO, counter=98, n=12)
    sent = [pacer.due(0.0)]  # the first voice packet is already on the air
    pacer.offer(ctl, 0.01)
    pacer.offer(hello, 0.01)
    sent_packets = [p for _, p in drain(pacer, 0.01, 10.0)]
    assert sent[0] == [voice[0]]
    assert sent_packets == [ctl, hello, *voice[1:]]
    assert pacer.stats.control_sent == 2 and pacer.stats.voice_sent == 5


def test_fec_voice_is_paced_as_voice_not_as_control() -> None:
    pacer = Pacer(airtime)
    fec = [packet(PacketType.VOICE_FEC, counter=i) for i in range(3)]
    decisions = [pacer.offer(p, 0.0)[0] for p in fec]
    assert [d.reason for d in decisions] == ["voice"] * 3
    assert pacer.stats.overs_admitted == 1 and pacer.stats.control_sent == 0


def test_transmissions_do_not_overlap() -> None:
    pacer = Pacer(airtime)
    for i in range(4):
        pacer.offer(packet(counter=i), 0.0)
    times = [t for t, _ in drain(pacer, 0.0, 10.0)]
    assert times == pytest.approx([0.0, 0.31, 0.62, 0.93])


def test_a_new_over_that_does_not_fit_is_refused_whole() -> None:
    # 1 % of a 100 s window = 1 s of airtime; one 31-byte packet = 0.31 s; reserve 2 packets.
    pacer = Pacer(airtime, duty_cycle=0.01, window=100.0, reserve_packets=2)
    a = [packet(sender=1, counter=i) for i in range(3)]
    b = [packet(sender=2, counter=i) for i in range(3)]
    decisions = [pacer.offer(a[0], 0.0)[0]]
    decisions += [pacer.offer(b[0], 0.05)[0]]  # 1 - 0.31 queued - 0.31 held < 0.62
    decisions += [pacer.offer(a[1], 0.1)[0], pacer.offer(b[1], 0.15)[0]]
    decisions += [pacer.offer(a[2], 0.2)[0], pacer.offer(b[2], 0.25)[0]]
    assert [d.queued for d in decisions] == [True, False, True, False, True, False]
    assert [d.notify for d in decisions] == [False, True, False, False, False, False]
    assert {d.reason for d in decisions if not d.queued} == {"over_refused"}
    # the admitted over goes out whole, even though it takes more than the budget reserved
    assert [p for _, p in drain(pacer, 0.0, 1000.0)] == a
    assert pacer.stats.overs_admitted == 1 and pacer.stats.overs_refused == 1
    assert pacer.stats.voice_dropped == 3


def test_an_admitted_over_waits_for_budget_rather_than_losing_packets() -> None:
    pacer = Pacer(airtime, duty_cycle=0.01, window=100.0, reserve_packets=1)
    over = [packet(counter=i) for i in range(6)]  # 6 x 0.31 s > the 1 s budget
    assert all(pacer.offer(p, i * 0.1)[0].queued for i, p in enumerate(over))
    sent = drain(pacer, 0.0, 1000.0)
    assert [p for _, p in sent] == over
    assert sent[3][0] >= 100.0  # the fourth had to wait for the window to slide
    assert pacer.stats.overs_cut == 0


def test_an_over_boundary_is_a_gap() -> None:
    pacer = Pacer(airtime, duty_cycle=0.01, window=100.0, reserve_packets=3, gap=1.5)
    assert pacer.offer(packet(counter=0), 0.0)[0].queued  # over 1: holds 0.93 s of the 1 s
    assert pacer.offer(packet(counter=1), 1.4)[0].queued  # within the gap: same over
    assert pacer.stats.overs_admitted == 1
    refused = pacer.offer(packet(counter=2), 3.0)[0]  # after the gap: a new over, no room
    assert (refused.queued, refused.reason, refused.notify) == (False, "over_refused", True)
    assert pacer.offer(packet(counter=3), 4.0)[0].reason == "over_refused"  # still that over
    drain(pacer, 4.0, 200.0)
    fresh = pacer.offer(packet(counter=4), 200.0)[0]  # budget back: the next over is admitted
    assert fresh.queued and pacer.stats.overs_admitted == 2 and pacer.stats.overs_refused == 1


def test_backlog_overflow_cuts_an_over_and_says_so() -> None:
    pacer = Pacer(airtime, duty_cycle=0.01, window=100.0, reserve_packets=1, max_backlog=2)
    results = [pacer.offer(packet(counter=i), 0.0)[0] for i in range(4)]
    assert [(r.queued, r.reason, r.notify) for r in results] == [
        (True, "voice", False),
        (True, "voice", False),
        (False, "over_cut", True),
        (False, "over_cut", False),
    ]
    assert pacer.stats.overs_cut == 1


def test_paced_radio_through_the_core() -> None:
    core = BridgeCore(1)
    core.add_link("mqtt", LinkKind.MQTT)
    pacer = Pacer(airtime, duty_cycle=0.01, window=100.0, reserve_packets=2)
    core.add_link("radio", LinkKind.RADIO, pacer)
    ctl, v1, v2 = control(counter=5), packet(sender=1), packet(sender=2)
    assert core.receive("mqtt", Envelope(0, 2, v1).pack(), 0.0).sends == []
    refused = core.receive("mqtt", Envelope(0, 2, v2).pack(), 0.0)
    assert [(n.link, n.decision.reason) for n in refused.notices] == [("radio", "over_refused")]
    core.receive("mqtt", Envelope(0, 2, ctl).pack(), 0.0)
    assert core.due(0.0) == [Send("radio", ctl)]
    wake = core.next_wakeup(0.0)
    assert wake == pytest.approx(airtime(len(ctl)))
    assert core.due(wake) == [Send("radio", v1)]
    assert core.next_wakeup(wake) is None


def test_a_late_paced_transmission_is_still_deduplicated_when_it_echoes_back() -> None:
    core = BridgeCore(1, dedup=DedupCache(max_age=10.0))
    core.add_link("mqtt", LinkKind.MQTT)
    pacer = Pacer(airtime, duty_cycle=0.01, window=100.0, reserve_packets=1)
    core.add_link("radio", LinkKind.RADIO, pacer)
    over = [packet(counter=i) for i in range(4)]  # the fourth waits ~100 s for budget
    for i, p in enumerate(over):
        core.receive("mqtt", Envelope(0, 2, p).pack(), i * 0.1)
    now, sent = 0.0, []
    while (wake := core.next_wakeup(now)) is not None:
        now = wake
        sent += core.due(now)
    assert [s.data for s in sent] == over and now > 100.0
    # a second bridge on the channel heard it and published it: it must not loop back
    echo = core.receive("mqtt", Envelope(0, 3, over[3]).pack(), now + 0.5)
    assert echo.dropped == "duplicate"


def test_pacer_refuses_bad_settings_and_junk() -> None:
    with pytest.raises(UsageError):
        Pacer(airtime, duty_cycle=0.0)
    with pytest.raises(UsageError):
        Pacer(airtime, window=0.0)
    pacer = Pacer(airtime)
    assert pacer.offer(b"junk", 0.0)[0].reason == "malformed"
    assert pacer.stats.malformed == 1


# --- voice messages (CLIP) are bulk: after control and live voice, queued, never refused ---


def clip(counter: int = 0, sender: int = 0x0203) -> bytes:
    return packet(PacketType.CLIP, sender=sender, counter=counter, n=24)


def test_clip_packets_go_after_control_and_never_inside_a_live_over() -> None:
    pacer = Pacer(airtime, gap=1.5)
    pieces = [clip(counter=i) for i in range(3)]
    for p in pieces:
        assert pacer.offer(p, 0.0)[0].reason == "bulk"
    voice = packet(counter=1)
    pacer.offer(voice, 0.0)
    ctl = control(counter=9)
    pacer.offer(ctl, 0.0)
    sent = drain(pacer, 0.0, 30.0)
    order = [p for _, p in sent]
    assert order == [ctl, voice, *pieces]
    # The over was live until 1.5 s of silence: the first piece waited for its end.
    assert sent[2][0] >= 1.5
    assert pacer.stats.bulk_sent == 3 and pacer.stats.bulk_dropped == 0


def test_clip_packets_wait_for_budget_instead_of_being_dropped() -> None:
    # 1 % of a 100 s window = 1 s of airtime: three 31-byte packets (0.31 s each) fit, the
    # fourth waits for the window to slide; none is dropped.
    pacer = Pacer(airtime, duty_cycle=0.01, window=100.0)
    pieces = [clip(counter=i) for i in range(5)]
    for p in pieces:
        assert pacer.offer(p, 0.0)[0].queued
    sent = drain(pacer, 0.0, 500.0)
    assert [p for _, p in sent] == pieces
    assert sent[3][0] >= 100.0 and pacer.stats.bulk_dropped == 0


def test_clip_backlog_is_bounded_and_counted_and_does_not_block_new_overs() -> None:
    pacer = Pacer(airtime, duty_cycle=0.01, window=100.0, reserve_packets=1, max_bulk=2)
    decisions = [pacer.offer(clip(counter=i), 0.0)[0].reason for i in range(3)]
    assert decisions == ["bulk", "bulk", "bulk_overflow"]
    assert pacer.stats.bulk_dropped == 1 and pacer.backlog() == 2
    # Queued bulk does not count against the admission of live voice.
    assert pacer.offer(packet(counter=7), 0.0)[0].reason == "voice"
    with pytest.raises(UsageError):
        Pacer(airtime, max_bulk=0)
