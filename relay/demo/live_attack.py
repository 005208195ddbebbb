"""Words injected in the floor holder's name, over the simulated channel (virtual time).

A moderator grants the floor; the speaker says bundled speech (the real path: Codec2, the
room's sealing and live keys, the simulated LoRa channel). Eve holds the room key but not
the speaker's signing key or its key chain: right after the speaker's k-th key reveal (the
first packet of an interval) she sends a voice packet in the speaker's name under the
counter of the speaker's second packet to come, at its positions (early in an interval:
about the latest a revealed key can flag words). Listeners:

* ``ben`` hears everything: Eve's packet first, then the speaker's under the same counter;
* ``cat`` does the same with ``--verified-only`` playout;
* ``dan`` never hears the speaker's packets Eve replaced (she jammed them at his radio), so
  only the speaker's next key can tell him.

Each listener may also lose the speaker's packets at random (``loss``). The result says when
each listener flagged each injection, how many injected frames each played, what the live
checks cost per voice packet, what share of the speech each verified, and mouth-to-ear
latency with and without verified-only playout. Tests and ``bench/live_verify.py`` use it.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relay.core.events import VoiceFrames
from relay.core.identity import Identity
from relay.core.live import ANCHOR_LEN
from relay.core.room import (
    LIVE_INTERVAL_SECONDS,
    SEAL_COPIES,
    Room,
    RoomEvent,
    SpeechVerified,
    Voice,
)
from relay.core.session import Sender
from relay.core.wire import ControlKind, PacketType, split
from relay.demo.voice import bundled_sample, choose_frames_per_packet
from relay.links.sim.channel import Ether
from relay.radio.profiles import RadioProfile
from relay.runtime.clock import run
from relay.runtime.room import RoomNode
from relay.runtime.voice import Playout
from relay.store.counters import MemoryCounters
from relay.voice.audio import read_audio
from relay.voice.modes import CodecMode
from relay.voice.over import encode_over

SPEECH = ("hts1.wav", "hts2.wav", "cross.wav", "morig.wav", "forig.wav")


@dataclass(frozen=True)
class LiveAttackSettings:
    profile: RadioProfile
    mode: CodecMode
    frames_per_packet: int | None = None  # None: the planner's
    seconds: float = 12.0  # of speech
    inject_after: tuple[int, ...] = (1, 4)  # inject right after these key reveals (1 = first)
    ahead: int = 2  # Eve's counter: the speaker's last one plus this (2: the packet after next)
    loss: float = 0.0  # each listener loses this share of the speaker's packets, at random
    seed: int = 1
    fec: bool = False
    dtx: bool = False
    interval_seconds: float = LIVE_INTERVAL_SECONDS  # speech one key covers


class _RecordingPlayout(Playout):
    """A playout that remembers every frame it was given to play, by position."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.fed: list[tuple[int, bytes]] = []

    def voice(self, event: VoiceFrames, arrival: float) -> None:
        self.fed += [(event.position + i, f) for i, f in enumerate(event.frames)]
        super().voice(event, arrival)


class _Radio(RoomNode):
    """A member's radio: loses the speaker's packets at random, and (``jam``) the second
    voice packet under a counter it already heard (Eve keeps the real one from it)."""

    def __init__(self, *args: Any, speaker_short: int, loss: float, seed: int, jam: bool, **kw):
        super().__init__(*args, **kw)
        self.speaker_short, self.loss, self.jam = speaker_short, loss, jam
        self.lose_rng = random.Random(seed)
        self.voice_counters: set[int] = set()
        self.listening = False  # loss applies once the over has begun
        self.accepted: set[tuple[int, bytes]] = set()  # (position, frame) of voice accepted
        self.verify_lag: list[float] = []  # per verified packet: verified at - end of its speech
        self.start = 0.0  # loop time the speaker began
        self.cpu_s = 0.0  # process time spent taking datagrams (room, checks, playout)
        self.datagrams_in = 0

    def handle(self, data: bytes, arrival: float) -> None:
        self.arrival = arrival
        started = time.process_time()
        self._radio(data, arrival)
        self.cpu_s += time.process_time() - started
        self.datagrams_in += 1

    def note(self, event: RoomEvent) -> None:
        if isinstance(event, Voice):
            frames = event.frames
            self.accepted.update((frames.position + i, f) for i, f in enumerate(frames.frames))
        elif isinstance(event, SpeechVerified) and event.by == "live":
            fs = event.packets[0].mode.frame_seconds
            for frames in event.packets:
                end = self.start + (frames.position + len(frames.frames)) * fs
                self.verify_lag.append(self.arrival - end)

    def _radio(self, data: bytes, arrival: float) -> None:
        header = split(data)[0]
        if header.sender == self.speaker_short and header.ptype != PacketType.HELLO:
            if header.ptype in (PacketType.VOICE, PacketType.VOICE_FEC):
                if self.jam and header.counter in self.voice_counters:
                    return
                self.voice_counters.add(header.counter)
                self.listening = True
            if self.listening and self.lose_rng.random() < self.loss:
                return
        super().handle(data, arrival)


