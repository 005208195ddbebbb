"""`relay talk`, `listen`, `moderate` and `demo room`: a real room across real processes.

The homes are made with the CLI in-process (fast); the room itself runs as four processes
sharing one `relay ether` channel (SHORT_TURBO, so it takes a few seconds of real time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
from cli_helpers import (
    ENV,
    invoke,
    make_homes,
    ok,
    refused,
    relay_proc,
    start_ether,
    stop_processes,
    wait_for_text,
)
from test_live_voice import PCM, fake_sounddevice

from relay.demo.voice import bundled_sample
from relay.runtime.clock import run
from relay.runtime.member import open_member
from relay.store.home import Home
from relay.voice.audio import read_audio
from relay.voice.device import SpeakerPlayout, SpeakerSink, microphone

SAMPLE = bundled_sample("forig.wav")  # 1.58 s of speech: 40 frames of Codec2 1600


@pytest.fixture(scope="module")
def homes(tmp_path_factory) -> dict[str, str]:
    """A moderator with room `market` (SHORT_TURBO), a speaker and a listener enrolled --for."""
    return make_homes(tmp_path_factory.mktemp("homes"), "market")


@pytest.mark.parametrize("quality", [("--no-dtx",), ("--fec", "--dtx")], ids=["plain", "fec+dtx"])
def test_a_room_across_processes(homes, tmp_path, quality) -> None:
    # --lbt: a loss-free over must not hang on when the OS runs each process (see start_ether).
    # The --duration given to the processes are safety nets: the test stops them itself.
    ether, url = start_ether("--preset", "SHORT_TURBO", "--lbt", log=tmp_path / "ether.log")
    procs: list[subprocess.Popen] = []
    try:
        wav = tmp_path / "heard.wav"
        mod = relay_proc(
            "moderate", "market", "--link", f"{url}?node=mod", "--auto-grant", "20",
            "--duration", "150", "--home", homes["mod"], out=tmp_path / "mod",
        )  # fmt: skip
        listen = relay_proc(
            "listen", "market", "--link", f"{url}?node=ben", "--overs", "1", "--out", str(wav),
            "--duration", "150", "--json", "--home", homes["ben"], out=tmp_path / "ben",
        )  # fmt: skip
        procs += [mod, listen]
        wait_for_text(tmp_path / "mod.err", "moderating 'market'")
        wait_for_text(tmp_path / "ben.err", "listening to 'market'")

        talk = subprocess.run(
            [sys.executable, "-m", "relay", "talk", "market", "--link", f"{url}?node=ana",
             "--input", str(SAMPLE), "--timeout", "60", "--json", "--home", homes["ana"],
             *quality],
            capture_output=True, text=True, timeout=120, env=ENV,
        )  # fmt: skip
        assert talk.returncode == 0, talk.stderr
        assert "on air" in talk.stderr, talk.stderr
        said = json.loads(talk.stdout)
        assert said["granted"] and said["speaker"] == homes["ana_fp"]
        assert not said["truncated"] and not said["interrupted"]
        assert said["speech_seconds"] == pytest.approx(1.6)
        if "--fec" in quality:  # DTX may skip a pause; FEC copies ride along unsealed
            assert said["fec"] and said["dtx"] and 30 <= said["frames_sent"] <= 40
        else:
            assert said["frames_sent"] == 40

        assert listen.wait(timeout=60) == 0, (tmp_path / "ben.err").read_text()
        heard = json.loads((tmp_path / "ben.out").read_text())
        channel = (tmp_path / "ether.log").read_text()
        assert heard["stopped"] == "overs" and heard["overs_verified"] == 1, (heard, channel)
        (over,) = heard["overs"]
        assert over["speaker"] == homes["ana_fp"] and over["verdict"] == "verified"
        # DTX pauses are comfort noise, not concealment: nothing was lost on this channel.
        assert over["frames_concealed"] == 0, (over, channel)
        assert over["frames_comfort"] == 40 - said["frames_sent"], (over, said)
        assert heard["out"] == str(wav)
        seconds = soundfile.info(str(wav)).duration
        assert abs(seconds - 1.6) < 0.1 and heard["audio_seconds"] == pytest.approx(seconds)

        mod.send_signal(signal.SIGINT)
        assert mod.wait(timeout=30) == 0
        log = (tmp_path / "mod.out").read_text()
        assert f"hand raised: {homes['ana_fp']}" in log
        assert f"granted the floor to {homes['ana_fp']} for 20 s" in log
        assert f"over ended: {homes['ana_fp']} verified" in log
        assert "stopped: interrupted" in (tmp_path / "mod.err").read_text()
        # The listener kept its replay marks: a restart will not accept this over again.
        assert (Path(homes["ben"]) / "replay.db").stat().st_size > 0
    finally:
        stop_processes(procs, ether)


def test_help_has_examples() -> None:
    for cmd in (["talk"], ["listen"], ["moderate"], ["demo", "room"]):
        result = ok(*cmd, "--help")
        assert "Examples" in result.output, cmd
    assert "relay demo room" in ok("demo", "--help").output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["talk", "nope", "--link", "sim://t", "--input", str(SAMPLE)], "no room 'nope'"),
        (["listen", "nope", "--link", "sim://t"], "no room 'nope'"),
        (["moderate", "nope", "--link", "sim://t"], "no room 'nope'"),
        (["talk", "market", "--link", "bogus://x", "--input", str(SAMPLE)], "unknown link scheme"),
        (["listen", "market", "--link", "sim://t?preset=NOPE"], "unknown radio preset"),
        (["listen", "market", "--link", "127.0.0.1:7300"], "has no scheme"),
        (["talk", "market", "--link", "sim://t", "--input", "missing.wav"], "no such audio file"),
        (["talk", "market", "--link", "sim://t"], "--input FILE or --mic"),
        (["talk", "market", "--link", "sim://t", "--input", str(SAMPLE), "--mic"], "one of them"),
        (["talk", "market", "--link", "sim://t", "--mic"], "pip install 'relay[audio]'"),
        (["talk", "market", "--link", "sim://t", "--mic", "--fec"], "pip install 'relay[audio]'"),
        (["listen", "market", "--link", "sim://t", "--speaker"], "pip install 'relay[audio]'"),
        (["listen", "market", "--link", "sim://t", "--overs", "0"], "--overs must be"),
        (["listen", "market", "--link", "sim://t", "--out", "/no/such/dir/x.wav"], "directory"),
        (["moderate", "market", "--link", "sim://t", "--duration", "-1"], "--duration must be"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(homes, monkeypatch, args, match) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # as if relay[audio] were missing
    refused(*args, "--home", homes["ana"], match=match)


def test_moderator_only_and_missing_ether(homes) -> None:
    refused(
        "moderate", "market", "--link", "sim://t", "--home", homes["ben"], match="only a moderator"
    )
    refused(
        "talk", "market", "--link", "sim://127.0.0.1:9", "--input", str(SAMPLE),
        "--home", homes["ana"], match="no ether at 127.0.0.1:9", code=1,
    )  # fmt: skip


@pytest.mark.parametrize("hand", ["--raise", "--no-raise"])
def test_no_floor_without_a_moderator(homes, hand) -> None:
    """Nobody grants on an empty channel: exit 1, and the JSON says why."""
    result = invoke(
        "talk", "market", "--link", "sim://lonely", "--input", str(SAMPLE), "--timeout", "0.3",
        hand, "--json", "--home", homes["ana"],
    )  # fmt: skip
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["granted"] is False and "not granted within 0.3 s" in report["reason"]


def test_demo_room_json() -> None:
    result = ok("demo", "room", "--speakers", "3", "--listeners", "20", "--json")
    r = json.loads(result.stdout)
    assert (r["speakers"], r["listeners"]) == (3, 20)
    assert r["overs"] >= 4
    assert r["overs_delivered"] == r["overs"] and r["overs_verified"] == r["overs"]
    assert r["removed_member_decrypts"] == 0
    assert r["forged_moderation_rejected"] > 0 and r["floor_violations_dropped"] > 0
    assert r["latency_ms"]["p50"] < 300
    assert 0 < r["channel_occupancy"] < 1 and r["airtime_seconds"] > 0


def test_demo_room_on_a_slow_link_never_hears_more_overs_than_were_spoken() -> None:
    """LONG_FAST with DTX: a packet after a pause arrived 6 s after the frame before it and
    the listener's playout split the over in two ("4 of 3"); Playout's idle limit now
    follows the link (relay.runtime.room.quiet_limit). And hands raised the moment the
    floor came free reached the moderator after its grant from the queue, queued those
    speakers again, and the stale grants kept the last over from the floor (3 of 4 spoken):
    wait_for_floor now gives the moderator's grant a round trip first."""
    r = json.loads(ok("demo", "room", "--preset", "LONG_FAST", "--listeners", "2", "--json").stdout)
    assert r["dtx"] and r["overs"] == 4  # 3 speakers, then one more after the removal
    assert r["overs_delivered"] == r["overs"] == r["overs_verified"], r


