"""`relay ham`: amateur-band mode. Signed, never encrypted, the callsign in every packet."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from relay.cli.options import home_option, resolve_home
from relay.errors import UsageError

WARNING = (
    "relay: warning: amateur-band mode: NOTHING is encrypted. Every packet carries your "
    "callsign {call} in clear and is signed with your identity ({fp}): anyone can listen, "
    "and it identifies you, as the band's rules require. Encrypted rooms will not hear it."
)


@click.group("ham")
def ham_group() -> None:
    """Amateur-band mode: where encryption is forbidden, speak signed and identified.

    Packets are signed (Ed25519: nobody can put words in your mouth) and readable by
    anyone; each carries your callsign. Ham rooms and encrypted rooms never mix: each
    refuses the other's packets and counts them.

    \b
    Examples:
      relay ham talk net --callsign N0CALL --link kiss+tcp://127.0.0.1:8001 --input cq.wav
      relay ham listen net --link kiss+tcp://127.0.0.1:8001 --out heard.wav --duration 60
    """


def _mode(name: str):
    from relay.voice.modes import mode_by_name

    return mode_by_name(name)


@ham_group.command("talk")
@click.argument("room")
@click.option("--callsign", "--ham", "callsign", required=True, help="Your callsign, e.g. N0CALL.")
@click.option("--link", "url", required=True, metavar="URL", help="The radio link to talk on.")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(path_type=Path),
    help="The speech to send (any audio file libsndfile reads).",
)
@click.option("--mode", default="1600", show_default=True, help="Codec2 mode.")
@click.option(
    "--frames",
    type=click.IntRange(1, 64),
    default=10,
    show_default=True,
    help="Frames per packet: more frames amortise the 80-byte ham overhead.",
)
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
def talk_cmd(room, callsign, url, input_path, mode, frames, home, as_json) -> None:
    """Send INPUT as one over to the ham room ROOM, signed and identified by --callsign.

    \b
    Examples:
      relay ham talk net --callsign N0CALL --link sim://127.0.0.1:7300 --input cq.wav
      relay ham talk net --callsign VK2ABC-7 --link kiss:///dev/ttyUSB0 --input cq.wav --json
    """
    from relay.core.ham import HamSender, check_callsign, voice_overhead
    from relay.links.url import open_link
    from relay.runtime.ham import ham_frames_per_packet, ham_over, ham_send
    from relay.store.counters import CounterStore
    from relay.voice.audio import read_audio
    from relay.voice.codec import Encoder

    call = check_callsign(callsign)
    codec = _mode(mode)
    h = resolve_home(home)
    me = h.identity()
    click.echo(WARNING.format(call=call, fp=me.public.fingerprint), err=True)
    pcm = read_audio(input_path)
    encoded = Encoder(codec).encode(pcm)
    counters = CounterStore(h.counters_db)
    try:
        link = open_link(url)
        sender = HamSender(me, call, room, counters)
        fpp = ham_frames_per_packet(codec, call, link.mtu, frames)
        packets = ham_over(sender, codec, encoded, fpp)

        async def run() -> int:
            async with link:
                return await ham_send(link, packets)

        sent = asyncio.run(run())
    finally:
        counters.close()
    overhead = voice_overhead(call)
    result = {
        "room": room,
        "callsign": call,
        "frames": len(encoded),
        "frames_per_packet": fpp,
        "packets": sent,
        "overhead_bytes_per_voice_packet": overhead,
        "codec_bytes_per_voice_packet": fpp * codec.bytes_per_frame,
        "encrypted": False,
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"sent {len(encoded)} frames as {call} in {sent} signed packets "
            f"({fpp} frames and {overhead} B of ham overhead each)"
        )


@ham_group.command("listen")
@click.argument("room")
@click.option("--link", "url", required=True, metavar="URL", help="The radio link to listen on.")
@click.option("--out", "out_path", type=click.Path(path_type=Path), help="Write what is heard.")
@click.option(
    "--duration",
    type=click.FloatRange(0.1, 86400),
    default=60.0,
    show_default=True,
    help="Seconds to listen.",
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
def listen_cmd(room, url, out_path, duration, as_json) -> None:
    """Listen to the ham room ROOM: only signed ham packets play, each with its callsign.

    Listening transmits nothing. Encrypted packets on the channel are refused and counted.

    \b
    Examples:
      relay ham listen net --link sim://127.0.0.1:7300 --out heard.wav --duration 30
      relay ham listen net --link kiss+tcp://127.0.0.1:8001 --json
    """
    import numpy as np

    from relay.core.ham import HamReceiver
    from relay.links.url import open_link
    from relay.runtime.ham import ham_listen
    from relay.voice.audio import write_audio
    from relay.voice.codec import Decoder

    link = open_link(url)

    async def run():
        async with link:
            return await ham_listen(link, HamReceiver(room), duration)

    heard = asyncio.run(run())
    if out_path is not None:
        pcm = []
        for call, frames in heard.frames.items():
            dec = Decoder(heard.modes[call])
            pcm += [dec.decode(f) for _, f in sorted(frames)]
        if not pcm:
            raise UsageError("nothing was heard: no file written")
        write_audio(out_path, np.concatenate(pcm))
    doc = {
        "room": room,
        "stations": {c: len(f) for c, f in heard.frames.items()},
        "accepted": heard.accepted,
        "rejected": dict(heard.rejected),
    }
    if as_json:
        click.echo(json.dumps(doc))
        return
    for call, n in doc["stations"].items():
        click.echo(f"{call}: {n} frames, signed and verified")
    if heard.rejected:
        click.echo("refused: " + ", ".join(f"{k} {v}" for k, v in heard.rejected.items()))
