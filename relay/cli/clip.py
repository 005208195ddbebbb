"""`relay clip`: voice messages (store-and-forward speech) for links too slow for live voice.

Thin: :mod:`relay.runtime.clip` does the work, :mod:`relay.store.clips` keeps the outbox and
inbox; these commands parse, show progress and print.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import click

from relay.cli.options import home_option, resolve_home
from relay.clip.receiver import DEFAULT_MAX_BYTES
from relay.errors import UsageError
from relay.store.home import Home

LINK_HELP = (
    "The channel to use, e.g. sim://127.0.0.1:7300 (a `relay ether`), meshtastic:///dev/ttyACM0."
)


def _note(message: str) -> None:
    click.echo(f"relay: {message}", err=True)


def _json_option(func: Any) -> Any:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print exactly one JSON object at the end."
    )(func)


def _on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def _room_id(home: Home, room_ref: str) -> tuple[bytes, str]:
    from relay.store.rooms import find_room

    info = find_room(home, room_ref)  # reads only: creates no home or database
    return info.room_id, info.name


@click.group("clip")
def clip_group() -> None:
    """Voice messages: speech recorded, sent in pieces as airtime allows, played when whole.

    \b
    For links where live voice does not fit (LONG_FAST, duty-cycle limits; see `relay plan`):
      relay clip send market --link sim://127.0.0.1:7300 hello.wav
      relay clip receive market --link sim://127.0.0.1:7300 --duration 600
      relay clip inbox market
      relay clip play 3f9a1c2e --out heard.wav
      relay clip delete 3f9a1c2e                  (erase it from the inbox)
    """


# ---------------------------------------------------------------------------------- send
@clip_group.command("send")
@click.argument("room")
@click.argument("file", required=False, type=click.Path(path_type=Path, dir_okay=True))
@click.option("--link", "url", required=True, metavar="URL", help=LINK_HELP)
@click.option("--mic", is_flag=True, help="Record from the microphone (needs relay[audio]).")
@click.option(
    "--seconds", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True,
    help="With --mic: how long to record.",
)  # fmt: skip
@click.option("--pending", is_flag=True, help="Only resume unfinished messages from the outbox.")
@click.option("--mode", help="Codec2 mode (default: the planner's choice for the link).")
@click.option(
    "--expect", type=click.IntRange(1, 255), default=1, show_default=True,
    help="Receivers that must confirm the whole message before it counts as delivered.",
)  # fmt: skip
@click.option(
    "--timeout", type=click.FloatRange(1, 7 * 86400), default=3600.0, show_default=True,
    help="Give up (the message stays in the outbox; --pending resumes it) after this long.",
)  # fmt: skip
@click.option(
    "--max-bytes", type=click.IntRange(1, 1 << 24), default=DEFAULT_MAX_BYTES, show_default=True,
    help="Refuse messages larger than this many bytes of Codec2.",
)  # fmt: skip
@home_option
@_json_option
def send_cmd(
    room, file, url, mic, seconds, pending, mode, expect, timeout, max_bytes, home, as_json
) -> None:
    """Send FILE (any audio file) or --mic as a voice message to ROOM.

    The planner picks the codec mode for the link (1600, 1200 or 700C: the highest that
    does not take longer to send than to say), the message is signed, stored in the outbox
    and sent in pieces paced by airtime and duty cycle; receivers' acknowledgements decide
    what is sent again. Unfinished messages (a crash, a timeout) are resumed first, and
    sending the same speech again resumes it instead of sending it twice.

    \b
    Examples:
      relay clip send market --link sim://127.0.0.1:7300 hello.wav
      relay clip send market --link meshtastic:///dev/ttyACM0 --mic --seconds 20
      relay clip send market --link sim://127.0.0.1:7300 --pending --json
    """
    sources = sum(bool(x) for x in (file is not None, mic, pending))
    if sources != 1:
        raise UsageError("give exactly one of FILE, --mic or --pending")
    h = resolve_home(home)
    _room_id(h, room)  # an unknown room is the first thing to say
    pcm = None
    if file is not None:
        from relay.voice.audio import read_audio

        pcm = read_audio(file)
    elif mic:
        pcm = record_microphone(seconds)
    report = asyncio.run(_send(h, room, url, pcm, mode, expect, timeout, max_bytes, as_json))
    if as_json:
        click.echo(json.dumps(report))
    else:
        for m in report["messages"]:
            state = "delivered" if m["delivered"] else "NOT delivered (still in the outbox)"
            _note(
                f"{m['msg_id']}: {m['seconds']:.1f} s of Codec2 {m['mode']}, {m['pieces']} pieces, "
                f"{state} to {m['complete']} receiver(s), {m['airtime_s']:.1f} s airtime, "
                f"{m['elapsed_s']:.1f} s"
            )
    if not all(m["delivered"] for m in report["messages"]):
        raise SystemExit(1)


def record_microphone(seconds: float):  # type: ignore[no-untyped-def]
    """Speech for a voice message from the microphone (one line if there is none)."""
    from relay.voice.device import record, require_sounddevice

    sd = require_sounddevice("--mic")
    _note(f"recording {seconds:g} s from the microphone...")
    return record(sd, seconds)


async def _send(home, room_ref, url, pcm, mode_name, expect, timeout, max_bytes, as_json):
    from rich.progress import BarColumn, Progress, TextColumn

    from relay.clip.message import choose_mode
    from relay.runtime.clip import ClipProgress, attach, clip_store, offer_seconds
    from relay.runtime.member import open_member
    from relay.voice.codec import Encoder
    from relay.voice.modes import mode_by_name

    mode = mode_by_name(mode_name) if mode_name else None
    _room_id(home, room_ref)  # an unknown room is an error before any link is opened
    store = clip_store(home)
    results: list[dict[str, Any]] = []
    try:
        async with open_member(home, room_ref, url) as m:
            if mode is None:
                mode = choose_mode(m.profile)
            node = attach(m, store, max_bytes=max_bytes)
            todo = [(c, True) for c in store.pending(m.room.room_id)]
            if pcm is not None:
                clip, resumed = node.prepare(Encoder(mode).encode(pcm), mode, identity=m.identity)
                if resumed:
                    todo = [(c, r) for c, r in todo if c.offer.msg_id != clip.offer.msg_id]
                todo.append((clip, resumed))
            if not todo:
                _note(f"nothing to send: the outbox of {m.info.name!r} is empty")
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} pieces"),
                TextColumn("{task.fields[air]}"),
            )
            with Progress(*columns, disable=as_json, transient=False) as bar:
                for clip, resumed in todo:
                    label = clip.offer.msg_id.hex() + (" (resumed)" if resumed else "")
                    task = bar.add_task(label, total=clip.offer.pieces, air="")

                    def show(p: ClipProgress, task=task) -> None:
                        bar.update(
                            task,
                            completed=p.acked,
                            air=f"airtime {p.airtime_s:.1f} s, ~{p.remaining_s:.0f} s left, "
                            f"{p.complete} receiver(s) done",
                        )

                    result = await node.deliver(
                        clip, expect=expect, timeout=timeout, progress=show, resumed=resumed
                    )
                    results.append(
                        {**result.to_dict(), "seconds": round(offer_seconds(clip.offer), 3)}
                    )
            await node.close()
            room_name, link_url = m.info.name, m.link.url
    finally:
        store.close()
    return {
        "room": room_name,
        "link": link_url,
        "messages": results,
        "delivered": all(r["delivered"] for r in results),
    }


# ---------------------------------------------------------------------------------- receive
@clip_group.command("receive")
@click.argument("room")
@click.option("--link", "url", required=True, metavar="URL", help=LINK_HELP)
@click.option("--duration", type=click.FloatRange(0.1, None), help="Stop after this many seconds.")
@click.option("--count", type=click.IntRange(1, None), help="Stop after this many new messages.")
@click.option(
    "--max-bytes", type=click.IntRange(1, 1 << 24), default=DEFAULT_MAX_BYTES, show_default=True,
    help="Refuse offers of messages larger than this.",
)  # fmt: skip
@home_option
@_json_option
def receive_cmd(room, url, duration, count, max_bytes, home, as_json) -> None:
    """Collect voice messages sent to ROOM into the inbox, acknowledging what arrives.

    Unlike `relay listen`, this transmits: short acknowledgements (and an introduction)
    after each burst, so senders resend only what is missing. Pieces are stored as they
    arrive: stop or crash at any moment and the next run carries on. A message enters the
    inbox only when every piece is in and the sender's signature verifies.

    \b
    Examples:
      relay clip receive market --link sim://127.0.0.1:7300 --duration 600
      relay clip receive market --link sim://127.0.0.1:7300?node=ben --count 1 --json
    """
    h = resolve_home(home)
    report = asyncio.run(_receive(h, room, url, duration, count, max_bytes, as_json))
    if as_json:
        click.echo(json.dumps(report))
    else:
        _note(f"received {len(report['received'])} message(s) (stopped: {report['stopped']})")


async def _receive(home, room_ref, url, duration, count, max_bytes, as_json):
    from relay.runtime.clip import attach, clip_store, offer_seconds
    from relay.runtime.member import open_member

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _on_signals(stop)
    _room_id(home, room_ref)
    store = clip_store(home)
    got: list[dict[str, Any]] = []
    stopped = "interrupted"
    try:
        async with open_member(home, room_ref, url) as m:
            wake = asyncio.Event()

            def complete(clip) -> None:  # type: ignore[no-untyped-def]
                line = {
                    "id": clip.id,
                    "from": clip.sender_name,
                    "seconds": round(offer_seconds(clip.offer), 3),
                    "bytes": clip.offer.total,
                }
                got.append(line)
                if not as_json:
                    click.echo(f"{line['id']}  from {line['from']}  {line['seconds']:.1f} s")
                wake.set()

            node = attach(m, store, max_bytes=max_bytes, on_complete=complete)
            _note(
                f"collecting voice messages in {m.info.name!r} on {m.link.url} as "
                f"{m.fingerprint} (acknowledgements are transmitted); Ctrl-C to stop"
            )
            deadline = None if duration is None else loop.time() + duration
            while True:
                if count is not None and len(got) >= count:
                    stopped = "count"
                    break
                if stop.is_set():
                    break
                if deadline is not None and loop.time() >= deadline:
                    stopped = "duration"
                    break
                if not m.receiving:
                    stopped = "link closed"
                    break
                node.raise_if_failed()  # a full disk stops us with a clear error
                wake.clear()
                wait = 0.25 if deadline is None else max(0.0, min(0.25, deadline - loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)
            # Let a final ack (e.g. "complete") leave before the link closes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_acks_sent(node), node.ack_wait)
            await node.close()
            room_name, link_url = m.info.name, m.link.url
    finally:
        store.close()
    return {"room": room_name, "link": link_url, "received": got, "stopped": stopped}


async def _acks_sent(node) -> None:  # type: ignore[no-untyped-def]
    while node.receiver.wakeup() is not None:
        await asyncio.sleep(0.05)
    await node.link.drain()


# ---------------------------------------------------------------------------------- inbox
@clip_group.command("inbox")
@click.argument("room")
@home_option
@_json_option
def inbox_cmd(room, home, as_json) -> None:
    """List the complete, verified voice messages of ROOM (oldest first).

    \b
    Example:
      relay clip inbox market --json
    """
    from relay.runtime.clip import CLIPS_DB, clip_store, offer_seconds
    from relay.voice.modes import mode_by_index

    h = resolve_home(home)
    room_id, name = _room_id(h, room)
    clips, pending = [], 0
    if (h.path / CLIPS_DB).exists():  # listing creates nothing
        with clip_store(h) as store:
            clips = store.inbox(room_id)
            pending = len(store.pending(room_id))
    rows = [
        {
            "id": c.id,
            "from": c.sender_name,
            "seconds": round(offer_seconds(c.offer), 3),
            "mode": getattr(mode_by_index(c.offer.mode), "name", "?"),
            "bytes": c.offer.total,
            "sent": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.offer.created)),
            "received": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.received)),
        }
        for c in clips
    ]
    if as_json:
        click.echo(json.dumps({"room": name, "messages": rows, "outbox_pending": pending}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"voice messages in {name}")
    for col in ("id", "from", "seconds", "mode", "received"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], r["from"], f"{r['seconds']:.1f}", r["mode"], r["received"])
    Console().print(table)
    if pending:
        _note(f"{pending} of your messages are still in the outbox (`relay clip send --pending`)")


def _check_id(msg_id: str) -> None:
    key = msg_id.strip().lower()
    if not key or any(ch not in "0123456789abcdef" for ch in key):
        raise UsageError(f"{msg_id!r} is not a voice-message id (hex, see `relay clip inbox`)")


# ---------------------------------------------------------------------------------- play
@clip_group.command("play")
@click.argument("msg_id", metavar="ID")
@click.option(
    "--out", "out_path", type=click.Path(path_type=Path, dir_okay=False),
    help="Write the message to this WAV file.",
)  # fmt: skip
@click.option("--speaker", is_flag=True, help="Play through the speaker (needs relay[audio]).")
@home_option
@_json_option
def play_cmd(msg_id, out_path, speaker, home, as_json) -> None:
    """Play a complete voice message (ID from `relay clip inbox`; a unique prefix will do).

    \b
    Examples:
      relay clip play 3f9a --out heard.wav
      relay clip play 3f9a1c2e --speaker
    """
    from relay.runtime.clip import clip_store, decode_clip
    from relay.voice.modes import SAMPLE_RATE

    _check_id(msg_id)
    if (out_path is None) == (not speaker):
        raise UsageError("give exactly one of --out FILE or --speaker")
    if out_path is not None:
        if not out_path.parent.is_dir():
            raise UsageError(f"cannot write {out_path}: directory {out_path.parent} does not exist")
        if out_path.is_dir():
            raise UsageError(f"cannot write {out_path}: it is a directory")
    h = resolve_home(home)
    if not (h.path / "clips.db").exists():
        raise UsageError(f"no voice message {msg_id!r}: the inbox is empty")
    with clip_store(h) as store:
        clip = store.find(msg_id)
    pcm = decode_clip(clip)
    if out_path is not None:
        from relay.voice.audio import write_audio

        write_audio(out_path, pcm)
    else:
        from relay.voice.device import require_sounddevice

        sd = require_sounddevice("--speaker")
        try:
            sd.play(pcm, SAMPLE_RATE)
            sd.wait()
        except Exception as exc:
            raise UsageError(f"cannot play through the speaker: {exc}") from None
    report = {
        "id": clip.id,
        "from": clip.sender_name,
        "seconds": round(len(pcm) / SAMPLE_RATE, 3),
        "out": str(out_path) if out_path is not None else None,
    }
    if as_json:
        click.echo(json.dumps(report))
    else:
        where = f"written to {out_path}" if out_path is not None else "played"
        _note(f"{clip.id} from {clip.sender_name}: {report['seconds']:.1f} s, {where}")


# --------------------------------------------------------------------------------- delete
@clip_group.command("delete")
@click.argument("msg_id", metavar="ID")
@home_option
@_json_option
def delete_cmd(msg_id, home, as_json) -> None:
    """Erase a voice message from the inbox (ID from `relay clip inbox`; a prefix will do).

    The speech is overwritten on disk, not just unlinked; a note that the message was
    received stays, so a sender still retransmitting it is not collected again.

    \b
    Examples:
      relay clip delete 3f9a
    """
    from relay.runtime.clip import clip_store

    _check_id(msg_id)
    h = resolve_home(home)
    if not (h.path / "clips.db").exists():
        raise UsageError(f"no voice message {msg_id!r}: the inbox is empty")
    with clip_store(h) as store:
        clip = store.find(msg_id)
        store.erase(clip)
    if as_json:
        click.echo(json.dumps({"id": clip.id, "erased": True}))
    else:
        _note(f"{clip.id} from {clip.sender_name}: erased")