def test_demo_room_mistakes_and_plain_demo_unchanged(tmp_path) -> None:
    refused("demo", "room", "--speakers", "0", match="--speakers must be")
    refused("demo", "room", "--speakers", "1", match="--no-attacks")
    refused("demo", "room", "--listeners", "500", match="--listeners must be")
    refused("demo", "room", "--loss", "1.5", match="--loss")
    refused("demo", "room", "--burst", "0.5", match="--burst")
    refused("demo", "room", "--preset", "NOPE", match="unknown radio preset")
    refused("demo", "--loss", "0.1", "room", match="put room options after `room`")
    out = tmp_path / "plain.wav"
    plain = json.loads(ok("demo", "--out", str(out), "--json").stdout)
    assert plain["packets_received"] == plain["packets_sent"] and out.exists()


class FakeOutput:
    def __init__(self, *, samplerate, channels, dtype, callback, device) -> None:
        self.callback = callback

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_microphone_to_speaker_in_one_process(homes) -> None:
    """--mic and --speaker paths with sounddevice faked: live speech, verified, played."""
    fake_sd = fake_sounddevice(read_audio(SAMPLE), FakeOutput)
    url = "sim://mic-test?preset=SHORT_TURBO"

    async def scenario() -> tuple[list, list, dict]:
        loop = asyncio.get_running_loop()
        epoch = time.time() - loop.time()

        def clock() -> float:
            return epoch + loop.time()

        sink = SpeakerSink(fake_sd)
        heard = SpeakerPlayout(sink)
        mod_home, ana_home, ben_home = (Home(homes[n]) for n in ("mod", "ana", "ben"))
        async with (
            open_member(mod_home, "market", url, clock=clock) as mod,
            open_member(ben_home, "market", url, clock=clock, playout=heard) as ben,
            open_member(ana_home, "market", url, clock=clock) as ana,
        ):
            stop = asyncio.Event()
            moderating = asyncio.create_task(mod.node.moderate(auto_grant=10, stop=stop))
            assert await ana.node.wait_for_floor(timeout=10)
            fpp, _ = ana.frames_per_packet()
            start = loop.time()
            source = microphone(fake_sd, ana.mode)
            async with contextlib.aclosing(source):
                said = await ana.node.speak_live(
                    ana.mode, source, fpp, until=lambda: loop.time() - start > 1.0
                )
            await ana.link.drain()
            assert await heard.wait_overs(1, timeout=5)
            stop.set()
            await moderating
            marks = ben.room.receiver.highest_counters()
            speaker = ana.identity.identity
        # Reopened, the listener still remembers how far the speaker's counter went.
        async with open_member(ben_home, "market", url, clock=clock) as again:
            restored = again.room.receiver.highest_counters()
        played = list(sink._chunks)
        return (
            [said, heard.overs],
            played,
            {"marks": marks, "restored": restored, "speaker": speaker},
        )

    (said, overs), played, state = run(scenario(), virtual=True)
    (over,) = overs
    assert over.verdict == "verified" and said.frames_sent == len(over.pcm)
    assert 0.9 <= said.frames_sent * over.mode.frame_seconds <= 1.3
    assert sum(len(chunk) for chunk in played) == len(over.audio())  # all of it reached the sink
    speaker = state["speaker"]
    assert state["marks"][speaker] >= said.packets_sent - 1  # hello + voice + seals
    assert state["restored"][speaker] == state["marks"][speaker]


