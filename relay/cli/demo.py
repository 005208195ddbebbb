"""`relay demo`: hear what a radio setting does to speech, without any radio."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from relay.cli.options import (
    budget_options,
    channel_options,
    conceal_option,
    dtx_option,
    fec_option,
    radio_options,
    resolve_budget,
    resolve_radio,
)
from relay.demo.room import MAX_LISTENERS, MAX_SPEAKERS, RoomDemoSettings, run_room_demo
from relay.demo.voice import DemoSettings, bundled_sample, run_demo
from relay.errors import UsageError
from relay.voice.modes import mode_by_name
from relay.voice.vad import DTX_DEFAULT


@click.group("demo", invoke_without_command=True)
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Speech to send: any audio file (WAV, FLAC, OGG...), any rate. Default: bundled sample.",
)
@click.option(
    "--out",
    "output_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("relay-demo.wav"),
    show_default=True,
    help="Where to write what was received.",
)
@radio_options
@click.option(
    "--frames-per-packet",
    type=int,
    help="Codec2 frames per packet (default: the planner's choice).",
)
@channel_options
@budget_options
@fec_option
@dtx_option
@conceal_option
@click.option(
    "--rate", type=int, default=8000, show_default=True, help="Sample rate of the output WAV."
)
@click.option(
    "--realtime", is_flag=True, help="Run at the speed of real radios instead of virtual time."
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
@click.pass_context
def demo(
    ctx: click.Context,
    input_path,
    output_path,
    preset,
    sf,
    bw,
    cr,
    region,
    duty_cycle,
    mode,
    frames_per_packet,
    loss,
    burst,
    seed,
    max_delay,
    relay_hops,
    fec,
    dtx,
    conceal,
    rate,
    realtime,
    as_json,
):
    """Send speech from a speaker to a listener over a simulated LoRa channel.

    The speech is compressed with Codec2, sealed with AES-CCM under a fresh room key, sent
    over a simulated radio with real LoRa airtime, loss, half-duplex and duty cycle, then
    buffered, concealed where packets were lost, and written to --out. The report says what
    it cost on air and how late it arrived.

    `relay demo room` runs a whole moderated room instead (see `relay demo room --help`).

    \b
    Examples:
      relay demo
      relay demo --preset MEDIUM_FAST --mode 1200 --loss 0.1 --seed 7
      relay demo --input talk.flac --out heard.wav --rate 16000 --json
      relay demo room --speakers 3 --listeners 20 --json
    """
    if ctx.invoked_subcommand is not None:
        _refuse_options_before(ctx)
        return
    profile = resolve_radio(preset, sf, bw, cr, region, duty_cycle)
    settings = DemoSettings(
        profile=profile,
        mode=mode_by_name(mode),
        frames_per_packet=frames_per_packet,
        loss=loss,
        burst=burst,
        seed=seed,
        realtime=realtime,
        sample_rate=rate,
        fec=fec,
        dtx=DTX_DEFAULT if dtx is None else dtx,
        conceal=conceal,
        budget=resolve_budget(max_delay, relay_hops),
    )
    source = input_path if input_path is not None else bundled_sample()
    report = run_demo(settings, source, output_path)
    if as_json:
        click.echo(json.dumps(report))
        return
    _render(report)


def _render(r: dict) -> None:
    console = Console()
    table = Table(title="relay demo", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("input", r["input"]),
        ("received audio", r["output"]),
        ("radio", f"{r['preset']}, duty cycle {r['duty_cycle']:.0%}"),
        ("codec", f"Codec2 {r['mode']}, {r['frames_per_packet']} frames/packet"),
        ("delay budget", f"{r['max_delay_ms']} ms, {r['relay_hops']} relay hop(s)"),
        ("speech", f"{r['speech_seconds']:.2f} s"),
        ("packets sent / received", f"{r['packets_sent']} / {r['packets_received']}"),
        ("lost on air / rejected", f"{r['packets_lost']} / {r['packets_rejected']}"),
        ("frames concealed", f"{r['frames_concealed']} of {r['frames_sent']}"),
        (
            "FEC / DTX",
            f"{'on' if r['fec'] else 'off'} ({r['frames_from_fec']} frames from FEC) / "
            f"{'on' if r['dtx'] else 'off'} ({r['frames_skipped']} frames skipped)",
        ),
        ("codec bytes / air bytes", f"{r['codec_bytes']} / {r['air_bytes']}"),
        (
            "header + tag per packet",
            f"{r['overhead_bytes_per_packet']} B"
            + (
                f" (+{r['link_overhead_bytes_per_packet']} B firmware)"
                if r["link_overhead_bytes_per_packet"]
                else ""
            ),
        ),
        (
            "airtime",
            f"{r['airtime_seconds']:.2f} s ({r['channel_occupancy']:.0%} of the speech time)",
        ),
        (
            "mouth-to-ear latency",
            f"p50 {r['latency_ms']['p50']:.0f} ms, max {r['latency_ms']['max']:.0f} ms",
        ),
    ]
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
    if r["fits_live"]:
        console.print("[green]Live voice fits this link.[/]")
    else:
        console.print(
            "[yellow]Live voice does not fit this link:[/] speech takes longer on air than to say, "
            "so a live listener falls behind. Use a faster preset (see `relay plan`), or voice "
            "messages (store-and-forward) on this one."
        )


def _refuse_options_before(ctx: click.Context) -> None:
    """`relay demo --loss 0.1 room` would silently ignore --loss: say so instead."""
    given = [
        f"--{name.replace('_', '-')}"
        for name in ctx.params
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
    ]
    if given:
        raise UsageError(
            f"{', '.join(given)} belong(s) to plain `relay demo`; put room options after "
            f"`room` (see `relay demo room --help`)"
        )


@demo.command("room")
@click.option(
    "--speakers",
    type=int,
    default=3,
    show_default=True,
    help=f"Members who raise a hand and speak, 1..{MAX_SPEAKERS}.",
)
@click.option(
    "--listeners",
    type=int,
    default=5,
    show_default=True,
    help=f"Members who only listen, 1..{MAX_LISTENERS}.",
)
@radio_options
@channel_options
@budget_options
@fec_option
@dtx_option
@click.option(
    "--attacks/--no-attacks",
    default=True,
    show_default=True,
    help="Let one speaker talk without the floor and forge a grant (all of it must be dropped).",
)
@click.option(
    "--realtime", is_flag=True, help="Run at the speed of real radios instead of virtual time."
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def demo_room(
    speakers,
    listeners,
    preset,
    sf,
    bw,
    cr,
    region,
    duty_cycle,
    mode,
    loss,
    burst,
    seed,
    max_delay,
    relay_hops,
    fec,
    dtx,
    attacks,
    realtime,
    as_json,
):
    """Run a moderated room in one process over one simulated LoRa channel.

    A moderator, the speakers and the listeners each run their own node on their own
    simulated radio. Every speaker raises a hand and speaks bundled speech when the moderator
    grants it the floor. Unless --no-attacks, one speaker also talks without the floor and
    forges a grant (both must be dropped). At the end the moderator removes a listener, which
    rotates the room key, and one more over is spoken that the removed listener must not read.

    \b
    Examples:
      relay demo room
      relay demo room --speakers 3 --listeners 20 --json
      relay demo room --preset SHORT_TURBO --loss 0.05 --burst 2 --seed 7
      relay demo room --speakers 1 --no-attacks --realtime
      relay demo room --loss 0.1 --fec --dtx

    FEC is off unless --fec; DTX is on unless --no-dtx, as for `relay talk`.
    """
    if burst is not None and not burst >= 1:
        raise UsageError(f"--burst is a mean burst length in packets (>= 1), got {burst}")
    settings = RoomDemoSettings(
        profile=resolve_radio(preset, sf, bw, cr, region, duty_cycle),
        mode=mode_by_name(mode),
        speakers=speakers,
        listeners=listeners,
        loss=loss,
        burst=burst,
        seed=seed,
        attacks=attacks,
        realtime=realtime,
        fec=bool(fec),
        dtx=DTX_DEFAULT if dtx is None else dtx,
        budget=resolve_budget(max_delay, relay_hops),
    )
    report = run_room_demo(settings)
    if as_json:
        click.echo(json.dumps(report))
        return
    _render_room(report)


def _render_room(r: dict) -> None:
    console = Console()
    table = Table(title="relay demo room", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    heard = r["listeners"] - 1  # one listener is removed and judged separately
    rows = [
        ("radio", f"{r['preset']}, loss {r['loss']:.0%}, seed {r['seed']}"),
        ("codec", f"Codec2 {r['mode']}, {r['frames_per_packet']} frames/packet"),
        ("delay budget", f"{r['max_delay_ms']} ms, {r['relay_hops']} relay hop(s)"),
        (
            "FEC / DTX",
            f"{'on' if r['fec'] else 'off'} ({r['frames_from_fec']} frames from FEC) / "
            f"{'on' if r['dtx'] else 'off'} ({r['frames_skipped']} frames skipped)",
        ),
        ("room", f"1 moderator, {r['speakers']} speakers, {r['listeners']} listeners"),
        ("overs spoken", str(r["overs"])),
        ("overs heard (worst listener)", f"{r['overs_delivered']} of {r['overs']}"),
        ("overs verified (worst listener)", f"{r['overs_verified']} of {r['overs']}"),
        ("voice without the floor, dropped", str(r["floor_violations_dropped"])),
        ("forged moderation, rejected", str(r["forged_moderation_rejected"])),
        ("key rotations received", f"{r['key_rotations_received']} of {heard}"),
        ("packets the removed listener read", str(r["removed_member_decrypts"])),
        (
            "key rotation airtime",
            ", ".join(f"{t:.2f} s" for t in r["rekey_airtime_seconds"]) or "none",
        ),
        ("beacons", f"{r['beacons']} ({r['beacon_airtime_seconds']:.2f} s of airtime)"),
        (
            "airtime",
            f"{r['airtime_seconds']:.2f} s ({r['channel_occupancy']:.0%} of the channel)",
        ),
        ("collisions", str(r["collisions"])),
        (
            "mouth-to-ear latency",
            f"p50 {r['latency_ms']['p50']:.0f} ms, max {r['latency_ms']['max']:.0f} ms",
        ),
    ]
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
    good = (
        r["overs_delivered"] == r["overs"]
        and r["overs_verified"] == r["overs"]
        and r["removed_member_decrypts"] == 0
    )
    if good:
        console.print(
            "[green]Every listener heard and verified every over; the removed listener read "
            "nothing after its removal.[/]"
        )
    else:
        console.print(
            "[yellow]Not every over reached every listener intact[/] (loss or collisions): "
            "see overs heard / verified above."
        )
    if not r["fits_live"]:
        console.print(
            "[yellow]Live voice does not fit this link:[/] listeners fall behind the speaker."
        )
