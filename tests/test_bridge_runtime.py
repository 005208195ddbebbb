"""The bridge runtime: repeaters and bridges carrying a real room between radio islands.

Two simulated channels (sim://island_a, sim://island_b) are separate radio islands; nothing
on one hears the other except through a repeater (relay.runtime.bridge.Bridge with both as
radio links) or through MQTT bridges meeting on a real mosquitto.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from mosquitto import Broker as MosquittoBroker
from mosquitto import mqtt_bridges

from relay.bridge.core import BridgeCore, LinkKind
from relay.bridge.dedup import DedupCache
from relay.cli.main import cli
from relay.core.identity import Identity
from relay.core.notice import NoticeReason
from relay.core.room import RelayNoticed, Room
from relay.core.wire import Header, PacketType
from relay.demo.voice import bundled_sample
from relay.errors import UsageError
from relay.links.base import Link
from relay.links.sim.channel import ethers
from relay.links.url import open_link
from relay.runtime.bridge import RECV_BACKOFF_MIN, Bridge, BridgeLink, link_kind
from relay.runtime.clock import run
from relay.runtime.room import RoomNode
from relay.runtime.voice import Playout
from relay.store.counters import CounterStore
from relay.voice.audio import read_audio
from relay.voice.codec import Encoder
from relay.voice.modes import mode_by_name

MODE = mode_by_name("1600")
PRESET = "SHORT_TURBO"
FPP = 6


def island(name: str, node: str) -> Link:
    return open_link(f"sim://{name}?preset={PRESET}&lbt=on&node={node}")


def repeater(tag: str, **kw) -> Bridge:
    return Bridge(
        [
            BridgeLink("a", island("island_a", f"rep{tag}"), LinkKind.RADIO),
            BridgeLink("b", island("island_b", f"rep{tag}"), LinkKind.RADIO),
        ],
        **kw,
    )


async def room_over(
    state: Path,
    mod_link: Link,
    speaker_link: Link,
    listener_links: list[Link],
    settle: float,
    *,
    sample: str = "forig.wav",
    during: Callable[[], Awaitable[None]] | None = None,
) -> tuple[list[RoomNode], int]:
    """Moderator and speaker on their links; everyone enrolled; one over of ``sample`` is
    spoken, with ``during()`` (if given) run alongside it from its first frame.

    Returns the listeners and the frames spoken."""
    loop = asyncio.get_running_loop()
    epoch0 = time.time() - loop.time()

    def clock() -> float:
        return epoch0 + loop.time()

    counters = CounterStore(state / "counters.db")
    room_id, key = os.urandom(8), os.urandom(32)
    mod_id, sp_id = Identity.generate(), Identity.generate()
    li_ids = [Identity.generate() for _ in listener_links]

    def member(ident: Identity, link: Link, roster=()) -> RoomNode:
        room = Room(room_id, key, 0, [mod_id.public], ident, counters, roster=roster, mtu=link.mtu)
        return RoomNode(room, link, clock, seed=1)

    moderator = member(mod_id, mod_link, roster=[sp_id.public, *(i.public for i in li_ids)])
    speaker = member(sp_id, speaker_link)
    listeners = [member(i, link) for i, link in zip(li_ids, listener_links, strict=True)]
    nodes = [moderator, speaker, *listeners]
    tasks = [asyncio.create_task(n.run()) for n in nodes]
    stop = asyncio.Event()
    moderating = asyncio.create_task(moderator.moderate(auto_grant=30, stop=stop))
    frames = Encoder(MODE).encode(read_audio(bundled_sample(sample)))
    try:
        assert await speaker.wait_for_floor(timeout=20.0), "the speaker was never granted"
        fault = asyncio.create_task(during()) if during is not None else None
        await speaker.speak(MODE, frames, FPP)
        if fault is not None:
            await fault
        await speaker.link.drain()
        deadline = loop.time() + settle
        while loop.time() < deadline and not all(li.log.overs for li in listeners):
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await moderating
        for n in nodes:
            await n.link.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        counters.close()
    return listeners, len(frames)


def test_link_kind_by_scheme() -> None:
    assert link_kind("mqtt://127.0.0.1:1883") is LinkKind.MQTT
    assert link_kind("MQTTS://broker") is LinkKind.MQTT
    assert link_kind("sim://x") is LinkKind.RADIO
    assert link_kind("kiss+tcp://127.0.0.1:8001") is LinkKind.RADIO


def test_a_bridge_needs_two_distinct_links() -> None:
    async def main() -> None:
        a = island("island_a", "x")
        with pytest.raises(UsageError, match="at least two"):
            Bridge([BridgeLink("a", a, LinkKind.RADIO)])
        with pytest.raises(UsageError, match="only radio links repeat"):
            Bridge([BridgeLink("m", a, LinkKind.MQTT, repeat=True)])
        with pytest.raises(UsageError, match="twice"):
            Bridge([BridgeLink("a", a, LinkKind.RADIO), BridgeLink("a", a, LinkKind.RADIO)])
        await a.close()

    run(main())


def test_repeater_carries_a_room_between_two_islands(tmp_path: Path) -> None:
    """Moderator and speaker on island A, the listener on island B: only the repeater joins
    them, and the listener verifies the speaker's signed over and plays most of it."""

    async def main():
        rep = repeater("1")
        await rep.start()
        try:
            listeners, spoken = await room_over(
                tmp_path,
                island("island_a", "mod"),
                island("island_a", "speaker"),
                [island("island_b", "listener")],
                settle=10.0,
            )
        finally:
            await rep.stop()
        return listeners[0], spoken, rep.stats()

    listener, spoken, stats = run(main())
    verdicts = [o.verdict for o in listener.log.overs]
    assert verdicts == ["verified"], (verdicts, listener.log.dropped, stats)
    heard = listener.log.voice_frames  # frames that really arrived, not concealment
    assert heard >= 0.8 * spoken, (heard, spoken, stats)
    assert stats["links"]["b"]["forwarded"] > 0
    assert stats["overs_refused"] == 0