def test_talk_mic_with_fec_and_dtx(homes) -> None:
    """`relay talk --mic --fec --dtx` (sounddevice faked): a listener verifies the live over
    and the pauses cost no packets."""
    from relay.cli.talk import _talk

    fake_sd = fake_sounddevice(PCM)
    url = "sim://mic-fec-dtx?preset=SHORT_TURBO"
    seconds = len(PCM) / 8000

    async def scenario() -> tuple[dict, list]:
        heard = SpeakerPlayout(SpeakerSink(types.SimpleNamespace(OutputStream=FakeOutput)))
        mod_home, ana_home, ben_home = (Home(homes[n]) for n in ("mod", "ana", "ben"))
        async with (
            open_member(mod_home, "market", url) as mod,
            open_member(ben_home, "market", url, playout=heard),
        ):
            stop = asyncio.Event()
            moderating = asyncio.create_task(mod.node.moderate(auto_grant=20, stop=stop))
            report = await _talk(ana_home, "market", url, None, fake_sd, seconds, True, 10.0,
                                 fec=True, dtx=True)  # fmt: skip
            assert await heard.wait_overs(1, timeout=5)
            stop.set()
            await moderating
        return report, heard.overs

    report, (over,) = run(scenario(), virtual=True)
    assert report["granted"] and report["fec"] and report["dtx"] and not report["interrupted"]
    assert over.verdict == "verified" and over.frames_comfort > 40
    positions = round(report["speech_seconds"] / over.mode.frame_seconds)
    assert abs(positions - seconds / over.mode.frame_seconds) <= 2
    assert report["frames_sent"] < 0.8 * positions  # the pauses were not sent
    fpp = report["frames_per_packet"]
    assert report["voice_packets"] < 0.8 * positions / fpp


