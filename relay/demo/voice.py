"""The voice demo: one speaker, one listener, real speech over a simulated LoRa channel.

Everything on the path is the real thing — Codec2, the wire format, AES-CCM with durable
counters, the simulated radio with airtime, loss and duty cycle, the jitter buffer and loss
concealment — so the report is what a pair of radios with these settings would do.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from relay.core import Receiver, RoomKeys, Sender, random_room_key
from relay.core.wire import FEC_PAIRS, VOICE_PACKET_MAX_OVERHEAD
from relay.errors import UsageError
from relay.links.sim.channel import Ether
from relay.plan import Budget, evaluate, fec_advised, fec_cost, plan
from relay.radio.profiles import RadioProfile
from relay.runtime.clock import run
from relay.runtime.voice import Listener, batches, talk
from relay.store.counters import CounterStore
from relay.voice.audio import read_audio, write_audio
from relay.voice.modes import SAMPLE_RATE, CodecMode
from relay.voice.over import EncodedOver, encode_over

DEFAULT_SAMPLE = "hts1.wav"


def bundled_sample(name: str = DEFAULT_SAMPLE) -> Path:
    """Path of a speech sample shipped inside the package."""
    path = resources.files("relay.samples") / name
    return Path(str(path))


@dataclass(frozen=True)
class DemoSettings:
    profile: RadioProfile
    mode: CodecMode
    frames_per_packet: int | None = None  # None: the planner's choice
    loss: float = 0.0
    burst: float | None = None  # mean burst length (packets) for Gilbert-Elliott loss
    seed: int = 1
    realtime: bool = False
    sample_rate: int = SAMPLE_RATE
    fec: bool | None = None  # None: as the planner recommends for ``loss``
    dtx: bool = False
    conceal: str = "interpolate"
    # The delay live voice may take, and the repeaters on the channel.
    budget: Budget = field(default_factory=Budget)

    def __post_init__(self) -> None:
        if self.fec and self.mode.name not in FEC_PAIRS:
            raise UsageError(f"--fec: codec {self.mode.name} has no FEC pairing")
        if not 0.0 <= self.loss <= 1.0:
            raise UsageError(f"--loss must be between 0 and 1 (a fraction), got {self.loss}")
        if self.burst is not None and self.burst < 1.0:
            raise UsageError(f"--burst is a mean burst length in packets (>= 1), got {self.burst}")
        if self.frames_per_packet is not None:
            check_frames_fit(self.profile, self.mode, self.frames_per_packet)


def max_frames_per_packet(profile: RadioProfile, mode: CodecMode) -> int:
    return (profile.mtu - VOICE_PACKET_MAX_OVERHEAD) // mode.bytes_per_frame


def check_frames_fit(profile: RadioProfile, mode: CodecMode, frames: int) -> None:
    if frames < 1:
        raise UsageError(f"--frames-per-packet must be at least 1, got {frames}")
    size = VOICE_PACKET_MAX_OVERHEAD + frames * mode.bytes_per_frame
    if size > profile.mtu:
        raise UsageError(
            f"{frames} frames of {mode.name} ({mode.bytes_per_frame} B each) plus "
            f"{VOICE_PACKET_MAX_OVERHEAD} B of header, live check and tag make {size} B, over the "
            f"{profile.mtu} B MTU of {profile.name}; use at most "
            f"{max_frames_per_packet(profile, mode)}"
        )


def choose_frames_per_packet(
    profile: RadioProfile,
    mode: CodecMode,
    loss: float | None = None,
    budget: Budget | None = None,
) -> tuple[int, bool]:
    """The planner's frames-per-packet for this mode (for this loss: room for FEC) within
    ``budget`` (default: the planner's), and whether live voice fits."""
    kwargs = (budget or Budget()).plan_kwargs()
    result = plan(profile, mode=mode, loss=loss, **kwargs)
    if result.best is not None:
        return result.best.frames_per_packet, True
    # Nothing fits live: fill packets to the MTU, the least airtime per second of speech.
    return max_frames_per_packet(profile, mode), False


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def run_demo(settings: DemoSettings, input_path: Path, output_path: Path) -> dict[str, Any]:
    """Send ``input_path`` across the simulated channel and write what arrives to ``output_path``.

    Returns the report. The output file is written atomically and only on success.
    """
    pcm = read_audio(input_path)
    mode = settings.mode
    fpp = settings.frames_per_packet
    budget = settings.budget
    fits_live = choose_frames_per_packet(settings.profile, mode, budget=budget)[1]
    if fpp is None:
        fpp = choose_frames_per_packet(settings.profile, mode, settings.loss, budget)[0]
    fec = settings.fec
    if fec is None:  # the planner's advice for this loss, at this packet size
        row = evaluate(settings.profile, mode, fpp, **budget.plan_kwargs())
        cost = fec_cost(settings.profile, row, relay_hops=budget.relay_hops)
        fec = fec_advised(cost, settings.loss)
    encoded = encode_over(pcm, mode, fec=fec, dtx=settings.dtx)
    frames = encoded.frames
    wall_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="relay-demo-") as state_dir:
        outcome = run(
            _exchange(settings, encoded, fpp, Path(state_dir)), virtual=not settings.realtime
        )
    wall_seconds = time.monotonic() - wall_start
    listener, talked, ether, a, b = outcome
    over = listener.overs[0] if listener.overs else None
    received_pcm = over.audio() if over is not None else np.zeros(0, dtype=np.int16)
    # The listener hears exactly as long as was said: pad or trim the concealed tail.
    target = encoded.total * mode.samples_per_frame
    received_pcm = np.pad(received_pcm, (0, max(0, target - len(received_pcm))))[:target]
    write_audio(output_path, received_pcm, rate=settings.sample_rate)

    speech_seconds = len(pcm) / SAMPLE_RATE
    latencies = []
    if over is not None:
        frame_s = mode.frame_seconds
        latencies = [
            (t - (talked.capture_start + pos * frame_s)) * 1000.0
            for pos, t in over.play_times.items()
        ]
    arrived = b.stats.received
    airtime = a.stats.airtime_s
    overhead = 0
    if talked.datagram_sizes:  # the first packet is plain voice, even with FEC
        first = next(batches(frames, fpp, None, encoded.positions))[1]
        overhead = talked.datagram_sizes[0] - len(first) * mode.bytes_per_frame
    link_overhead = settings.profile.link_overhead_bytes
    return {
        "input": str(input_path),
        "output": str(output_path),
        "preset": settings.profile.name,
        "mode": mode.name,
        "frames_per_packet": fpp,
        "speech_seconds": round(speech_seconds, 3),
        "packets_sent": talked.packets_sent,
        "packets_received": listener.receiver.accepted,
        "packets_lost": talked.packets_sent - arrived,
        "packets_rejected": sum(listener.receiver.rejected.values()),
        "codec_bytes": talked.codec_bytes,
        "air_bytes": talked.datagram_bytes + link_overhead * talked.packets_sent,
        "overhead_bytes_per_packet": overhead,
        "link_overhead_bytes_per_packet": link_overhead,
        "airtime_seconds": round(airtime, 4),
        "channel_occupancy": round(airtime / speech_seconds, 4) if speech_seconds else 0.0,
        "latency_ms": {
            "p50": round(_percentile(latencies, 50), 1),
            "max": round(max(latencies, default=0.0), 1),
        },
        "fits_live": fits_live,
        "max_delay_ms": budget.max_delay_ms,
        "relay_hops": budget.relay_hops,
        "frames_sent": len(frames),
        "frames_skipped": encoded.total - len(frames),
        "frames_concealed": over.frames_concealed if over else encoded.total,
        "frames_from_fec": over.frames_redundant if over else 0,
        "fec": fec,
        "dtx": settings.dtx,
        "conceal": settings.conceal,
        "frames_late": over.frames_late if over else 0,
        "over_complete": bool(over and over.complete),
        "loss": settings.loss,
        "burst": settings.burst,
        "seed": settings.seed,
        "duty_cycle": settings.profile.duty_cycle,
        "collisions": ether.stats_total("collisions"),
        "realtime": settings.realtime,
        "wall_seconds": round(wall_seconds, 3),
    }