def test_store_and_forward_on_one_channel_reaches_a_member_out_of_range(tmp_path: Path) -> None:
    """One channel; the listener is out of range of the moderator and the speaker and hears
    them only through a single-link repeater on a hilltop, which sends every packet it hears
    once more (so the channel carries about twice the traffic)."""

    def node(name: str) -> Link:
        apart = "&apart=mod,speaker" if name == "listener" else ""
        return open_link(f"sim://hill?preset={PRESET}&lbt=on&node={name}{apart}")

    async def main():
        rep = Bridge([BridgeLink("hill", node("hilltop"), LinkKind.RADIO, repeat=True)])
        channel = ethers()["hill"]
        await rep.start()
        try:
            listeners, spoken = await room_over(
                tmp_path, node("mod"), node("speaker"), [node("listener")], settle=10.0
            )
        finally:
            await rep.stop()
        return listeners[0], spoken, rep.stats(), channel.stats

    listener, spoken, stats, channel = run(main())
    assert [o.verdict for o in listener.log.overs] == ["verified"], (listener.log.dropped, stats)
    assert listener.log.voice_frames >= 0.8 * spoken, (listener.log.voice_frames, spoken)
    repeated = stats["links"]["hill"]["forwarded"]
    assert repeated > 0 and stats["dropped"].get("duplicate", 0) == 0
    assert channel.transmissions >= 2 * repeated - 2, (channel.transmissions, repeated)


def test_two_store_and_forward_repeaters_on_one_channel_do_not_amplify(tmp_path: Path) -> None:
    """Each repeats what the sender said once; each hears the other's copy as a duplicate."""
    n = 10

    async def main():
        reps = [
            Bridge(
                [BridgeLink("c", island("one", f"rep{i}"), LinkKind.RADIO, repeat=True)],
                gateway_id=i,
            )
            for i in (1, 2)
        ]
        for rep in reps:
            await rep.start()
        sender = island("one", "sender")
        counters = CounterStore(tmp_path / "counters.db")
        ident = Identity.generate()
        room = Room(os.urandom(8), os.urandom(32), 0, [ident.public], ident, counters)
        for _ in range(n):
            await sender.send(room.beacon(time.time()))
            await asyncio.sleep(2.0)
        await asyncio.sleep(30.0)
        total = ethers()["one"].stats.transmissions
        await sender.close()
        counters.close()
        for rep in reps:
            await rep.stop()
        return total, [rep.stats() for rep in reps]

    total, stats = run(main())
    assert total <= 3 * n, (total, stats)  # the original and at most one copy per repeater
    assert sum(s["dropped"].get("duplicate", 0) for s in stats) >= n, stats