def test_speaker_sink_plays_in_order_then_silence() -> None:
    sink = SpeakerSink(types.SimpleNamespace(OutputStream=FakeOutput))
    sink.write(np.arange(1, 5, dtype=np.int16))
    sink.write(np.arange(5, 8, dtype=np.int16))
    out = np.full((5, 1), -1, np.int16)
    sink._fill(out, 5, None, None)
    assert out[:, 0].tolist() == [1, 2, 3, 4, 5]
    sink._fill(out, 5, None, None)
    assert out[:, 0].tolist() == [6, 7, 0, 0, 0]


def test_adapt_steps_the_microphone_down_when_the_moderator_reports_heavy_loss(homes) -> None:
    """The moderator's beacons say it loses 40 % of packets: `talk --mic --adapt` speaks its
    live over one codec step down (1300), and the listener verifies it in that mode."""
    from relay.cli.talk import _talk

    fake_sd = fake_sounddevice(read_audio(SAMPLE))
    url = "sim://mic-adapt?preset=SHORT_TURBO"

    async def scenario() -> tuple[dict, list]:
        heard = SpeakerPlayout(SpeakerSink(types.SimpleNamespace(OutputStream=FakeOutput)))
        mod_home, ana_home, ben_home = (Home(homes[n]) for n in ("mod", "ana", "ben"))
        async with (
            open_member(mod_home, "market", url) as mod,
            open_member(ben_home, "market", url, playout=heard),
        ):
            mod.room.heard_loss = 0.4  # carried in every beacon the moderator sends
            stop = asyncio.Event()
            moderating = asyncio.create_task(mod.node.moderate(auto_grant=20, stop=stop))
            report = await _talk(ana_home, "market", url, None, fake_sd, 1.0, True, 10.0,
                                 fec=True, dtx=False, adapt=True)  # fmt: skip
            assert await heard.wait_overs(1, timeout=5)
            stop.set()
            await moderating
        return report, heard.overs

    report, (over,) = run(scenario(), virtual=True)
    assert report["granted"] and report["mode"] == "1300", report
    assert report["adapt"]["worst_loss"] >= 40
    assert over.mode.name == "1300" and over.verdict == "verified"


def test_an_introduction_is_remembered_at_once_not_only_on_exit(homes) -> None:
    """A member's HELLO is saved with the replay marks as it arrives: a listener killed -9
    right after still knows that member when it restarts (no second HELLO needed)."""
    from relay.store.replay import REPLAY_LABEL, ReplayStore

    url = "sim://intro-test?preset=SHORT_TURBO"

    async def scenario() -> tuple[bytes, str, list]:
        ana_home, ben_home = Home(homes["ana"]), Home(homes["ben"])
        async with (
            open_member(ben_home, "market", url) as ben,
            open_member(ana_home, "market", url) as ana,
        ):
            await ana.node.send(ana.room.introduce(ana.clock()))
            await ana.link.drain()
            await asyncio.sleep(0.5)
            key_id = ben.room.keys.key_id
            # Read what is on disk now, while ben runs (as if it were killed here).
            saved = ReplayStore(ben_home.replay_db, ben_home.unlock().sealer(REPLAY_LABEL))
            try:
                return ana.identity.identity, key_id, saved.load(key_id)
            finally:
                saved.close()

    ana_id, _, saved = run(scenario(), virtual=True)
    marks = {m.identity: m.highest for m in saved}
    assert ana_id in marks and marks[ana_id] >= 0


