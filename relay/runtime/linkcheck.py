"""The hobbyist's loopback test: send N probes from link A to link B and say what happened.

Works on any :class:`~relay.links.base.Link`. Each probe carries a run id, a sequence number
and a CRC-32 of its filler, so B can tell a probe that arrived intact from one that arrived
damaged (corrupted), a duplicate, or someone else's traffic on the channel (foreign).
Probes are paced at the link's airtime plus a margin, so the latency measures the link, not
a queue the test itself built up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import struct
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

from relay.errors import LinkError, UsageError
from relay.links.base import Link

MAGIC = b"RLCK"
_HEAD = struct.Struct(">4sIII")  # magic, run id, sequence, CRC-32 of the rest
MIN_SIZE = _HEAD.size
DEFAULT_SIZE = 48  # a small voice packet: 18 bytes of overhead + Codec2 frames


@dataclass
class CheckReport:
    """What one check found. Latencies in milliseconds, one-way, send call to arrival."""

    url_a: str
    url_b: str
    count: int
    size: int
    sent: int = 0
    send_errors: int = 0
    delivered: int = 0
    lost: int = 0
    corrupted: int = 0
    duplicates: int = 0
    foreign: int = 0
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    airtime_ms: float = 0.0
    elapsed_s: float = 0.0
    stats_a: dict[str, Any] = field(default_factory=dict)
    stats_b: dict[str, Any] = field(default_factory=dict)

    @property
    def loss_rate(self) -> float:
        return self.lost / self.sent if self.sent else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["loss_rate"] = round(self.loss_rate, 4)
        return out


def probe(run: int, seq: int, size: int) -> bytes:
    """Probe ``seq`` of run ``run``: header then deterministic filler."""
    filler = bytes((seq * 31 + i * 7 + run) & 0xFF for i in range(size - MIN_SIZE))
    return _HEAD.pack(MAGIC, run, seq, zlib.crc32(filler)) + filler


def classify(data: bytes, run: int, size: int) -> tuple[str, int | None]:
    """("ok" | "corrupted" | "foreign", seq) for one received datagram."""
    if len(data) < MIN_SIZE or data[:4] != MAGIC:
        return "foreign", None
    _, got_run, seq, crc = _HEAD.unpack_from(data)
    if got_run != run:
        return "foreign", None
    if len(data) != size or zlib.crc32(data[MIN_SIZE:]) != crc or data != probe(run, seq, size):
        return "corrupted", seq
    return "ok", seq


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every figure is a measured latency)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _stats(link: Link) -> dict[str, Any]:
    s = link.stats
    out = {k: getattr(s, k) for k in ("sent", "received", "refused", "dropped")}
    out["airtime_s"] = round(s.airtime_s, 4)
    out.update(s.extra)
    return out


async def check(
    a: Link,
    b: Link,
    *,
    count: int = 20,
    size: int | None = None,
    interval: float | None = None,
    wait: float | None = None,
    run: int | None = None,
) -> CheckReport:
    """Send ``count`` probes of ``size`` bytes from ``a`` to ``b``; report what arrived.

    ``interval`` defaults to 1.2 x the probe's airtime + 20 ms; ``wait`` (how long to wait
    for stragglers after the last send) to 3 x airtime + 1 s.
    """
    mtu = min(a.mtu, b.mtu)
    size = min(DEFAULT_SIZE, mtu) if size is None else size
    if not MIN_SIZE <= size <= mtu:
        raise UsageError(f"probe size must be {MIN_SIZE}..{mtu} bytes (the MTU), got {size}")
    if count < 1:
        raise UsageError(f"count must be >= 1, got {count}")
    run = int.from_bytes(os.urandom(4), "big") if run is None else run
    airtime = max(a.airtime(size), 0.0)
    interval = airtime * 1.2 + 0.02 if interval is None else interval
    wait = airtime * 3 + 1.0 if wait is None else wait
    for link in (a, b):  # drivers with a startup handshake (at://) say when they are ready
        ready = getattr(link, "ready", None)
        if ready is not None:
            await ready()
    loop = asyncio.get_running_loop()
    report = CheckReport(a.url, b.url, count, size, airtime_ms=round(airtime * 1000, 3))
    sent_at: dict[int, float] = {}
    seen: set[int] = set()
    latencies: list[float] = []
    done = asyncio.Event()

    async def receive() -> None:
        while True:
            try:
                dgram = await b.recv()
            except LinkError:
                return
            kind, seq = classify(dgram.data, run, size)
            if kind == "foreign":
                report.foreign += 1
            elif kind == "corrupted":
                report.corrupted += 1
            elif seq in seen:
                report.duplicates += 1
            elif seq is not None and seq in sent_at:
                seen.add(seq)
                report.delivered += 1
                latencies.append((loop.time() - sent_at[seq]) * 1000)
            if report.delivered + report.corrupted >= report.sent == count:
                done.set()

    start = loop.time()
    receiver = loop.create_task(receive())
    try:
        for seq in range(count):
            sent_at[seq] = loop.time()
            try:
                await a.send(probe(run, seq, size))
                report.sent += 1
            except LinkError:
                report.send_errors += 1
            if seq + 1 < count:
                await asyncio.sleep(interval)
        if report.delivered + report.corrupted >= report.sent:
            done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), wait)
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
    report.elapsed_s = round(loop.time() - start, 3)
    report.lost = max(report.sent - report.delivered - report.corrupted, 0)
    report.latency_ms = {
        "p50": _ms(percentile(latencies, 50)),
        "p90": _ms(percentile(latencies, 90)),
        "max": _ms(max(latencies) if latencies else None),
    }
    report.stats_a, report.stats_b = _stats(a), _stats(b)
    return report


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