def test_two_repeaters_in_a_loop_do_not_amplify(tmp_path: Path) -> None:
    """Two repeaters between the same islands: each packet crosses once per repeater and
    never comes back; the copies each repeater hears from the other are dropped as
    duplicates, so transmissions stay bounded however long it runs."""
    n = 20

    async def main():
        r1, r2 = repeater("1", gateway_id=1), repeater("2", gateway_id=2)
        await r1.start()
        await r2.start()
        sender = island("island_a", "sender")
        counters = CounterStore(tmp_path / "counters.db")
        ident = Identity.generate()
        room = Room(os.urandom(8), os.urandom(32), 0, [ident.public], ident, counters)
        for _ in range(n):
            await sender.send(room.beacon(time.time()))
            await asyncio.sleep(0.5)
        await sender.drain()
        await asyncio.sleep(30.0)  # long enough for any loop to have shown itself
        a, b = ethers()["island_a"].stats, ethers()["island_b"].stats
        counts = (a.transmissions, b.transmissions)
        await sender.close()
        counters.close()
        await r1.stop()
        await r2.stop()
        return counts, r1.stats(), r2.stats()

    (on_a, on_b), s1, s2 = run(main())
    assert on_a == n, (on_a, s1, s2)  # nothing came back to the island it started on
    assert on_b == 2 * n, (on_b, s1, s2)  # one copy per repeater, no more
    assert s1["dropped"].get("duplicate", 0) + s2["dropped"].get("duplicate", 0) >= n


# --- through a real mosquitto ----------------------------------------------------------------


def test_islands_bridged_through_mosquitto(tmp_path: Path, mosquitto) -> None:
    """Each island has its own bridge (its sim radio and an mqtt link to one broker); the
    listener on island B and an internet-only listener on mqtt:// both verify the over."""
    pytest.importorskip("aiomqtt")
    url = f"mqtt://127.0.0.1:{mosquitto.port}"

    async def main():
        bridges = await mqtt_bridges(
            url, [(gw, island(name, "gw")) for gw, name in ((1, "island_a"), (2, "island_b"))]
        )
        internet = open_link(url)
        await internet.connect()  # subscribed before anyone speaks
        try:
            listeners, spoken = await room_over(
                tmp_path,
                island("island_a", "mod"),
                island("island_a", "speaker"),
                [island("island_b", "listener"), internet],
                settle=10.0,
            )
        finally:
            for b in bridges:
                await b.stop()
        return listeners, spoken, [b.stats() for b in bridges]

    listeners, spoken, stats = asyncio.run(asyncio.wait_for(main(), 30.0))
    for li in listeners:
        verdicts = [o.verdict for o in li.log.overs]
        assert verdicts == ["verified"], (li.link.url, verdicts, li.log.dropped, stats)
        heard = li.log.voice_frames  # frames that really arrived, not concealment
        assert heard >= 0.8 * spoken, (li.link.url, heard, spoken)


