"""The planner: does live voice fit this link, and with which codec mode and packet size?

Pure functions over a :class:`RadioProfile` and the Codec2 mode table. A row is one
(mode, frames per packet) choice; it fits live voice when one talker plus one relay hop
leaves room for control traffic, the talker stays inside the regulatory duty cycle, and
packetisation plus airtime stays under the latency a conversation tolerates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from relay.core.wire import (
    FEC_PAIRS,
    LIVE_LINK_LEN,
    VOICE_PACKET_OVERHEAD,
)  # header + tag bytes per packet
from relay.errors import UsageError
from relay.radio.profiles import RadioProfile
from relay.voice.modes import MODES, CodecMode, mode_by_name

MAX_OCCUPANCY = 0.9  # with one relay hop; the rest is left for control traffic
MAX_LATENCY = 0.4  # seconds, packetisation + airtime + one frame of jitter margin
RELAY_HOPS = 1
# The best row leaves headroom when it can: a talker plus relay under 85 % of the channel and
# mouth-to-ear under 300 ms is comfortable; a row that only just fits is a fallback.
COMFORT_OCCUPANCY = 0.85
COMFORT_LATENCY = 0.3
# A room may allow more delay than a phone call (one person talks at a time): its budget.
DEFAULT_MAX_DELAY_MS = round(MAX_LATENCY * 1000)
MIN_MAX_DELAY_MS, MAX_MAX_DELAY_MS = 100, 10_000
MAX_RELAY_HOPS = 3
# FEC pays off from this much packet loss on (bench/quality.py: at 5 % random loss it lifts
# 1600's STOI by about 0.01 and PESQ by 0.1; at 10 % by 0.03 and 0.2).
FEC_MIN_LOSS = 0.05


@dataclass(frozen=True, slots=True)
class Budget:
    """What a room allows live voice: mouth-to-ear delay, and the repeaters that re-send it.

    A moderated room, where one person talks at a time, can take a second of delay where a
    phone call cannot: larger packets spend less airtime on LoRa preambles and headers, so
    slower presets carry live voice. Each relay hop (a store-and-forward repeater on the same
    channel) sends every packet again, so the channel must hold ``1 + relay_hops`` copies.
    """

    max_delay_ms: int = DEFAULT_MAX_DELAY_MS
    relay_hops: int = RELAY_HOPS

    def __post_init__(self) -> None:
        ms, hops = self.max_delay_ms, self.relay_hops
        if not isinstance(ms, int) or not MIN_MAX_DELAY_MS <= ms <= MAX_MAX_DELAY_MS:
            raise UsageError(
                f"a delay budget is {MIN_MAX_DELAY_MS}..{MAX_MAX_DELAY_MS} ms, got {ms!r}"
            )
        if not isinstance(hops, int) or not 0 <= hops <= MAX_RELAY_HOPS:
            raise UsageError(f"relay hops are 0..{MAX_RELAY_HOPS}, got {hops!r}")

    @property
    def max_latency(self) -> float:
        """Seconds: no live row may take longer, mouth to ear."""
        return self.max_delay_ms / 1000.0

    @property
    def comfort_latency(self) -> float:
        """Seconds: rows this quick are preferred (300 ms of the default 400, 3/4 of more)."""
        return comfort_latency(self.max_latency)

    def plan_kwargs(self) -> dict[str, Any]:
        """The keyword arguments :func:`plan` and :func:`evaluate` take for this budget."""
        return {"max_latency": self.max_latency, "relay_hops": self.relay_hops}

    def to_dict(self) -> dict[str, int]:
        return {"max_delay_ms": self.max_delay_ms, "relay_hops": self.relay_hops}


def comfort_latency(max_latency: float) -> float:
    """The latency below which a row is comfortable, for a hard limit of ``max_latency``:
    COMFORT_LATENCY (300 ms) for the default 400 ms, three quarters of larger budgets."""
    if max_latency <= MAX_LATENCY:
        return min(max_latency, COMFORT_LATENCY)
    return max(COMFORT_LATENCY, 0.75 * max_latency)


@dataclass(frozen=True, slots=True)
class FecCost:
    """What forward error correction adds to a plan row: each packet also carries copies of
    the previous packet's frames in the paired lower-rate mode."""

    mode: CodecMode  # of the redundant copies
    datagram_bytes: int
    airtime_per_packet: float
    airtime_per_second: float
    relay_occupancy: float
    extra_airtime: float  # fraction more airtime than without FEC
    problems: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        def num(x: float, digits: int) -> float | None:  # JSON has no infinity
            return round(x, digits) if math.isfinite(x) else None

        return {
            "redundant_mode": self.mode.name,
            "datagram_bytes": self.datagram_bytes,
            "airtime_per_packet_ms": num(self.airtime_per_packet * 1000, 2),
            "airtime_per_second_s": num(self.airtime_per_second, 4),
            "relay_occupancy": num(self.relay_occupancy, 4),
            "extra_airtime": num(self.extra_airtime, 4),
            "fits": self.fits,
            "problems": list(self.problems),
        }


