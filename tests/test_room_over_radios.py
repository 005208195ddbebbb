"""Proof: a real room runs unchanged over each radio driver.

The same moderated room (relay.core.room.Room driven by relay.runtime.room.RoomNode, real
time, real Codec2 speech) runs over the Meshtastic emulator behind the real meshtastic
library, over emulated UART LoRa modules through the at:// driver, and over two real
direwolf TNCs through kiss+tcp://. In each, the listener must verify the speaker's signed
over and play most of its frames.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from relay.core.identity import Identity
from relay.core.room import Room
from relay.core.wire import VOICE_PACKET_OVERHEAD
from relay.demo.voice import bundled_sample
from relay.links.base import Link
from relay.links.url import open_link
from relay.runtime.room import RoomNode
from relay.store.counters import CounterStore
from relay.voice.audio import read_audio
from relay.voice.codec import Encoder
from relay.voice.modes import CodecMode, mode_by_name

MODE = mode_by_name("1600")
SAMPLE = "forig.wav"  # 1.6 s of speech: 39 frames of 1600
GRANT_SECONDS = 30
MOST = 0.8  # share of the over's frames the listener must play


def speech(mode: CodecMode = MODE) -> list[bytes]:
    return Encoder(mode).encode(read_audio(bundled_sample(SAMPLE)))


def frames_per_packet(link: Link, mode: CodecMode, limit: int = 10) -> int:
    """The fewest frames a packet that keeps up with real time (airtime under 70 % of the
    speech it carries) and fits the link's MTU; at most ``limit`` (latency)."""
    most = min(limit, (link.mtu - VOICE_PACKET_OVERHEAD) // mode.bytes_per_frame)
    for fpp in range(1, most + 1):
        size = VOICE_PACKET_OVERHEAD + fpp * mode.bytes_per_frame
        if link.airtime(size) < 0.7 * fpp * mode.frame_seconds:
            return fpp
    return most


def played(node: RoomNode) -> int:
    """Frames that really arrived and were played (not concealment)."""
    return node.log.voice_frames


async def wait_for_over(node: RoomNode, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (node.log.overs and node.playout.overs) and loop.time() < deadline:
        await asyncio.sleep(0.05)


async def run_room(
    links: Sequence[Link], state: Path, *, speak_self: bool = False
) -> tuple[RoomNode, int, dict[str, object]]:
    """A room over ``links``: links[0] moderates; the speaker is links[1] (it raises a hand
    and is granted the floor) or, with ``speak_self``, the moderator itself; the last link
    listens. Returns the listener, the frames spoken and some numbers for the report."""
    clock = time.time
    counters = CounterStore(state / "counters.db")
    room_id, key = os.urandom(8), os.urandom(32)
    ids = [Identity.generate() for _ in links]
    mod_id = ids[0]

    def member(ident: Identity, link: Link, roster=()) -> RoomNode:
        room = Room(room_id, key, 0, [mod_id.public], ident, counters, roster=roster, mtu=link.mtu)
        return RoomNode(room, link, clock, seed=1)

    nodes = [member(mod_id, links[0], roster=[i.public for i in ids[1:]])]
    nodes += [member(i, link) for i, link in zip(ids[1:], links[1:], strict=True)]
    moderator, listener = nodes[0], nodes[-1]
    speaker = moderator if speak_self else nodes[1]
    frames = speech()
    fpp = frames_per_packet(speaker.link, MODE)
    tasks = [asyncio.create_task(n.run()) for n in nodes]
    stop = asyncio.Event()
    moderating = None
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        if speak_self:
            # A moderator may grant itself the floor: no hand to raise.
            await moderator.send(moderator.room.grant(moderator.room.me.identity, 30, clock()))
            assert moderator.room.holds_floor(clock())
        else:
            moderating = asyncio.create_task(
                moderator.moderate(auto_grant=GRANT_SECONDS, stop=stop)
            )
            assert await speaker.wait_for_floor(timeout=30.0), "the speaker was never granted"
        granted = loop.time() - t0
        result = await speaker.speak(MODE, frames, fpp)
        await speaker.link.drain()
        await wait_for_over(listener, timeout=30.0)  # real time: generous for a loaded machine
        numbers = {
            "fpp": fpp,
            "granted_after_s": round(granted, 2),
            "over_s": round(loop.time() - t0 - granted, 2),
            "capture_start": result.capture_start,
        }
    finally:
        stop.set()
        if moderating is not None:
            await moderating
        for n in nodes:
            await n.link.close()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5.0)
        counters.close()
    return listener, len(frames), numbers


def check(listener: RoomNode, spoken: int, numbers: dict[str, object], driver: str) -> None:
    verdicts = [o.verdict for o in listener.log.overs]
    heard = played(listener)
    print(f"room over {driver}: {verdicts}, played {heard}/{spoken} frames, {numbers}")
    assert verdicts == ["verified"], (verdicts, listener.log.dropped)
    assert len(listener.playout.overs) == 1
    assert listener.playout.overs[0].verdict == "verified"
    assert heard >= MOST * spoken, (heard, spoken, listener.log.dropped)


# --- Meshtastic: the emulated mesh behind the real meshtastic library ----------------------


@pytest.mark.parametrize("listener", ["tcp", "pty"])
def test_room_over_meshtastic(tmp_path: Path, listener: str) -> None:
    """Moderator and speaker on TCP nodes; the listener on TCP, or on a serial port (a pty,
    through the library's SerialInterface) as a radio on USB would be."""
    pytest.importorskip("meshtastic")
    from relay.emulate.meshtastic import EmulatorThread

    with EmulatorThread(nodes=3, preset="SHORT_TURBO") as mesh:
        urls = [f"meshtastic+tcp://127.0.0.1:{mesh.run(mesh.mesh.serve_tcp, i)}" for i in (0, 1)]
        if listener == "pty":
            urls.append(f"meshtastic://{mesh.run(mesh.mesh.serve_pty, 2)}")
        else:
            urls.append(f"meshtastic+tcp://127.0.0.1:{mesh.run(mesh.mesh.serve_tcp, 2)}")

        async def main() -> tuple[RoomNode, int, dict[str, object]]:
            links = [open_link(url) for url in urls]
            try:
                await asyncio.gather(*(link.wait_connected(10) for link in links))
            except BaseException:
                for link in links:
                    await link.close()
                raise
            return await run_room(links, tmp_path)

        check(*asyncio.run(main()), driver="meshtastic")


# --- UART LoRa modules: emulated modules on ptys, the at:// driver -------------------------


@pytest.mark.parametrize("name", ["rak3172", "e22"])
def test_room_over_at_modules(tmp_path: Path, name: str) -> None:
    from relay.emulate.at import Emulator
    from relay.links.at import link as atmod
    from relay.links.at.profile import profile
    from relay.radio.lora import LoRaParams

    p = profile(name)
    # The fast air settings of tests/test_at.py; transparent (raw) modules at a fast UART.
    fast = LoRaParams(sf=7 if p.mode == "at" else 5, bw_hz=500_000, cr=5, preamble=8)
    extra = {"baud": 921600} if p.mode == "raw" else {}

    async def main() -> tuple[RoomNode, int, dict[str, object]]:
        async with Emulator(p, 3, lora=fast) as emu:
            links = [atmod.open_url(emu.url(m, **extra)) for m in emu.modules]
            try:
                for link in links:
                    await link.ready(3)
            except BaseException:
                for link in links:
                    await link.close()
                raise
            return await run_room(links, tmp_path)

    check(*asyncio.run(main()), driver=f"at:// {name}")


# --- Two real direwolf TNCs, 9600 baud, via kiss+tcp:// -----------------------------------


def test_room_over_direwolf(tmp_path: Path) -> None:
    from test_kiss_direwolf import DIREWOLF, DirewolfPair

    if DIREWOLF is None:
        pytest.skip("direwolf binary not on PATH (apt-get install direwolf)")
    (tmp_path / "direwolf").mkdir()
    pair = DirewolfPair(tmp_path / "direwolf")

    async def main() -> tuple[RoomNode, int, dict[str, object]]:
        links = [open_link(f"kiss+tcp://127.0.0.1:{pair.kiss[n]}") for n in "ab"]
        try:
            await asyncio.gather(*(link.connect() for link in links))
            # direwolf holds the first frame of a new KISS client for up to ~1 s.
            await asyncio.sleep(1.2)
        except BaseException:
            for link in links:
                await link.close()
            raise
        # Two TNCs, two members: the moderator grants itself the floor and speaks.
        return await run_room(links, tmp_path, speak_self=True)

    try:
        pair.start()
        outcome = asyncio.run(main())
    finally:
        pair.stop()
    check(*outcome, driver="direwolf kiss+tcp")