def test_a_broker_restart_mid_over_is_survived(tmp_path: Path, mosquitto, monkeypatch) -> None:
    """The two-island setup of the test above with a 6 s over; 2 s into it the broker is
    stopped and started again 1 s later (a new process: no sessions, nothing kept).

    Both bridges reconnect by themselves, and the far-island listener plays the rest of the
    over and verifies its end. What the gap costs depends on which bridge gets back first:
    bridge A queues what its island says while the broker is down and publishes it on
    reconnecting, so if bridge B is subscribed again by then nothing is lost; if not, the
    broker hands those packets to nobody. The verdict is "verified" either way: a lost
    packet takes whole seal segments with it (segments are whole packets here), and a
    segment heard not at all is concealment, not unverifiable speech ("partial" is for a
    segment heard in part). The hole shows as segments_ok < segments_total, as packets
    bridge A published and bridge B never received, and as the playout's missing frames.
    """
    pytest.importorskip("aiomqtt")
    url = f"mqtt://127.0.0.1:{mosquitto.port}"
    start_after, down = 2.0, 1.0
    marks: dict[str, float] = {}
    # Which frame positions really arrived at each playout (its play_times also holds the
    # positions it filled with concealment).
    arrived: dict[int, set[int]] = {}
    voice = Playout.voice

    def recording_voice(self, event, arrival):
        arrived.setdefault(id(self), set()).update(
            range(event.position, event.position + len(event.frames))
        )
        voice(self, event, arrival)

    monkeypatch.setattr(Playout, "voice", recording_voice)

    async def restart_broker() -> None:
        loop = asyncio.get_running_loop()
        marks["over"] = loop.time()  # the speaker's capture clock starts now, too
        await asyncio.sleep(start_after)
        marks["down"] = loop.time()
        await asyncio.to_thread(mosquitto.restart, down)  # blocking: off the event loop

    async def main():
        bridges = await mqtt_bridges(
            url, [(gw, island(name, "gw")) for gw, name in ((1, "island_a"), (2, "island_b"))]
        )
        mqtt = [b.links["mqtt"].link for b in bridges]

        async def fault() -> None:
            await restart_broker()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5.0
            while loop.time() < deadline and not all(
                m.connected and m.stats.extra.get("reconnects") for m in mqtt
            ):
                await asyncio.sleep(0.02)
            marks["back"] = loop.time()  # both bridges are subscribed again

        try:
            listeners, spoken = await room_over(
                tmp_path,
                island("island_a", "mod"),
                island("island_a", "speaker"),
                [island("island_b", "listener")],
                settle=10.0,
                sample="hts1.wav",
                during=fault,
            )
        finally:
            for b in bridges:
                await b.stop()
        return listeners[0], spoken, [b.stats() for b in bridges], [m.stats for m in mqtt]

    listener, spoken, stats, link_stats = asyncio.run(asyncio.wait_for(main(), 40.0))
    ctx = (listener.log.dropped, stats, link_stats, marks)
    # Both bridges noticed the broker go and came back on their own; nothing failed.
    for ls in link_stats:
        assert ls.extra.get("disconnects", 0) >= 1, ctx
        assert ls.extra.get("reconnects", 0) >= 1, ctx
    for s in stats:
        for entry in s["links"].values():
            assert entry["send_errors"] == entry["out_dropped"] == 0, ctx
        assert s["links"]["radio"]["paced"]["backlog"] == 0, ctx
    # The over's end reached the far island and the frames it heard check out.
    [over_end] = listener.log.overs
    assert over_end.verdict == "verified", (over_end, ctx)
    assert over_end.frames == spoken
    [over] = listener.playout.overs
    assert over.complete and over.verdict == "verified", over
    # Most of what was spoken once both bridges were back arrived and was played in time.
    real = arrived[id(listener.playout)]
    after = int((marks["back"] - marks["over"]) / MODE.frame_seconds) + FPP
    expected = spoken - after
    assert expected > 0.3 * spoken, (after, spoken, marks)
    heard_after = sum(1 for p in real if p >= after) - over.frames_late
    # (0.7: on a loaded 2-core machine a reconnect's backlog arrives late and counts as
    # missing: 0.76 was seen once under load.)
    assert heard_after >= 0.7 * expected, (heard_after, expected, ctx)
    # The gap is accounted for. Bridge A heard its island while the broker was down and
    # queued it (its link dropped nothing: the queue is far from full); every packet bridge
    # A published that bridge B did not receive was lost at the broker, and those are the
    # only frames missing at the listener: one seal segment per lost voice packet.
    a, b = stats
    a_mqtt = link_stats[0]
    assert a_mqtt.extra.get("queued_while_down", 0) > 0, ctx
    assert a_mqtt.dropped == 0 and a_mqtt.sent == a["links"]["mqtt"]["forwarded"], ctx
    lost = a["links"]["mqtt"]["forwarded"] - b["links"]["mqtt"]["received"]
    assert lost >= 0, ctx
    assert b["links"]["radio"]["forwarded"] == b["links"]["mqtt"]["received"], ctx
    unheard_segments = over_end.segments_total - over_end.segments_ok
    assert over.frames_missing == FPP * unheard_segments <= FPP * lost, (over, over_end, ctx)
    assert len(real) + over.frames_missing == spoken == len(over.play_times), over


# --- the commands ------------------------------------------------------------------------------