def fec_cost(
    profile: RadioProfile,
    row: PlanRow,
    *,
    duty_cycle: float | None = None,
    relay_hops: int = RELAY_HOPS,
    max_occupancy: float = MAX_OCCUPANCY,
) -> FecCost | None:
    """FEC's cost on ``row`` (None when the mode has no FEC pairing)."""
    name = FEC_PAIRS.get(row.mode.name)
    if name is None:
        return None
    red = mode_by_name(name)
    dc = profile.duty_cycle if duty_cycle is None else duty_cycle
    size = row.datagram_bytes + row.frames_per_packet * red.bytes_per_frame
    problems = []
    if size > profile.mtu:
        problems.append(f"{size} B packets exceed the {profile.mtu} B MTU")
        return FecCost(red, size, math.inf, math.inf, math.inf, math.inf, tuple(problems))
    per_packet = profile.airtime(size)
    per_second = per_packet * row.mode.frames_per_second / row.frames_per_packet
    relayed = per_second * (1 + relay_hops)
    if relayed > max_occupancy:
        problems.append(f"{relayed:.0%} of the channel with {relay_hops} relay hop(s)")
    if dc < 1.0 and per_second > dc:
        problems.append(f"{per_second:.1%} airtime exceeds the {dc:.1%} duty cycle")
    return FecCost(
        mode=red,
        datagram_bytes=size,
        airtime_per_packet=per_packet,
        airtime_per_second=per_second,
        relay_occupancy=relayed,
        extra_airtime=per_second / row.airtime_per_second - 1,
        problems=tuple(problems),
    )


