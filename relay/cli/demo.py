"""`relay demo`: hear what a radio setting does to speech, without any radio."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from relay.cli.options import radio_options, resolve_radio
from relay.demo.voice import DemoSettings, bundled_sample, run_demo
from relay.voice.modes import mode_by_name


@click.command("demo")
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
    "--mode",
    default="1600",
    show_default=True,
    help="Codec2 mode: 3200 2400 1600 1400 1300 1200 700C.",
)
@click.option(
    "--frames-per-packet",
    type=int,
    help="Codec2 frames per packet (default: the planner's choice).",
)
@click.option(
    "--loss", type=float, default=0.0, show_default=True, help="Packet loss as a fraction, 0..1."
)
@click.option(
    "--burst",
    type=float,
    help="Mean loss burst length in packets (Gilbert-Elliott); default independent loss.",
)
@click.option(
    "--seed", type=int, default=1, show_default=True, help="Seed of the channel's randomness."
)
@click.option(
    "--rate", type=int, default=8000, show_default=True, help="Sample rate of the output WAV."
)
@click.option(
    "--realtime", is_flag=True, help="Run at the speed of real radios instead of virtual time."
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def demo(
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
    rate,
    realtime,
    as_json,
):
    """Send speech from a speaker to a listener over a simulated LoRa channel.

    The speech is compressed with Codec2, sealed with AES-CCM under a fresh room key, sent
    over a simulated radio with real LoRa airtime, loss, half-duplex and duty cycle, then
    buffered, concealed where packets were lost, and written to --out. The report says what
    it cost on air and how late it arrived.

    \b
    Examples:
      relay demo
      relay demo --preset MEDIUM_FAST --mode 1200 --loss 0.1 --seed 7
      relay demo --input talk.flac --out heard.wav --rate 16000 --json
    """
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
        ("speech", f"{r['speech_seconds']:.2f} s"),
        ("packets sent / received", f"{r['packets_sent']} / {r['packets_received']}"),
        ("lost on air / rejected", f"{r['packets_lost']} / {r['packets_rejected']}"),
        ("frames concealed", f"{r['frames_concealed']} of {r['frames_sent']}"),
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
