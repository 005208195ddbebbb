"""`relay plan`: will live voice fit this link, and with which settings?"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from relay.cli.options import budget_options, radio_options, resolve_budget, resolve_radio
from relay.errors import UsageError
from relay.plan import plan
from relay.voice.modes import mode_by_name


@click.command("plan")
@radio_options
@click.option("--mode", help="Only this Codec2 mode (3200, 2400, 1600, 1400, 1300, 1200, 700C).")
@click.option("--all-rows", is_flag=True, help="Show every frames-per-packet, not a summary.")
@click.option(
    "--loss",
    type=float,
    help="Packet loss you expect on the link (0..1): the planner says whether to use FEC.",
)
@budget_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def plan_cmd(
    preset, sf, bw, cr, region, duty_cycle, mode, all_rows, loss, max_delay, relay_hops, as_json
):
    """Airtime, channel occupancy and latency of live voice on a radio setting.

    For each Codec2 mode and number of frames per packet, shows the airtime one second of
    speech costs, how much of the channel that occupies (alone, and with one relay hop
    repeating it), and the mouth-to-ear delay packetisation and airtime add. It names the best
    live configuration or says plainly that live voice does not fit.

    \b
    Examples:
      relay plan --preset SHORT_FAST
      relay plan --preset LONG_FAST --mode 700C
      relay plan --sf 8 --bw 250 --cr 5 --region EU_868 --json
      relay plan --preset MEDIUM_FAST --max-delay 1000 --relay-hops 0
    """
    profile = resolve_radio(preset, sf, bw, cr, region, duty_cycle)
    if loss is not None and not 0.0 <= loss <= 1.0:
        raise UsageError(f"--loss must be between 0 and 1 (a fraction), got {loss}")
    budget = resolve_budget(max_delay, relay_hops)
    result = plan(
        profile, mode=mode_by_name(mode) if mode else None, loss=loss, **budget.plan_kwargs()
    )
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    console = Console()
    console.print(
        f"[bold]{profile.name}[/]  SF{profile.lora.sf} / {profile.lora.bw_hz / 1000:g} kHz / "
        f"CR 4/{profile.lora.cr}, MTU {profile.mtu} B, duty cycle {profile.duty_cycle:.0%}; "
        f"delay budget {budget.max_delay_ms} ms, {budget.relay_hops} relay hop(s)"
    )
    table = Table(show_lines=False)
    for col in ("mode", "frames", "bytes", "air ms", "air/s", "busy", "+relay", "delay ms", "live"):
        table.add_column(col, justify="right")
    rows = result.rows if all_rows else _summary(result)
    for row in rows:
        best = result.best is not None and row == result.best
        table.add_row(
            row.mode.name + (" *" if best else ""),
            str(row.frames_per_packet),
            str(row.datagram_bytes),
            f"{row.airtime_per_packet * 1000:.0f}",
            f"{row.airtime_per_second:.3f}",
            f"{row.occupancy:.0%}",
            f"{row.relay_occupancy:.0%}",
            f"{row.latency * 1000:.0f}",
            "[green]yes[/]" if row.fits else "[red]no[/]",
            style="bold" if best else None,
        )
    console.print(table)
    console.print(
        "[dim]frames: Codec2 frames per packet; bytes: packet size; air ms: airtime of one "
        "packet; air/s: seconds on air per second of speech; busy: share of the channel one "
        "talker uses; +relay: with a store-and-forward repeater on the same channel (relay "
        "repeat with one --link) sending it again; delay ms: packetisation + air + "
        "jitter margin; * best live choice. --all-rows shows every packet size.[/]"
    )
    if result.fec is not None and result.best is not None:
        f = result.fec
        console.print(
            f"with --fec: {result.best.mode.name}+{f.mode.name}, {f.datagram_bytes} B packets, "
            f"{f.airtime_per_packet * 1000:.0f} ms on air, {f.airtime_per_second:.3f} s/s "
            f"({f.extra_airtime:+.0%}), {f.relay_occupancy:.0%} with {budget.relay_hops} "
            "relay hop(s): " + ("[green]fits[/]" if f.fits else "[red]does not fit[/]")
        )
    console.print(result.advice)


def _summary(result):
    """Per mode: the best-latency row that fits, else the row with the least airtime."""
    out = []
    for mode in dict.fromkeys(r.mode for r in result.rows):
        rows = [r for r in result.rows if r.mode is mode]
        fitting = [r for r in rows if r.fits]
        out.append(
            min(fitting, key=lambda r: r.latency)
            if fitting
            else min(rows, key=lambda r: r.airtime_per_second)
        )
    return out