def test_repeat_command_runs_for_a_duration_and_reports_json() -> None:
    result = CliRunner().invoke(
        cli,
        ["repeat", "--link", "sim://cli_a", "--link", "sim://cli_b", "--duration", "0.2", "--json"],
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert set(stats["links"]) == {"sim://cli_a", "sim://cli_b"}
    assert stats["received"] == 0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["repeat"], "needs a --link"),
        (["repeat", "--link", "sim://x?node=a&apart=a"], "other nodes"),
        (["repeat", "--link", "nope://x", "--link", "sim://y"], "unknown link scheme"),
        (["repeat", "--link", "sim://x", "--link", "mqtt://127.0.0.1"], "relay bridge"),
        (["repeat", "--link", "sim://x", "--link", "sim://y", "--duty-cycle", "2"], "duty"),
        (["bridge", "--link", "sim://x", "--mqtt", "sim://y"], "mqtt://"),
        (["bridge", "--link", "sim://x", "--mqtt", "mqtt://h", "--room", "zz"], "hex"),
        (["bridge", "--link", "mqtt://h", "--mqtt", "mqtt://h"], "radio"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], match: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert match in result.output
    assert "Traceback" not in result.output


def test_help_has_examples() -> None:
    for name in ("repeat", "bridge"):
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0
        assert "Examples:" in result.output


# --- hop limit across brokers, healing receive tasks ---------------------------------------


def _sealed_stand_in(counter: int) -> bytes:
    """A packet with a valid clear header (bridges never open the rest)."""
    head = Header(ptype=PacketType.VOICE, sub=0, hint=0x3F, sender=7, counter=counter)
    return head.pack() + bytes(33)


@pytest.mark.parametrize(("forgetful", "on_x", "on_y"), [(False, 1, 2), (True, 3, 4)])
def test_a_loop_of_bridges_through_two_brokers_stops_at_the_hop_limit(
    tmp_path: Path, mosquitto, forgetful: bool, on_x: int, on_y: int
) -> None:
    """Two bridges, each joining broker X and broker Y (two real mosquittos): a loop. A
    member publishes one packet on X. Dedup alone stops it (each broker carries one copy
    per bridge at most); with a dedup that forgets at once, the hop count carried in the
    MQTT batches stops it: republished with hops 1 (on Y), 2 (on X) and 3 (on Y), never 4."""
    pytest.importorskip("aiomqtt")
    (tmp_path / "y").mkdir()
    broker_y = MosquittoBroker(tmp_path / "y")
    broker_y.start()
    x, y = mosquitto.url, broker_y.url

    async def main():
        bridges = []
        for gw in (1, 2):
            dedup = DedupCache(max_entries=1, max_age=1e-9) if forgetful else None
            core = BridgeCore(gw, hop_limit=4, dedup=dedup)
            links = [
                BridgeLink("x", open_link(x), LinkKind.MQTT),
                BridgeLink("y", open_link(y), LinkKind.MQTT),
            ]
            bridges.append(Bridge(links, gateway_id=gw, core=core))
        member, watch_x, watch_y = open_link(x), open_link(x), open_link(y)
        seen = {"x": 0, "y": 0}

        async def count(name: str, link: Link) -> None:
            while True:
                await link.recv()
                seen[name] += 1

        for link in (member, watch_x, watch_y):
            await link.connect()
        for b in bridges:
            await b.start()
            for bl in b.links.values():
                await bl.link.connect()
        watchers = [
            asyncio.create_task(count("x", watch_x)),
            asyncio.create_task(count("y", watch_y)),
        ]
        await member.send(_sealed_stand_in(1))
        await asyncio.sleep(1.5)  # several hops' time; a circulating packet would show
        for w in watchers:
            w.cancel()
        for b in bridges:
            await b.stop()
        for link in (member, watch_x, watch_y):
            await link.close()
        return seen, [b.stats() for b in bridges]

    try:
        seen, stats = asyncio.run(asyncio.wait_for(main(), 20.0))
    finally:
        broker_y.stop()
    assert seen == {"x": on_x, "y": on_y}, (seen, stats)
    dropped = [s["dropped"] for s in stats]
    if forgetful:
        assert sum(d.get("hop_limit_out", 0) for d in dropped) == 2, dropped
    else:
        assert sum(d.get("duplicate", 0) for d in dropped) == 2, dropped
    assert not any(d.get("own_echo") for d in dropped), dropped  # no local on mosquitto


