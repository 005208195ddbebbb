"""`relay talk`, `relay listen`, `relay moderate`: a room on a link, one member per process.

Thin: :mod:`relay.runtime.member` opens the member, :class:`relay.runtime.room.RoomNode`
does the work; these commands parse, wait and print.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from relay.cli.options import dtx_option, fec_option, home_option, resolve_home
from relay.core.room import (
    SEAL_COPIES,
    Dropped,
    FloorChanged,
    HandRaised,
    MemberChanged,
    OverEnded,
    RelayNoticed,
    RoomEvent,
    SpeechFlagged,
)
from relay.errors import UsageError
from relay.runtime.member import (
    Member,
    floor_seconds_left,
    open_member,
    wait_for_grant,
)
from relay.runtime.voice import Over, Playout
from relay.voice.modes import SAMPLE_RATE

LINK_HELP = (
    "The channel to use: sim://127.0.0.1:7300 joins a `relay ether` (add ?node=NAME to name "
    "this radio)."
)
# Stop talking this long before the grant runs out: receivers drop voice after it.
GRANT_MARGIN = 0.5


def _link_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--link", "url", required=True, metavar="URL", help=LINK_HELP)(func)


def _json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print exactly one JSON object at the end."
    )(func)


def _relay_notices(event: RoomEvent) -> None:
    """Show what a relay says it did not forward (information, signed by the relay)."""
    if isinstance(event, RelayNoticed):
        _note(f"notice: {event.notice.text}")


def _note(message: str) -> None:
    """Progress for people, on stderr, so stdout stays the result (or the one JSON object)."""
    click.echo(f"relay: {message}", err=True)


def _on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)


async def _race(stop: asyncio.Event, *work: asyncio.Future[Any]) -> None:
    """Wait until one of ``work`` is done or ``stop`` is set."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({*work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise UsageError(f"{name} must be more than 0, got {value:g}")


# ---------------------------------------------------------------------------------- talk


@click.command("talk")
@click.argument("room")
@_link_option
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Speech to say: any audio file (WAV, FLAC, OGG...), any rate.",
)
@click.option("--mic", is_flag=True, help="Talk into the microphone (needs relay[audio]).")
@click.option(
    "--seconds",
    type=float,
    help="With --mic: talk at most this long (default: until Ctrl-C or the grant ends).",
)
@click.option(
    "--raise/--no-raise",
    "raise_hand",
    default=True,
    show_default=True,
    help="Raise a hand and wait for the floor, or only wait for a moderator to grant it.",
)
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for the floor before giving up.",
)
@fec_option
@dtx_option
@click.option(
    "--adapt",
    is_flag=True,
    help="Step the codec down (1600, 1300, 1200, 700C) when the moderator's beacons or "
    "speakers' seals report heavy loss, and back up when it clears.",
)
@click.option(
    "--live",
    "force_live",
    is_flag=True,
    help="Talk live even where the planner says live voice does not fit the link (by "
    "default the over is then sent as a voice message).",
)
@home_option
@_json_option
def talk_cmd(
    room,
    url,
    input_path,
    mic,
    seconds,
    raise_hand,
    timeout,
    fec,
    dtx,
    adapt,
    force_live,
    home,
    as_json,
) -> None:
    """Say one over in ROOM: wait for the floor, speak, seal the over, release the floor.

    The hand goes up only between overs, never over a speaker. The codec is the room's mode;
    frames per packet come from the planner for the link's radio. Speech longer than the
    grant is cut at the end of the grant. Exit code 1 if the floor never came.

    Where live voice does not fit the link (LONG_FAST, a tight duty cycle: see `relay plan`)
    the over goes out as a voice message instead, and talk says so: no floor is needed,
    members collect it with `relay clip receive`. --live talks live anyway.

    \b
    Examples:
      relay talk market --link sim://127.0.0.1:7300 --input hello.wav
      relay talk market --link sim://127.0.0.1:7300?node=ana --mic --seconds 20
      relay talk market --link sim://127.0.0.1:7300 --input news.flac --timeout 600 --json
    """
    if (input_path is None) == (not mic):
        raise UsageError("say what to send: --input FILE or --mic (one of them)")
    _positive("--timeout", timeout)
    _positive("--seconds", seconds)
    if seconds is not None and not mic:
        raise UsageError("--seconds goes with --mic (a file is as long as it is)")
    if dtx is None:
        from relay.voice.vad import DTX_DEFAULT

        dtx = DTX_DEFAULT
    pcm = sd = None
    if mic:
        from relay.voice.device import require_sounddevice

        sd = require_sounddevice("--mic")
    else:
        from relay.voice.audio import read_audio

        pcm = read_audio(input_path)
    h = resolve_home(home)
    report = asyncio.run(
        _talk(
            h,
            room,
            url,
            pcm,
            sd,
            seconds,
            raise_hand,
            timeout,
            bool(fec),
            bool(dtx),
            adapt,
            live=force_live,
        )
    )
    if report["sent_as"] == "voice message":
        clip = report["voice_message"]
        if as_json:
            click.echo(json.dumps(report))
        else:
            state = "delivered" if clip["delivered"] else "not delivered (still in the outbox)"
            click.echo(
                f"voice message {clip['msg_id']}: {clip['seconds']:.1f} s of Codec2 "
                f"{clip['mode']} in {clip['pieces']} pieces, {state} "
                f"({clip['complete']} receiver(s) done, {clip['airtime_s']:.1f} s of airtime)"
            )
        if not clip["delivered"]:
            raise SystemExit(1)
        return
    if as_json:
        click.echo(json.dumps(report))
    elif report["granted"]:
        click.echo(
            f"floor granted after {report['waited_seconds']:.1f} s "
            f"(for {report['grant_seconds']:.0f} s)"
        )
        how = "interrupted, over sealed" if report["interrupted"] else "over sealed"
        click.echo(
            f"spoke {report['speech_seconds']:.2f} s: {report['frames_sent']} frames in "
            f"{report['voice_packets']} packets (Codec2 {report['mode']}, "
            f"{report['frames_per_packet']} frames/packet), {how}"
        )
        if report["truncated"]:
            click.echo("the speech was longer than the grant: the end was cut")
    if not report["granted"]:
        if not as_json:
            _note(f"no floor: {report['reason']}")
        raise SystemExit(1)