async def _exchange(settings: DemoSettings, over: EncodedOver, fpp: int, state_dir: Path):
    loop = asyncio.get_running_loop()
    epoch = time.time() - loop.time()

    def room_clock() -> float:
        return epoch + loop.time()

    ether = Ether(
        settings.profile,
        loss=settings.loss,
        burst=settings.burst,
        seed=settings.seed,
    )
    a, b = ether.attach("speaker"), ether.attach("listener")
    keys = RoomKeys(random_room_key())
    identity = os.urandom(32)
    counters = CounterStore(state_dir / "counters.db")
    try:
        sender = Sender(keys, identity, counters)
        receiver = Receiver(keys)
        receiver.add_sender(identity, sender.session)
        listener = Listener(receiver, room_clock, conceal=settings.conceal)
        listening = asyncio.create_task(listener.run(b))
        talked = await talk(
            a,
            sender,
            settings.mode,
            over.frames,
            fpp,
            room_clock,
            redundant=over.redundant,
            positions=over.positions if over.dtx else None,
        )
        await a.drain()
        # Give the last packets time to play out (and the idle timeout if the end was lost).
        await listener.wait_overs(1, timeout=listener.idle_timeout + listener.max_delay + 5.0)
        await b.close()
        await listening
        await a.close()
    finally:
        counters.close()
    return listener, talked, ether, a, b