def test_listen_verified_only_flags_injected_words(tmp_path, capsys) -> None:
    """`relay listen --verified-only` (in-process, virtual time): a key holder injects a
    packet in the speaker's name mid-over; the listener flags it on stderr and in its JSON,
    and plays only what the speaker's live keys and seal verified."""
    from relay.cli.talk import _listen, _talk
    from relay.core.session import Sender
    from relay.links.url import open_link
    from relay.store.counters import MemoryCounters

    url = "sim://verified-only?preset=SHORT_TURBO&lbt=on"  # Eve waits for a clear channel
    homes = make_homes(tmp_path, "market")  # fresh: no sessions of earlier tests remembered

    async def scenario() -> tuple[dict, dict, int]:
        loop = asyncio.get_running_loop()
        mod_home, ana_home, ben_home = (Home(homes[n]) for n in ("mod", "ana", "ben"))
        async with open_member(mod_home, "market", url) as mod:
            stop = asyncio.Event()
            # A long grant: the room clock is the wall clock, which a loaded machine moves
            # further than this virtual-time over takes.
            moderating = asyncio.create_task(mod.node.moderate(auto_grant=120, stop=stop))
            listening = asyncio.create_task(
                _listen(ben_home, "market", url, None, 30.0, 1, None, True, verified_only=True)
            )
            await asyncio.sleep(0.5)
            talking = asyncio.create_task(
                _talk(ana_home, "market", url, PCM, None, None, True, 10.0, dtx=False)
            )
            while mod.room.floor is None:
                await asyncio.sleep(0.05)
            await asyncio.sleep(2.5)
            # The moderator's device holds the room key, like any member's: it forges.
            ana, session = mod.room.floor, mod.room.floor_session
            heard = mod.room.receiver._peers[ana].sessions[session]
            forger = Sender(mod.room.keys, ana, MemoryCounters(), session=session)
            forger._next, forger._limit = heard.window.highest + 2, heard.window.highest + 3
            position = heard.last_position + 3  # the speaker's packet after next (2 frames each)
            eve = open_link(url)
            await eve.send(forger.voice(mod.mode, position, [b"\x66" * 8] * 2, time.time()))
            said, heard = await talking, await listening
            await eve.close()
            stop.set()
            await moderating
        return said, heard, round(loop.time())

    said, heard, _ = run(scenario(), virtual=True)
    assert said["granted"] and said["live_bytes"] >= 2 * said["voice_packets"]
    assert heard["verified_only"] and heard["verified_packets"] >= said["voice_packets"] - 2, heard[
        "dropped"
    ]
    (over,) = heard["overs"]
    assert over["verdict"] == "forged" and len(heard["flagged"]) >= 1, (heard["dropped"], said)
    assert heard["audio_seconds"] > 5.0  # the speaker's verified words were played
    assert "FLAGGED: words the speaker did not say" in capsys.readouterr().err