async def _as_voice_message(m: Member, pcm, seconds) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Send the over as a voice message (the planner says live voice does not fit)."""
    from relay.runtime.clip import send_clip
    from relay.voice.modes import mode_by_name

    _note(
        f"live voice does not fit {m.profile.name} (see `relay plan`): sending this over as a "
        "voice message; members collect it with `relay clip receive`"
    )
    if pcm is None:
        if seconds is None:
            raise UsageError(
                "live voice does not fit this link: a voice message from the microphone "
                "needs --seconds (or use --live)"
            )
        from relay.cli.clip import record_microphone

        pcm = await asyncio.to_thread(record_microphone, seconds)
    result = await send_clip(m, pcm)
    clip = result.to_dict()
    clip["seconds"] = round(result.frames * mode_by_name(result.mode).frame_seconds, 3)
    return clip


async def _talk(
    home,
    room_ref,
    url,
    pcm,
    sd,
    seconds,
    raise_hand,
    timeout,
    fec=False,
    dtx=False,
    adapt=False,
    *,
    live: bool = False,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _on_signals(stop)
    async with open_member(home, room_ref, url, on_event=_relay_notices) as m:
        if warning := m.radio_mismatch():
            _note(f"warning: {warning}")
        mode = m.mode
        fpp, fits = m.frames_per_packet()
        if not fits and not live:
            return {
                "room": m.info.name,
                "link": m.link.url,
                "speaker": m.fingerprint,
                "fits_live": False,
                "sent_as": "voice message",
                "voice_message": await _as_voice_message(m, pcm, seconds),
                "granted": False,
            }
        over = None
        from relay.core.wire import FEC_PAIRS

        if fec and mode.name not in FEC_PAIRS:
            raise UsageError(f"--fec: codec {mode.name} has no FEC pairing")
        if pcm is not None:
            from relay.voice.over import encode_over

            over = encode_over(pcm, mode, fec=fec, dtx=dtx)
        report: dict[str, Any] = {
            "room": m.info.name,
            "link": m.link.url,
            "speaker": m.fingerprint,
            "mode": mode.name,
            "frames_per_packet": fpp,
            "fits_live": fits,
            "sent_as": "live",
            "fec": fec,
            "dtx": dtx,
            "granted": False,
            "reason": None,
            "waited_seconds": None,
            "grant_seconds": None,
            "speech_seconds": 0.0,
            "frames_sent": 0,
            "voice_packets": 0,
            "truncated": False,
            "interrupted": False,
        }
        _note(
            f"in {m.info.name!r} as {m.fingerprint} on {m.link.url}; "
            + ("raising a hand" if raise_hand else "waiting for a grant")
        )
        start = loop.time()
        waiting = asyncio.ensure_future(
            m.node.wait_for_floor(timeout) if raise_hand else wait_for_grant(m, timeout)
        )
        closed = asyncio.ensure_future(m.link_closed())
        await _race(stop, waiting, closed)
        granted = waiting.done() and waiting.result()
        if not granted:
            waiting.cancel()
            closed.cancel()
            report["reason"] = (
                "interrupted"
                if stop.is_set()
                else "the link closed"
                if not m.receiving
                else f"not granted within {timeout:g} s"
            )
            if raise_hand and m.receiving:  # do not leave a hand up for a grant nobody uses
                with contextlib.suppress(Exception):
                    await m.node.send(m.room.lower_hand(m.clock()))
                    await m.link.drain()
            return report
        closed.cancel()
        report["granted"] = True
        if adapt:
            from relay.core.wire import FEC_PAIRS
            from relay.voice.adapt import LADDER
            from relay.voice.over import encode_over

            if mode.name in LADDER:
                policy = m.node.policy
                if policy.top != mode.name:
                    policy.set_top(mode.name)
                chosen = policy.mode(m.clock())
                if chosen is not mode:
                    mode = chosen
                    fpp = m.frames_per_packet(mode)[0]
                    fec = fec and mode.name in FEC_PAIRS  # 700C has no lower mode to copy in
                    if pcm is not None:
                        over = encode_over(pcm, mode, fec=fec, dtx=dtx)
                    report["mode"], report["frames_per_packet"] = mode.name, fpp
            report["adapt"] = {"worst_loss": m.node.policy.worst_loss(m.clock())}
        report["waited_seconds"] = round(loop.time() - start, 3)
        left = floor_seconds_left(m)
        report["grant_seconds"] = round(left, 1)
        # The "beep" of push-to-talk: from here on what is said goes out (scripts and
        # tests wait for this line instead of guessing how long the grant took).
        _note(f"floor granted for {left:.0f} s: on air")
        budget = left - GRANT_MARGIN - fpp * mode.frame_seconds
        live_before = m.room.live_bytes
        if over is not None:
            most = max(1, int(budget / mode.frame_seconds))
            report["truncated"] = over.total > most
            over = over.head(most)
            frames = over.frames
            sent_before = m.link.stats.sent
            speaking = asyncio.ensure_future(m.node.speak_over(over, fpp))
            await _race(stop, speaking)
            if speaking.done():
                result = speaking.result()
                report["frames_sent"] = result.frames_sent
                report["voice_packets"] = result.packets_sent - SEAL_COPIES
                report["speech_seconds"] = round(over.seconds, 3)
            else:
                speaking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await speaking
                report["interrupted"] = True
                voice_packets = m.link.stats.sent - sent_before
                report["frames_sent"] = min(len(frames), voice_packets * fpp)
                await m.node.send(*m.room.end_over(m.clock()))
        else:
            from relay.voice.device import microphone

            deadline = loop.time() + min(budget, seconds or budget)
            source = microphone(sd, mode)
            async with contextlib.aclosing(source):
                live = await m.node.speak_live(
                    mode,
                    source,
                    fpp,
                    fec=fec,
                    dtx=dtx,
                    until=lambda: stop.is_set() or loop.time() >= deadline,
                )
            report["frames_sent"] = live.frames_sent
            report["voice_packets"] = live.packets_sent - SEAL_COPIES
            report["speech_seconds"] = round(live.positions * mode.frame_seconds, 3)
            report["interrupted"] = stop.is_set()
        await m.link.drain()
        if not report["voice_packets"]:
            report["voice_packets"] = -(-report["frames_sent"] // fpp)
        if not report["speech_seconds"]:
            report["speech_seconds"] = round(report["frames_sent"] * mode.frame_seconds, 3)
        report["relay_notices"] = list(m.node.log.notices)
        report["live_bytes"] = m.room.live_bytes - live_before
        return report


# ---------------------------------------------------------------------------------- listen


@click.command("listen")
@click.argument("room")
@_link_option
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write what was heard (every over, one after the other) to this WAV file.",
)
@click.option("--speaker", is_flag=True, help="Play through the speaker (needs relay[audio]).")
@click.option("--duration", type=float, help="Stop after this many seconds.")
@click.option("--overs", type=int, help="Stop after hearing this many overs.")
@click.option(
    "--verified-only",
    is_flag=True,
    help="Play only words the speaker is known to have said (checked by the keys it reveals "
    "about 0.6 s later, or by its seal): nothing injected is played, at about 1 s more "
    "delay; what loss leaves unverifiable is concealed like a lost packet.",
)
@home_option
@_json_option
def listen_cmd(room, url, out_path, speaker, duration, overs, verified_only, home, as_json) -> None:
    """Hear ROOM: play or record what is said, and say who said it and whether it is verified.

    Listening never transmits: a receive-only radio cannot be found by direction finding.
    Each over goes through a jitter buffer with loss concealment and prints one line: the
    speaker's fingerprint (short hex if they never introduced themselves) and the verdict —
    verified (the speaker's signature covers every word played), partial (some frames lost,
    nothing contradicted), forged (words the speaker did not say) or unsigned (the seal
    never came). Words injected in a speaker's name are flagged on stderr while the over
    goes on, within about 1 s (the speaker reveals the keys of its words as it talks);
    --verified-only plays only what is verified. Runs until --overs, --duration, Ctrl-C or
    SIGTERM; an over still being spoken then is kept (written to --out, reported as cut
    short). A link that cannot be reached (a dead TNC or broker port) is an error at the
    start, exit code 1; a refused MQTT login or a missing CA file, exit code 2.

    \b
    Examples:
      relay listen market --link sim://127.0.0.1:7300 --speaker
      relay listen market --link sim://127.0.0.1:7300 --out heard.wav --duration 600
      relay listen market --link sim://127.0.0.1:7300?node=ben --overs 1 --json
      relay listen market --link sim://127.0.0.1:7300 --speaker --verified-only
    """
    _positive("--duration", duration)
    if overs is not None and overs < 1:
        raise UsageError(f"--overs must be at least 1, got {overs}")
    if out_path is not None:
        if not out_path.parent.is_dir():
            raise UsageError(f"cannot write {out_path}: directory {out_path.parent} does not exist")
        if out_path.is_dir():
            raise UsageError(f"cannot write {out_path}: it is a directory")
    sink = None
    if speaker:
        from relay.voice.device import SpeakerSink, require_sounddevice

        sink = SpeakerSink(require_sounddevice("--speaker"))
    h = resolve_home(home)
    try:
        report = asyncio.run(
            _listen(h, room, url, sink, duration, overs, out_path, as_json, verified_only)
        )
    finally:
        if sink is not None:
            sink.close()
    if as_json:
        click.echo(json.dumps(report))
        return
    heard = len(report["overs"])
    summary = f"heard {heard} over{'s' if heard != 1 else ''}, {report['audio_seconds']:.2f} s"
    if report["out"]:
        summary += f", written to {report['out']}"
    _note(f"{summary} (stopped: {report['stopped']})")


def _over_line(m, over: Over) -> dict[str, Any]:
    frames = len(over.pcm) + over.first_position
    return {
        "speaker": m.name_of(over.sender),
        "known": m.public_of(over.sender) is not None,
        "verdict": over.verdict or "unsigned",
        "seconds": round(frames * over.mode.frame_seconds, 3),
        "frames": frames,
        "frames_concealed": over.frames_concealed,
        "frames_comfort": over.frames_comfort,
        "frames_late": over.frames_late,
        "mode": over.mode.name,
        "complete": over.complete,
    }


async def _listen(
    home, room_ref, url, sink, duration, overs, out_path, as_json, verified_only=False
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _on_signals(stop)
    if sink is not None:
        from relay.voice.device import SpeakerPlayout

        playout: Playout = SpeakerPlayout(sink, verified_only=verified_only)
    else:
        playout = Playout(verified_only=verified_only)
    flagged: list[dict[str, Any]] = []
    member: list[Member] = []

    def on_event(event: RoomEvent) -> None:
        _relay_notices(event)
        if isinstance(event, SpeechFlagged) and member:
            m = member[0]
            first = event.positions[0] if event.positions else 0
            seconds = round(first * m.mode.frame_seconds, 2)
            flagged.append({"speaker": m.name_of(event.speaker), "at_seconds": seconds})
            _note(
                f"FLAGGED: words the speaker did not say were sent as {m.name_of(event.speaker)}"
                f" at {seconds:.2f} s into the over" + (" (not played)" if verified_only else "")
            )

    async with open_member(home, room_ref, url, playout=playout, on_event=on_event) as m:
        member.append(m)
        if warning := m.radio_mismatch():
            _note(f"warning: {warning}")
        _note(
            f"listening to {m.info.name!r} on {m.link.url} as {m.fingerprint} "
            "(receive only: nothing is transmitted); Ctrl-C to stop"
        )
        deadline = None if duration is None else loop.time() + duration
        lines: list[dict[str, Any]] = []
        stopped = "interrupted"

        def take_new(cut: bool = False) -> None:
            for over in playout.overs[len(lines) :]:
                line = _over_line(m, over)
                line["cut_short"] = cut
                lines.append(line)
                if not as_json:
                    click.echo(
                        f"{line['speaker']}  {line['verdict']:<8}  {line['seconds']:6.2f} s"
                        + (
                            f"  ({line['frames_concealed']} of {line['frames']} frames concealed)"
                            if line["frames_concealed"]
                            else ""
                        )
                        + ("  (cut short: stopped mid-over)" if cut else "")
                    )

        while True:
            take_new()
            if overs is not None and len(lines) >= overs:
                stopped = "overs"
                break
            if stop.is_set():
                break
            # (a millisecond early: a wait shorter than the clock's resolution would return
            # at once without time moving, and spin)
            if deadline is not None and loop.time() >= deadline - 0.001:
                stopped = "duration"
                break
            if not m.receiving:
                stopped = "link closed"
                break
            wait = 0.25 if deadline is None else max(0.0, min(0.25, deadline - loop.time()))
            await playout.wait_overs(len(lines) + 1, wait)
        if stopped != "overs":  # stopped mid-over: keep what was heard of it
            playout.close_all()
            take_new(cut=True)
        dropped = dict(m.node.log.dropped)
        notices = list(m.node.log.notices)
        verified_packets = m.node.log.verified_packets
        link_url = m.link.url
        room_name = m.info.name
    heard = [o for o in playout.overs[: len(lines)]]
    audio = np.concatenate([o.audio() for o in heard]) if heard else np.zeros(0, np.int16)
    written = None
    if out_path is not None and len(audio):
        from relay.voice.audio import write_audio

        write_audio(out_path, audio)
        written = str(out_path)
    return {
        "room": room_name,
        "link": link_url,
        "overs": lines,
        "overs_verified": sum(1 for line in lines if line["verdict"] == "verified"),
        "audio_seconds": round(len(audio) / SAMPLE_RATE, 3),
        "out": written,
        "stopped": stopped,
        "dropped": dropped,
        "relay_notices": notices,
        "verified_only": verified_only,
        "verified_packets": verified_packets,
        "flagged": flagged,
    }


# ---------------------------------------------------------------------------------- moderate


@click.command("moderate")
@click.argument("room")
@_link_option
@click.option(
    "--auto-grant",
    type=click.IntRange(1, 65535),
    metavar="SECONDS",
    help="Grant the floor to raised hands in order, for at most SECONDS each. Without it "
    "hands are shown and `relay mod grant ROOM MEMBER` grants them.",
)
@click.option("--duration", type=float, help="Stop after this many seconds (default: Ctrl-C).")
@home_option
@_json_option
def moderate_cmd(room, url, auto_grant, duration, home, as_json) -> None:
    """Run ROOM as its moderator: grant the floor to the hand queue, send state beacons.

    While it runs, `relay mod grant|revoke|mute|unmute|remove|appoint ROOM MEMBER` from
    another terminal (same user, same --home) acts through it, over a local socket.

    Prints hands raised, grants, overs with their verdicts, words flagged as injected in a
    speaker's name, and packets dropped (voice without the floor, forged or replayed
    moderation). Beacons tell late joiners who holds
    the floor, at a rate the link's airtime allows. Only a moderator of ROOM can run this.

    \b
    Examples:
      relay moderate market --link sim://127.0.0.1:7300 --auto-grant 30
      relay moderate market --link sim://127.0.0.1:7300?node=mod --auto-grant 60 --duration 3600
      relay moderate market --link sim://127.0.0.1:7300 --duration 120 --json
      relay moderate market --link sim://127.0.0.1:7300      then: relay mod grant market ana
    """
    _positive("--duration", duration)
    h = resolve_home(home)
    report = asyncio.run(_moderate(h, room, url, auto_grant, duration, as_json))
    if as_json:
        click.echo(json.dumps(report))
        return
    _note(
        f"moderated {report['seconds']:.0f} s: {len(report['grants'])} grants, "
        f"{len(report['overs'])} overs, {sum(report['dropped'].values())} packets dropped "
        f"(stopped: {report['stopped']})"
    )


async def _moderate(home, room_ref, url, auto_grant, duration, as_json) -> dict[str, Any]:
    from relay.app.control import serve_moderation
    from relay.app.session import RoomSession
    from relay.store.contacts import Contacts, Names

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _on_signals(stop)
    grants: list[dict[str, Any]] = []
    overs: list[dict[str, Any]] = []
    hands: list[str] = []
    member: list[Member] = []

    def say(text: str) -> None:
        if not as_json:
            click.echo(text)

    def on_event(event: RoomEvent) -> None:
        if not member:
            return
        m = member[0]
        if isinstance(event, HandRaised):
            who = m.name_of(event.member)
            if event.raised:
                hands.append(who)
            hint = ""
            if event.raised and not auto_grant:
                hint = f"  (grant it: relay mod grant {m.info.name} {who[:9]})"
            say(f"hand {'raised' if event.raised else 'lowered'}: {who}{hint}")
        elif isinstance(event, OverEnded):
            over = {"speaker": m.name_of(event.speaker), "verdict": event.verdict}
            overs.append(over)
            say(f"over ended: {over['speaker']} {over['verdict']}")
        elif isinstance(event, Dropped):
            say(f"dropped: {event.reason} ({event.detail})")
        elif isinstance(event, MemberChanged):
            say(f"member {event.change}: {m.name_of(event.member)}")
        elif isinstance(event, FloorChanged):  # another moderator acted
            holder = m.name_of(event.holder) if event.holder else "nobody"
            say(f"floor: {holder}")
        elif isinstance(event, RelayNoticed):
            say(f"notice: {event.notice.text}")
        elif isinstance(event, SpeechFlagged):
            say(f"flagged: words {m.name_of(event.speaker)} did not say were sent in its name")

    async with open_member(home, room_ref, url, on_event=on_event, require_moderator=True) as m:
        member.append(m)
        if warning := m.radio_mismatch():
            _note(f"warning: {warning}")
        _note(
            f"moderating {m.info.name!r} on {m.link.url} as {m.fingerprint}; "
            + (f"auto-grant {auto_grant} s" if auto_grant else "hands are shown, not granted")
            + "; Ctrl-C to stop"
        )
        # `relay mod ACTION ROOM MEMBER` reaches this process through a local socket.
        session = RoomSession(m, names=Names(Contacts(home).list()))
        await session.start(beacons=False)
        control = await serve_moderation(home, session, lambda done: say(f"mod: {done}"))
        if control is None:
            _note("warning: another moderator process serves `relay mod` for this room here")
        start = loop.time()
        done = asyncio.Event()
        moderating = asyncio.ensure_future(m.node.moderate(auto_grant=auto_grant, stop=done))
        holder = m.room.floor
        stopped = "interrupted"
        while True:
            # Our own grants do not come back as events: watch the floor instead.
            if m.room.floor != holder:
                holder = m.room.floor
                if holder is not None:
                    grant = {
                        "member": m.name_of(holder),
                        "seconds": round(max(0.0, m.room.floor_until - m.clock())),
                        "at": round(loop.time() - start, 2),
                    }
                    grants.append(grant)
                    say(f"granted the floor to {grant['member']} for {grant['seconds']} s")
                else:
                    say("floor free")
            if moderating.done():
                moderating.result()  # raises what went wrong (a lost link...)
                stopped = "link closed"
                break
            if stop.is_set():
                break
            if duration is not None and loop.time() - start >= duration:
                stopped = "duration"
                break
            if not m.receiving:
                stopped = "link closed"
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        done.set()
        if control is not None:
            await control.close()
        await session.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(moderating, 2.0)
        report = {
            "room": m.info.name,
            "link": m.link.url,
            "moderator": m.fingerprint,
            "auto_grant": auto_grant,
            "hands": hands,
            "grants": grants,
            "overs": overs,
            "dropped": dict(m.node.log.dropped),
            "seconds": round(loop.time() - start, 2),
            "stopped": stopped,
        }
    return report