class FlakyLink(Link):
    """A sim link whose ``recv`` fails ``failures`` times (a driver bug, a USB hiccup)."""

    def __init__(self, inner: Link, failures: int) -> None:
        self.inner, self.failures = inner, failures
        self.url, self.mtu, self.stats = inner.url, inner.mtu, inner.stats

    async def send(self, data: bytes) -> None:
        await self.inner.send(data)

    async def recv(self):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("receive failed")
        return await self.inner.recv()

    def airtime(self, nbytes: int) -> float:
        return self.inner.airtime(nbytes)

    async def drain(self) -> None:
        await self.inner.drain()

    async def close(self) -> None:
        await self.inner.close()


def test_a_receive_task_that_fails_is_restarted_with_backoff(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="relay.runtime.bridge")

    async def main():
        flaky = FlakyLink(island("island_a", "rep"), failures=2)
        rep = Bridge(
            [
                BridgeLink("a", flaky, LinkKind.RADIO),
                BridgeLink("b", island("island_b", "rep"), LinkKind.RADIO),
            ]
        )
        sender, receiver = island("island_a", "tx"), island("island_b", "rx")
        await rep.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while flaky.failures:  # the task failed twice and is backing off
            await asyncio.sleep(0.01)
        await sender.send(_sealed_stand_in(1))
        got = await asyncio.wait_for(receiver.recv(), 10.0)
        took = loop.time() - t0
        stats = rep.stats()
        await rep.stop()
        for link in (sender, receiver):
            await link.close()
        return got.data, took, stats

    data, took, stats = run(main())
    assert data == _sealed_stand_in(1)
    assert stats["links"]["a"]["recv_restarts"] == 2, stats
    assert took >= RECV_BACKOFF_MIN  # backed off before retrying
    assert caplog.text.count("restarting in") == 2


# --- telling the speaker's side why an over did not cross -----------------------------------


def test_a_refused_over_is_explained_to_the_speakers_island_by_a_signed_notice(
    tmp_path: Path,
) -> None:
    """Island B's budget has no room for the over: the repeater refuses it whole and sends a
    signed relay notice back onto island A, where a member of the room is shown why."""
    relay_id = Identity.generate()
    counters = CounterStore(tmp_path / "counters.db")
    room_id, key = os.urandom(8), os.urandom(32)
    speaker_id, watcher_id = Identity.generate(), Identity.generate()
    speaker = Room(room_id, key, 0, [speaker_id.public], speaker_id, counters)
    watcher = Room(room_id, key, 0, [speaker_id.public], watcher_id, counters)
    frames = Encoder(MODE).encode(read_audio(bundled_sample("forig.wav")))[:30]

    async def main():
        # 180 ms of air an hour per radio: room for a notice (69 ms), not for an over's reserve.
        rep = repeater("1", duty_cycle=5e-5, identity=relay_id)
        await rep.start()
        talk, watch = island("island_a", "speaker"), island("island_a", "watcher")
        for i in range(0, len(frames), FPP):
            await talk.send(speaker.sender.voice(MODE, i, frames[i : i + FPP], time.time()))
            await asyncio.sleep(0.2)
        await talk.drain()
        await asyncio.sleep(2.0)
        heard = []
        while watch.pending():
            heard.append((await watch.recv()).data)
        stats = rep.stats()
        for link in (talk, watch):
            await link.close()
        await rep.stop()
        return heard, stats

    heard, stats = run(main())
    counters.close()
    events = [e for data in heard for e in watcher.receive(data, time.time())]
    notices = [e.notice for e in events if isinstance(e, RelayNoticed)]
    assert len(notices) == 1, (events, stats)  # one notice per refused over, not per packet
    notice = notices[0]
    assert notice.reason is NoticeReason.AIRTIME and notice.relay == relay_id.public
    assert notice.speaker == speaker.keys.short_id(speaker_id.identity)
    assert relay_id.public.fingerprint in notice.text
    assert stats["overs_refused"] == 1 and stats["notices"]["told_speaker"] == 1
    assert stats["links"]["b"]["forwarded"] == 0  # nothing of the over went onto island B