def fec_advised(fec: FecCost | None, loss: float | None) -> bool:
    """Use FEC when the link loses enough packets and FEC still fits the airtime budget."""
    return fec is not None and fec.fits and loss is not None and loss >= FEC_MIN_LOSS


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One codec mode at one packet size, and what it costs on this link."""

    mode: CodecMode
    frames_per_packet: int
    datagram_bytes: int
    airtime_per_packet: float  # seconds
    airtime_per_second: float  # seconds of air per second of speech
    occupancy: float  # fraction of the channel one talker uses (== airtime_per_second)
    relay_occupancy: float  # with the relay hop(s) repeating it
    latency: float  # seconds: packetisation + airtime + one frame of jitter margin
    problems: tuple[str, ...]  # why it does not fit live voice; empty if it fits

    @property
    def fits(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.name,
            "bitrate": self.mode.bitrate,
            "frames_per_packet": self.frames_per_packet,
            "packet_ms": round(self.frames_per_packet * self.mode.frame_seconds * 1000, 1),
            "datagram_bytes": self.datagram_bytes,
            "airtime_per_packet_ms": round(self.airtime_per_packet * 1000, 2),
            "airtime_per_second_s": round(self.airtime_per_second, 4),
            "occupancy": round(self.occupancy, 4),
            "relay_occupancy": round(self.relay_occupancy, 4),
            "latency_ms": round(self.latency * 1000, 1),
            "fits": self.fits,
            "problems": list(self.problems),
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """Every row considered, the best live-voice choice (if any) and advice in words."""

    profile: RadioProfile
    duty_cycle: float
    overhead: int
    rows: tuple[PlanRow, ...]
    best: PlanRow | None
    advice: str
    fec: FecCost | None = None  # FEC's cost on the best row
    loss: float | None = None  # the packet loss the user expects, if given
    use_fec: bool = False  # the planner's recommendation for that loss
    max_latency: float = MAX_LATENCY
    relay_hops: int = RELAY_HOPS

    @property
    def fits_live(self) -> bool:
        return self.best is not None

    def to_dict(self) -> dict[str, Any]:
        lora = self.profile.lora
        return {
            "profile": {
                "name": self.profile.name,
                "sf": lora.sf,
                "bw_hz": lora.bw_hz,
                "cr": lora.coding_rate,
                "preamble": lora.preamble,
                "mtu": self.profile.mtu,
                "link_overhead_bytes": self.profile.link_overhead_bytes,
            },
            "duty_cycle": self.duty_cycle,
            "max_delay_ms": round(self.max_latency * 1000),
            "relay_hops": self.relay_hops,
            "voice_packet_overhead": self.overhead,
            "fits_live": self.fits_live,
            "best": self.best.to_dict() if self.best else None,
            "advice": self.advice,
            "loss": self.loss,
            "fec": self.fec.to_dict() if self.fec else None,
            "recommend": {"fec": self.use_fec, "conceal": "interpolate"},
            "rows": [r.to_dict() for r in self.rows],
        }


def max_frames_per_packet(
    profile: RadioProfile, mode: CodecMode, overhead: int = VOICE_PACKET_OVERHEAD
) -> int:
    """How many frames of ``mode`` one datagram can carry (0 if not even one), with room
    for the live key one voice packet an interval reveals (relay.core.live)."""
    return max(0, (profile.mtu - overhead - LIVE_LINK_LEN) // mode.bytes_per_frame)


def evaluate(
    profile: RadioProfile,
    mode: CodecMode,
    frames_per_packet: int,
    *,
    overhead: int = VOICE_PACKET_OVERHEAD,
    duty_cycle: float | None = None,
    relay_hops: int = RELAY_HOPS,
    max_occupancy: float = MAX_OCCUPANCY,
    max_latency: float = MAX_LATENCY,
) -> PlanRow:
    """The cost of sending ``mode`` with ``frames_per_packet`` frames per packet."""
    dc = profile.duty_cycle if duty_cycle is None else duty_cycle
    size = overhead + frames_per_packet * mode.bytes_per_frame
    per_packet = profile.airtime(size)
    per_second = per_packet * mode.frames_per_second / frames_per_packet
    relayed = per_second * (1 + relay_hops)
    latency = (frames_per_packet + 1) * mode.frame_seconds + per_packet
    problems = []
    if relayed > max_occupancy:
        problems.append(
            f"{relayed:.0%} of the channel with {relay_hops} relay hop(s) "
            f"(limit {max_occupancy:.0%})"
        )
    if dc < 1.0 and per_second > dc:
        problems.append(f"{per_second:.1%} airtime exceeds the {dc:.1%} duty cycle")
    if latency > max_latency:
        problems.append(f"{latency * 1000:.0f} ms latency (limit {max_latency * 1000:.0f} ms)")
    return PlanRow(
        mode=mode,
        frames_per_packet=frames_per_packet,
        datagram_bytes=size,
        airtime_per_packet=per_packet,
        airtime_per_second=per_second,
        occupancy=per_second,
        relay_occupancy=relayed,
        latency=latency,
        problems=tuple(problems),
    )


def speech_airtime(
    profile: RadioProfile,
    mode: CodecMode | str = "1600",
    seconds: float = 1.0,
    overhead: int = VOICE_PACKET_OVERHEAD,
) -> float:
    """Airtime to carry ``seconds`` of speech in the largest packets the link allows."""
    m = mode if isinstance(mode, CodecMode) else mode_by_name(mode)
    fpp = max_frames_per_packet(profile, m, overhead)
    if fpp == 0:
        return math.inf
    frames = math.ceil(seconds * m.frames_per_second)
    full, rest = divmod(frames, fpp)
    total = full * profile.airtime(overhead + fpp * m.bytes_per_frame)
    if rest:
        total += profile.airtime(overhead + rest * m.bytes_per_frame)
    return total


def plan(
    profile: RadioProfile,
    mode: CodecMode | str | int | None = None,
    duty_cycle: float | None = None,
    *,
    overhead: int = VOICE_PACKET_OVERHEAD,
    relay_hops: int = RELAY_HOPS,
    max_occupancy: float = MAX_OCCUPANCY,
    max_latency: float = MAX_LATENCY,
    loss: float | None = None,
) -> Plan:
    """Every (mode, frames per packet) row for ``profile``; ``mode`` restricts to one mode.

    ``loss`` (the packet loss expected on the link, 0..1) lets the planner recommend FEC.
    """
    dc = profile.duty_cycle if duty_cycle is None else duty_cycle
    if mode is None:
        modes: tuple[CodecMode, ...] = MODES
    else:
        modes = (mode if isinstance(mode, CodecMode) else mode_by_name(mode),)
    rows = _rows(profile, modes, overhead, dc, relay_hops, max_occupancy, max_latency)
    fitting = [r for r in rows if r.fits]
    # A larger budget is an allowance, not a target: a row comfortable for a phone call
    # (COMFORT_LATENCY) still wins; the budget's own comfort comes next, then anything that fits.
    limits = (min(COMFORT_LATENCY, max_latency), comfort_latency(max_latency))

    def tier(occupancy: float, latency: float) -> int:
        if occupancy > COMFORT_OCCUPANCY:
            return len(limits)
        return next((i for i, lim in enumerate(limits) if latency <= lim), len(limits))

    best = min(
        fitting,
        key=lambda r: (tier(r.relay_occupancy, r.latency), -r.mode.bitrate, r.latency),
        default=None,
    )

    def cost(row: PlanRow) -> FecCost | None:
        return fec_cost(
            profile, row, duty_cycle=dc, relay_hops=relay_hops, max_occupancy=max_occupancy
        )

    # The best row that still fits with FEC's extra bytes (a lossy link's choice).
    with_fec = [(r, c) for r in fitting if (c := cost(r)) is not None and c.fits]
    fec_best = min(
        with_fec,
        key=lambda rc: (
            tier(rc[1].relay_occupancy, rc[0].latency),
            -rc[0].mode.bitrate,
            rc[0].latency,
        ),
        default=None,
    )
    if loss is not None and loss >= FEC_MIN_LOSS and fec_best is not None:
        best = fec_best[0]
    fec = cost(best) if best is not None else None
    use_fec = fec_advised(fec, loss)
    advice = _advice(profile, rows, best, dc, overhead, relay_hops, max_occupancy, max_latency)
    if best is None:
        advice += _budget_hint(profile, modes, dc, overhead, relay_hops, max_occupancy, max_latency)
    if best is not None:
        advice += " " + _fec_advice(fec, loss, use_fec, relay_hops)
        if fec_best is not None and not use_fec and (fec is None or not fec.fits):
            r, c = fec_best
            advice += (
                f" On a link that loses {FEC_MIN_LOSS:.0%} or more: Codec2 {r.mode.name}, "
                f"{r.frames_per_packet} frames per packet, --fec ({c.datagram_bytes} B packets, "
                f"{c.relay_occupancy:.0%} of the channel {_with_hops(relay_hops)})."
            )
    return Plan(
        profile=profile,
        duty_cycle=dc,
        overhead=overhead,
        rows=rows,
        best=best,
        advice=advice,
        fec=fec,
        loss=loss,
        use_fec=use_fec,
        max_latency=max_latency,
        relay_hops=relay_hops,
    )


def _rows(
    profile: RadioProfile,
    modes: tuple[CodecMode, ...],
    overhead: int,
    duty_cycle: float,
    relay_hops: int,
    max_occupancy: float,
    max_latency: float,
) -> tuple[PlanRow, ...]:
    """Every (mode, frames per packet) row of ``modes`` that one datagram can carry."""
    return tuple(
        evaluate(
            profile,
            m,
            fpp,
            overhead=overhead,
            duty_cycle=duty_cycle,
            relay_hops=relay_hops,
            max_occupancy=max_occupancy,
            max_latency=max_latency,
        )
        for m in modes
        for fpp in range(1, max_frames_per_packet(profile, m, overhead) + 1)
    )


ROOM_DELAYS_MS = (1000, 1500)  # what a moderated room can allow: the advice when nothing fits


def _budget_hint(
    profile: RadioProfile,
    modes: tuple[CodecMode, ...],
    duty_cycle: float,
    overhead: int,
    relay_hops: int,
    max_occupancy: float,
    max_latency: float,
) -> str:
    """When nothing fits: the smallest step (about 1 s of delay, then no repeater, then 1.5 s)
    that would, as advice."""
    steps = [
        (ms, hops)
        for ms in dict.fromkeys(max(d, round(max_latency * 1000)) for d in ROOM_DELAYS_MS)
        for hops in dict.fromkeys((relay_hops, 0))
        if (ms, hops) != (round(max_latency * 1000), relay_hops)
    ]
    for ms, hops in steps:
        for m in modes:
            rows = _rows(profile, (m,), overhead, duty_cycle, hops, max_occupancy, ms / 1000)
            fitting = [r for r in rows if r.fits]
            if fitting:
                r = min(fitting, key=lambda r: r.latency)
                ms = min(ms, max(ROOM_DELAYS_MS[0], math.ceil(r.latency * 10) * 100))
                return (
                    f" A room that allows {ms} ms of delay"
                    + (" with no repeater on the channel" if hops != relay_hops else "")
                    + f" fits Codec2 {r.mode.name} live, {r.frames_per_packet} frames per "
                    f"packet, about {r.latency * 1000:.0f} ms (--max-delay {ms}"
                    + (f" --relay-hops {hops}" if hops != relay_hops else "")
                    + ")."
                )
    return ""


def _with_hops(relay_hops: int) -> str:
    if relay_hops == 1:
        return "with a relay hop"
    return "with no relay hop" if relay_hops == 0 else f"with {relay_hops} relay hops"


def _fec_advice(
    fec: FecCost | None, loss: float | None, use_fec: bool, relay_hops: int = RELAY_HOPS
) -> str:
    if fec is None:
        return "This mode has no FEC pairing."
    cost = (
        f"FEC ({fec.mode.name} copies of the previous packet) makes packets {fec.datagram_bytes} B "
        f"and costs {fec.extra_airtime:+.0%} airtime ({fec.relay_occupancy:.0%} of the channel "
        f"{_with_hops(relay_hops)})"
    )
    if not fec.fits:
        return f"{cost}: it does not fit here ({'; '.join(fec.problems)})."
    if loss is None:
        return f"{cost}; use it (--fec) on links that lose {FEC_MIN_LOSS:.0%} or more of packets."
    if use_fec:
        return f"At {loss:.0%} loss use it: --fec. {cost}."
    return f"At {loss:.0%} loss it is not worth it. {cost}."


def _advice(
    profile: RadioProfile,
    rows: tuple[PlanRow, ...],
    best: PlanRow | None,
    duty_cycle: float,
    overhead: int,
    relay_hops: int,
    max_occupancy: float,
    max_latency: float,
) -> str:
    if best is not None:
        packet_ms = best.frames_per_packet * best.mode.frame_seconds * 1000
        return (
            f"Live voice fits {profile.name}: Codec2 {best.mode.name} with "
            f"{best.frames_per_packet} frames per packet ({packet_ms:.0f} ms of speech, "
            f"{best.airtime_per_packet * 1000:.0f} ms on air) uses {best.occupancy:.0%} of the "
            f"channel per talker, {best.relay_occupancy:.0%} {_with_hops(relay_hops)}, "
            f"about {best.latency * 1000:.0f} ms latency."
        )
    if not rows:
        return (
            f"Live voice does not fit {profile.name}: its {profile.mtu}-byte MTU cannot carry "
            f"even one codec frame after {overhead} bytes of packet overhead."
        )
    one_second = speech_airtime(profile, "1600", 1.0, overhead)
    limit = min(max_occupancy / (1 + relay_hops), duty_cycle)
    hops = "one relay hop" if relay_hops == 1 else f"{relay_hops} relay hops"
    if one_second <= limit:
        reason = (
            f"and packets small enough for {max_latency * 1000:.0f} ms latency spend too much "
            "airtime on LoRa preamble and headers"
        )
    elif duty_cycle <= max_occupancy / (1 + relay_hops):
        reason = (
            f"but must stay under {limit:.2f} s to respect the {duty_cycle * 100:g} % duty cycle"
        )
    else:
        reason = f"but must stay under {limit:.2f} s so {hops} and control traffic still fit"
    return (
        f"Live voice does not fit {profile.name}: 1 s of Codec2 1600 speech takes "
        f"{one_second:.2f} s of airtime here, {reason}. Send voice messages instead "
        "(store-and-forward), or use a faster preset."
    )