def test_a_listener_stopped_mid_over_keeps_what_it_heard(homes, tmp_path) -> None:
    """Ctrl-C (SIGINT) or SIGTERM while a speaker is mid-over: the listener writes what it
    heard of the over to --out and reports it as cut short (before: the whole over was lost)."""
    long_speech = tmp_path / "long.wav"
    soundfile.write(str(long_speech), np.tile(read_audio(SAMPLE), 5), 8000)  # 8 s
    ether, url = start_ether("--preset", "SHORT_TURBO", "--lbt", log=tmp_path / "ether.log")
    procs: list[subprocess.Popen] = []
    try:
        mod = relay_proc(
            "moderate", "market", "--link", f"{url}?node=mod", "--auto-grant", "30",
            "--duration", "150", "--home", homes["mod"], out=tmp_path / "mod",
        )  # fmt: skip
        listeners = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            listeners[sig] = relay_proc(
                "listen", "market", "--link", f"{url}?node=l{int(sig)}", "--json",
                "--out", str(tmp_path / f"heard{int(sig)}.wav"), "--duration", "150",
                "--home", homes["ben"], out=tmp_path / f"l{int(sig)}",
            )  # fmt: skip
        procs += [mod, *listeners.values()]
        wait_for_text(tmp_path / "mod.err", "moderating 'market'")
        for sig in listeners:
            wait_for_text(tmp_path / f"l{int(sig)}.err", "listening to 'market'")
        talk = relay_proc(
            "talk", "market", "--link", f"{url}?node=ana", "--input", str(long_speech),
            "--no-dtx", "--timeout", "60", "--home", homes["ana"], out=tmp_path / "ana",
        )  # fmt: skip
        procs.append(talk)
        wait_for_text(tmp_path / "ana.err", "on air")  # the talker's first words go out now
        time.sleep(2.0)  # about 2 s of the 8 s over have been said
        for sig, proc in listeners.items():
            proc.send_signal(sig)
        for sig, proc in listeners.items():
            assert proc.wait(timeout=30) == 0, (tmp_path / f"l{int(sig)}.err").read_text()
            report = json.loads((tmp_path / f"l{int(sig)}.out").read_text())
            assert report["stopped"] == "interrupted"
            (over,) = report["overs"]
            assert over["cut_short"] and not over["complete"] and over["verdict"] == "unsigned"
            assert over["speaker"] == homes["ana_fp"]
            # what was said by the signal, give or take a loaded machine's stalls
            assert 0.5 <= over["seconds"] <= 6.0, over
            assert over["frames_concealed"] == 0, (over, (tmp_path / "ether.log").read_text())
            wav = tmp_path / f"heard{int(sig)}.wav"
            assert report["out"] == str(wav)
            assert soundfile.info(str(wav)).duration == pytest.approx(report["audio_seconds"])
            assert report["audio_seconds"] >= 0.5
    finally:
        stop_processes(procs, ether)


def _dead_port() -> int:
    from mosquitto import free_port

    return free_port()  # nothing listens there


@pytest.mark.parametrize(
    ("link", "match", "code"),
    [
        (lambda: f"kiss+tcp://127.0.0.1:{_dead_port()}", "no KISS TNC at 127.0.0.1", 1),
        (lambda: f"mqtt://127.0.0.1:{_dead_port()}", "cannot reach the MQTT broker", 1),
        (lambda: "mqtts://127.0.0.1:8883?ca=/no/such/ca.pem", "ca=/no/such/ca.pem", 2),
        (lambda: "sim://127.0.0.1:notaport", "port must be a number", 2),
    ],
    ids=["dead-kiss", "dead-mqtt", "missing-ca", "sim-typo"],
)
def test_listen_on_a_link_that_cannot_work_says_why_and_fails(homes, link, match, code) -> None:
    """Before: "heard 0 overs" and exit 0. Now one line naming the problem: 1 when the
    other end cannot be reached, 2 when the user's settings are wrong."""
    refused(
        "listen", "market", "--link", link(), "--duration", "5", "--home", homes["ben"],
        match=match, code=code,
    )  # fmt: skip


def test_listen_with_a_wrong_mqtt_password_is_refused(homes, tmp_path) -> None:
    from mosquitto import MOSQUITTO, Broker

    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    broker = Broker(tmp_path, users={"ben": "right-password"})
    broker.start()
    try:
        base = f"127.0.0.1:{broker.port}"
        for url in (f"mqtt://ben:wrong-password@{base}", f"mqtt://{base}"):
            refused(
                "listen", "market", "--link", url, "--duration", "5", "--home", homes["ben"],
                match="refused the login", code=2,
            )  # fmt: skip
            again = invoke("listen", "market", "--link", url, "--home", homes["ben"])
            assert "wrong-password" not in again.output + again.stderr + repr(again.exception)
        result = invoke(
            "listen", "market", "--link", f"mqtt://ben:right-password@{base}",
            "--duration", "0.5", "--json", "--home", homes["ben"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "right-password" not in result.output + result.stderr
    finally:
        broker.stop()


def test_listen_on_a_meshtastic_node_that_never_answers_fails(homes, monkeypatch) -> None:
    """A node that cannot be reached (nothing on the port, an unplugged radio) gets
    LINK_UP_TIMEOUT seconds; then the reason and exit code 1, not a silent room."""
    pytest.importorskip("meshtastic")
    import relay.runtime.member as member

    monkeypatch.setattr(member, "LINK_UP_TIMEOUT", 1.0)
    url = f"meshtastic+tcp://127.0.0.1:{_dead_port()}"
    result = invoke("listen", "market", "--link", url, "--duration", "5", "--home", homes["ben"])
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert "no connection to the node after 1 s: cannot reach the node" in last, last
    assert "Traceback" not in result.stderr
