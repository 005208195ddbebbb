"""`relay link check`: the loopback test for any link URL (sim://, at://, kiss://...)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from urllib.parse import urlsplit

import click

from relay.links.base import Link
from relay.links.sim.channel import remote_address
from relay.links.url import open_link
from relay.runtime.clock import run
from relay.runtime.linkcheck import CheckReport, check


@click.group("link")
def link_group() -> None:
    """Test links (radios, TNCs, the simulator) before a room depends on them."""


@link_group.command("check")
@click.argument("url_a")
@click.argument("url_b")
@click.option("--count", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="How many probes to send from A to B.")  # fmt: skip
@click.option("--size", type=int, help="Probe size in bytes (default 48, or the MTU if smaller).")
@click.option("--interval", type=click.FloatRange(min=0), help="Seconds between probes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def check_cmd(url_a, url_b, count, size, interval, as_json) -> None:
    """Send COUNT probes from URL_A to URL_B; report delivered, lost, corrupted, latency.

    Probes are paced at the link's airtime plus a margin. In-process simulated links
    (sim://NAME) run in virtual time, so the check is instant and latencies are simulated.

    \b
    Examples:
      relay link check sim://x sim://x --count 20
      relay link check 'at:///dev/ttyUSB0?profile=rylr998&addr=1' \\
                       'at:///dev/ttyUSB1?profile=rylr998&addr=2' --count 50 --json
    """
    virtual = all(_in_process(u) for u in (url_a, url_b))
    report = run(_check(url_a, url_b, count, size, interval), virtual=virtual)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(_text(report))


def _in_process(url: str) -> bool:
    return urlsplit(url).scheme.lower() == "sim" and remote_address(url) is None


async def _open(url: str) -> Link:
    if remote_address(url) is not None:
        from relay.links.sim.client import open_remote

        return await open_remote(url)
    return open_link(url)


async def _check(a_url: str, b_url: str, count: int, size, interval) -> CheckReport:
    a = await _open(a_url)
    try:
        b = await _open(b_url)
    except BaseException:
        await a.close()
        raise
    try:
        return await check(a, b, count=count, size=size, interval=interval)
    finally:
        for link in (a, b):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.close(), 2.0)


def _text(r: CheckReport) -> str:
    lat = r.latency_ms

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [
        f"{r.url_a} -> {r.url_b}",
        f"  probes   {r.sent} sent of {r.count} ({r.size} B, {r.airtime_ms:.1f} ms on air each)"
        + (f", {r.send_errors} refused" if r.send_errors else ""),
        f"  result   {r.delivered} delivered, {r.lost} lost ({r.loss_rate:.1%}), "
        f"{r.corrupted} corrupted" + (f", {r.duplicates} duplicates" if r.duplicates else ""),
        f"  latency  p50 {ms(lat.get('p50'))} ms, p90 {ms(lat.get('p90'))} ms, "
        f"max {ms(lat.get('max'))} ms",
    ]
    if r.foreign:
        lines.append(f"  other traffic heard: {r.foreign} datagrams")
    for name, stats in (("A", r.stats_a), ("B", r.stats_b)):
        extra = {k: v for k, v in stats.items() if k not in ("sent", "received", "airtime_s")}
        noisy = {k: v for k, v in extra.items() if v}
        if noisy:
            lines.append(f"  link {name}  " + ", ".join(f"{k} {v}" for k, v in noisy.items()))
    return "\n".join(lines)
