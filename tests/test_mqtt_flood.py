"""Anyone who can publish to the broker floods a bridge (issue 12, item 5), real mosquitto.

A bridge joins a radio island (simulated SHORT_TURBO channel, real time) to a real
mosquitto. An internet-side speaker publishes a live over for its room; meanwhile an
attacker on the same broker publishes junk control packets (random bytes behind a clear
CONTROL/HELLO header) for the speaker's own room hint, and junk voice from random short ids
for another hint. The bridge cannot open any of it. The speaker's over still reaches the
island whole, the junk takes no more than its hints' airtime budgets, and relay notices about
the refused junk overs stay within the notice limits.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from relay.bridge.core import LinkKind
from relay.bridge.notices import NoticeLimiter
from relay.bridge.pacer import CONTROL_BURST_PACKETS, DEFAULT_CONTROL_SHARE, FULL_PACKET
from relay.core.identity import Identity
from relay.core.room import Room
from relay.core.wire import Header, PacketType
from relay.links.url import open_link
from relay.runtime.bridge import Bridge, BridgeLink
from relay.store.counters import MemoryCounters
from relay.voice.modes import mode_by_name

MODE = mode_by_name("1600")
FPP = 6
PACKETS = 30  # the over: 30 packets of 6 frames, 7.2 s of speech sent at its own pace
SPACING = 0.24


def junk(rng: random.Random, hint: int, ptype: PacketType) -> bytes:
    header = Header(ptype, 0, hint, rng.randrange(1 << 16), rng.randrange(1 << 24)).pack()
    return header + rng.randbytes(rng.randrange(16, 120))


def test_an_mqtt_flood_cannot_starve_the_radio_or_the_over(mosquitto) -> None:
    pytest.importorskip("aiomqtt")
    rng = random.Random(5)
    room_id, key = os.urandom(8), os.urandom(32)
    sp_id = Identity.generate()
    speaker = Room(room_id, key, 0, [sp_id.public], sp_id, MemoryCounters())
    hint = speaker.keys.hint(int(time.time() // 3600))
    other = (hint + 1) % 256

    async def main():
        radio = open_link("sim://island?preset=SHORT_TURBO&lbt=on&node=gw")
        ear = open_link("sim://island?preset=SHORT_TURBO&lbt=on&node=ear")
        bridge = Bridge(
            [
                BridgeLink("radio", radio, LinkKind.RADIO),
                BridgeLink("mqtt", open_link(mosquitto.url), LinkKind.MQTT),
            ],
            gateway_id=1,
            identity=Identity.generate(),
        )
        await bridge.start()
        await bridge.links["mqtt"].link.connect()
        talk, attacker = open_link(mosquitto.url), open_link(mosquitto.url)
        await talk.connect()
        await attacker.connect()
        sent: set[bytes] = set()
        frame = bytes(MODE.bytes_per_frame)
        stop = asyncio.Event()

        async def flood() -> int:
            n = 0
            while not stop.is_set():
                for _ in range(15):
                    ptype = rng.choice((PacketType.CONTROL, PacketType.HELLO))
                    await attacker.send(junk(rng, hint, ptype))
                    await attacker.send(junk(rng, other, PacketType.VOICE))
                    n += 2
                await asyncio.sleep(0.01)
            return n

        loop = asyncio.get_running_loop()
        started = loop.time()
        flooding = asyncio.create_task(flood())
        await asyncio.sleep(1.0)  # the flood is already going when the speaker starts
        for i in range(PACKETS):
            packet = speaker.sender.voice(MODE, i * FPP, [frame] * FPP, time.time())
            sent.add(packet)
            await talk.send(packet)
            await asyncio.sleep(SPACING)
        await asyncio.sleep(1.0)
        stop.set()
        junk_sent = await flooding
        elapsed = loop.time() - started
        heard: list[bytes] = []
        deadline = loop.time() + 10.0  # the bridge works through what the broker queued
        while loop.time() < deadline and not sent <= set(heard):
            while ear.pending():
                heard.append((await ear.recv()).data)
            await asyncio.sleep(0.2)
        stats = bridge.stats()
        for link in (talk, attacker, ear):
            await link.close()
        await bridge.stop()
        return sent, heard, stats, junk_sent, elapsed, radio

    sent, heard, stats, junk_sent, elapsed, radio = asyncio.run(asyncio.wait_for(main(), 60.0))
    paced = stats["links"]["radio"]["paced"]
    assert junk_sent > 3000, junk_sent
    # The over crossed whole, in order of its counters, none of it cut or refused.
    got = [p for p in heard if p in sent]
    missing = [i for i, p in enumerate(sorted(sent, key=lambda p: p[4:7])) if p not in heard]
    assert len(got) == PACKETS, (missing, paced, stats["links"], stats["dropped"])
    # The junk for the speaker's hint took at most its control budget (5 % + a burst).
    junk_control = [p for p in heard if p not in sent and p[1] == hint]
    budget = CONTROL_BURST_PACKETS * radio.airtime(FULL_PACKET) + DEFAULT_CONTROL_SHARE * elapsed
    assert sum(radio.airtime(len(p)) for p in junk_control) <= budget + 1e-6
    # Junk voice for the other hint took at most half the radio, and the radio was not full.
    other_air = sum(radio.airtime(len(p)) for p in heard if p[1] == other)
    assert other_air <= 0.5 * elapsed + 40 * radio.airtime(FULL_PACKET)
    assert paced["hint_dropped"] > 1000, paced
    # Relay notices about refused junk overs: within the limits, the rest only counted.
    told = stats["notices"].get("told_speaker", 0)
    assert 1 <= told <= NoticeLimiter.most(elapsed + 2, hints=2, speakers=10**6), stats
    assert stats["notices"].get("notice_suppressed", 0) > 10 * told, stats


def test_untrusted_junk_pays_per_hint_sans_io() -> None:
    """The pacer alone, virtual time, SHORT_FAST: 2000 junk packets a second from MQTT
    (control for hint A, voice from random short ids for hint B) beside a real over for
    hint A. Junk takes at most its hints' shares; the over's packets wait about one packet."""
    from relay.bridge.pacer import DEFAULT_HINT_SHARE, HINT_BURST_PACKETS, Pacer
    from relay.radio.profiles import preset

    radio = preset("SHORT_FAST")
    pacer = Pacer(radio.airtime)
    rng = random.Random(3)
    a, b, seconds = 0x3F, 0x40, 30.0
    legit = {}
    waits, junk_air = [], {a: 0.0, b: 0.0}
    next_voice, counter = 1.0, 0
    for k in range(int(seconds * 2000)):
        now = k / 2000
        if next_voice <= now < seconds - 1:
            packet = Header(PacketType.VOICE, 1, a, 0x1234, counter).pack() + bytes(42)
            counter += 1
            legit[packet] = now
            assert pacer.offer(packet, now, trusted=False)[0].queued
            next_voice += 0.16
        ptype = PacketType.VOICE if k % 2 else rng.choice((PacketType.CONTROL, PacketType.HELLO))
        hint = b if ptype == PacketType.VOICE else a
        data = junk(rng, hint, ptype)
        pacer.offer(data, now, trusted=False)
        for out in pacer.due(now):
            if out in legit:
                waits.append(now - legit.pop(out))
            else:
                junk_air[out[1]] += radio.airtime(len(out))
    full = radio.airtime(FULL_PACKET)
    assert not legit and len(waits) > 150  # every packet of the over went out
    waits.sort()
    assert waits[len(waits) // 2] < 2 * full  # typically behind one packet at most
    assert junk_air[a] <= DEFAULT_CONTROL_SHARE * seconds + CONTROL_BURST_PACKETS * full
    assert junk_air[b] <= DEFAULT_HINT_SHARE * seconds + HINT_BURST_PACKETS * full
    assert pacer.stats.hint_dropped > 50_000