@dataclass
class _Eve:
    """What Eve saw of the speaker on the air (she holds the room key)."""

    last_counter: int = -1
    last_end: int = -1  # last position of the speaker's voice
    reveals: int = 0  # voice packets of the speaker that revealed a key
    anchors: int = 0  # packets that carried the speaker's anchor (hands, grants, beacons)
    seen: asyncio.Event = field(default_factory=asyncio.Event)


def run_live_attack(settings: LiveAttackSettings) -> dict[str, Any]:
    wall = time.monotonic()
    result = run(_scenario(settings), virtual=True)
    result["wall_seconds"] = round(time.monotonic() - wall, 2)
    return result


def _speech(s: LiveAttackSettings):  # type: ignore[no-untyped-def]
    pcm = np.concatenate([read_audio(bundled_sample(name)) for name in SPEECH])
    over = encode_over(pcm, s.mode, fec=s.fec, dtx=s.dtx)
    return over.head(round(s.seconds / s.mode.frame_seconds))


async def _scenario(s: LiveAttackSettings) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    epoch = time.time() - loop.time()

    def clock() -> float:
        return epoch + loop.time()

    fpp = s.frames_per_packet or choose_frames_per_packet(s.profile, s.mode)[0]
    ether = Ether(s.profile, seed=s.seed, lbt=True)
    counters = MemoryCounters()
    room_id, key = os.urandom(8), os.urandom(32)
    mod_id, ana_id, eve_id, ben_id, cat_id, dan_id = (Identity.generate() for _ in range(6))
    everyone = [ana_id, eve_id, ben_id, cat_id, dan_id]

    def room(ident: Identity, roster=()) -> Room:  # type: ignore[no-untyped-def]
        r = Room(
            room_id, key, 0, [mod_id.public], ident, counters, roster=roster, mtu=ether.profile.mtu
        )
        r.live_interval = s.interval_seconds
        r.packet_seconds = fpp * s.mode.frame_seconds
        return r

    ana_short = room(ana_id).keys.short_id(ana_id.identity)
    mod_short = room(ana_id).keys.short_id(mod_id.identity)
    eve = _Eve()

    def eve_sees(event: RoomEvent) -> None:
        if isinstance(event, Voice) and event.frames.sender == ana_id.identity:
            frames = event.frames
            eve.last_end = max(eve.last_end, frames.position + len(frames.frames) - 1)
            if frames.live_link is not None:
                eve.reveals += 1
                eve.seen.set()

    class EveRadio(RoomNode):
        def handle(self, data: bytes, arrival: float) -> None:
            header = split(data)[0]
            kind = None
            if header.sender == mod_short and header.ptype == PacketType.CONTROL:
                kind = getattr(self.room.receiver.reopen(data, clock()), "kind", None)
            super().handle(data, arrival)
            if header.sender == ana_short and header.ptype != PacketType.HELLO:
                eve.last_counter = max(eve.last_counter, header.counter)
            eve.anchors += header.sender == ana_short and header.ptype == PacketType.HELLO
            if kind in (ControlKind.MOD, ControlKind.BEACON) and self.room.floor_anchor:
                eve.anchors += 1

    mod = RoomNode(room(mod_id, [i.public for i in everyone]), ether.attach("mod"), clock)
    ana = RoomNode(room(ana_id), ether.attach("ana"), clock, seed=s.seed)
    eve_node = EveRadio(room(eve_id), ether.attach("eve"), clock, on_event=eve_sees)
    listeners = {}
    for n, (name, ident, verified_only, jam) in enumerate(
        (("ben", ben_id, False, False), ("cat", cat_id, True, False), ("dan", dan_id, False, True))
    ):
        radio = _Radio(
            room(ident),
            ether.attach(name),
            clock,
            playout=_RecordingPlayout(verified_only=verified_only),
            speaker_short=ana_short,
            loss=s.loss,
            seed=s.seed * 100 + n,
            jam=jam,
        )
        radio._on_event = radio.note
        listeners[name] = radio
    nodes = [mod, ana, eve_node, *listeners.values()]
    tasks = [asyncio.create_task(node.run()) for node in nodes]
    stop = asyncio.Event()
    moderating = asyncio.create_task(mod.moderate(auto_grant=120, stop=stop))

    over = _speech(s)
    assert await ana.wait_for_floor(timeout=30)
    start = loop.time()
    for radio in listeners.values():
        radio.start = start
    speaking = asyncio.create_task(ana.speak_over(over, fpp))
    injected: list[tuple[int, int, bytes]] = []  # (counter, position, frame)
    # Eve knows the speaker's session: it is in the grant and beacons she receives.
    forger = Sender(
        eve_node.room.keys, ana_id.identity, MemoryCounters(), session=eve_node.room.floor_session
    )
    for k in sorted(s.inject_after):
        while eve.reveals < k and not speaking.done():
            eve.seen.clear()
            seen = asyncio.ensure_future(eve.seen.wait())
            await asyncio.wait({seen, speaking}, return_when=asyncio.FIRST_COMPLETED)
            seen.cancel()
        if speaking.done():
            break
        # By default the speaker's packet after next (hers is on the air first), at its
        # positions; further ahead, a counter the speaker will reach only later.
        counter, position = eve.last_counter + s.ahead, eve.last_end + 1 + fpp
        frames = [bytes([0x66 + len(injected)]) * s.mode.bytes_per_frame] * fpp
        forger._next, forger._limit = counter, counter + 1  # the speaker's next counter
        await eve_node.send(forger.voice(s.mode, position, frames, clock()))
        injected += [(counter, position + i, f) for i, f in enumerate(frames)]
    said = await speaking
    await ana.link.drain()
    for li in listeners.values():
        await li.playout.wait_overs(1, timeout=10)
    await asyncio.sleep(1.0)
    stop.set()
    await moderating
    for node in nodes:
        await node.link.close()
    await asyncio.gather(*tasks)

    fs = s.mode.frame_seconds
    voice_packets = said.packets_sent - SEAL_COPIES
    # Live checks add no packets: the trailers and revealed keys of voice packets, and the
    # anchor in the hand raises, grants and beacons (counted for every one Eve heard).
    live_bytes = ana.room.live_bytes + ANCHOR_LEN * eve.anchors
    fake = {(p, f) for _, p, f in injected}
    report: dict[str, Any] = {
        "preset": s.profile.name,
        "mode": s.mode.name,
        "frames_per_packet": fpp,
        "speech_seconds": round(over.seconds, 2),
        "loss": s.loss,
        "fec": s.fec,
        "dtx": s.dtx,
        "interval_seconds": s.interval_seconds,
        "voice_packets": voice_packets,
        "key_reveals": eve.reveals,
        "live_bytes": live_bytes,
        "added_bytes_per_voice_packet": round(live_bytes / max(1, voice_packets), 2),
        "injections": len(injected) // fpp,
        "listeners": {},
    }
    injected_at = [(p, f, start + p * fs) for _, p, f in injected[::fpp]]
    sent_positions = len(over.frames)
    said_frames = set(zip(over.positions, over.frames, strict=True))
    for name, li in listeners.items():
        flags = li.log.flags
        to_flag = []
        for position, frame, spoken in injected_at:
            if (position, frame) not in li.accepted:
                continue  # lost on the way to this listener: nothing to flag
            times = [
                t for f, t in zip(flags, li.log.flag_times, strict=True) if position in f.positions
            ]
            to_flag.append(round(min(times) - spoken, 3) if times else None)
        playout = li.playout
        (heard,) = playout.overs[:1] or (None,)
        latencies = [t - (start + p * fs) for p, t in heard.play_times.items()] if heard else []
        genuine_fed = {(p, f) for p, f in playout.fed} - fake
        report["listeners"][name] = {
            "verified_only": playout.verified_only,
            "jammed": li.jam,
            "flags": len(flags),
            "seconds_to_flag": to_flag,
            "injections_received": len(to_flag),
            "injected_frames_played": sum(1 for pf in playout.fed if pf in fake),
            "frames_played_not_said": sum(1 for pf in playout.fed if pf not in said_frames),
            "seconds_to_verify_max": round(max(li.verify_lag), 3) if li.verify_lag else None,
            "verified_share": round(li.log.verified_packets / max(1, voice_packets), 3),
            "played_share": round(len(genuine_fed) / max(1, sent_positions), 3),
            "verdict": li.log.overs[0].verdict if li.log.overs else None,
            "latency_ms_p50": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "cpu_us_per_datagram": round(1e6 * li.cpu_s / max(1, li.datagrams_in), 1),
            "dropped": dict(li.log.dropped),
        }
    return report
