"""Amateur-band mode on a link: an over sent as signed ham packets, and a listener that
verifies them (thin asyncio glue around :mod:`relay.core.ham`)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from relay.core.ham import HamEnd, HamReceiver, HamSender, HamVoice, voice_overhead
from relay.errors import LinkError, UsageError
from relay.links.base import Link
from relay.voice.modes import CodecMode

DEFAULT_FRAMES = 10  # amortises the 64-byte signature: see relay.core.ham
END_COPIES = 2


def ham_frames_per_packet(mode: CodecMode, callsign: str, mtu: int, wanted: int) -> int:
    """``wanted`` frames per packet, or fewer if the link's MTU cannot carry them."""
    most = (mtu - voice_overhead(callsign)) // mode.bytes_per_frame
    if most < 1:
        raise UsageError(
            f"the link's MTU of {mtu} B cannot carry one Codec2 {mode.name} frame after "
            f"{voice_overhead(callsign)} B of ham header, callsign and signature"
        )
    return max(1, min(wanted, most))


def ham_over(sender: HamSender, mode: CodecMode, frames: list[bytes], fpp: int) -> list[bytes]:
    """The packets of one over: an intro, the voice, the end twice (a lost end is common)."""
    packets = [sender.intro()]
    for i in range(0, len(frames), fpp):
        packets.append(sender.voice(mode, i, frames[i : i + fpp]))
    return packets + [sender.end(len(frames))] * END_COPIES  # a copy: a replay if both arrive


@dataclass
class HamHeard:
    """What a ham listener verified, per callsign, and what it refused (by reason)."""

    frames: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    modes: dict[str, CodecMode] = field(default_factory=dict)
    overs_ended: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    accepted: int = 0


async def ham_send(link: Link, packets: list[bytes]) -> int:
    for packet in packets:
        await link.send(packet)
    await link.drain()
    return len(packets)


async def ham_listen(link: Link, receiver: HamReceiver, duration: float) -> HamHeard:
    """Verify what arrives for ``duration`` seconds (loop time); positions unwrap per
    callsign so a long over plays in order."""
    heard = HamHeard()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    expected: dict[str, int] = {}
    while (left := deadline - loop.time()) > 0:
        try:
            datagram = await asyncio.wait_for(link.recv(), left)
        except (TimeoutError, LinkError):
            break
        event = receiver.receive(datagram.data, loop.time())
        if isinstance(event, HamVoice):
            from relay.core.wire import unwrap_position

            start = unwrap_position(event.position, expected.get(event.callsign, 0))
            expected[event.callsign] = start + len(event.frames)
            heard.modes[event.callsign] = event.mode
            got = heard.frames.setdefault(event.callsign, [])
            got.extend((start + k, f) for k, f in enumerate(event.frames))
        elif isinstance(event, HamEnd):
            heard.overs_ended[event.callsign] += 1
    heard.rejected = Counter(receiver.rejected)
    heard.accepted = receiver.accepted
    return heard
