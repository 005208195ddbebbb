"""The room session layer (relay.app.session): a moderator, a speaker and a listener sharing
one simulated channel in virtual time, driven only through snapshots and plain calls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from cli_helpers import make_homes, ok

from relay.app.audio import file_source, level
from relay.app.session import ACTIONS, RoomSession, open_session
from relay.demo.voice import bundled_sample
from relay.errors import UsageError
from relay.runtime.clock import run
from relay.store.contacts import Contacts
from relay.store.home import Home
from relay.voice.audio import read_audio

SHORT = read_audio(bundled_sample("forig.wav"))  # 1.58 s
LONG = read_audio(bundled_sample("hts1.wav"))  # 6 s


@pytest.fixture
def homes(tmp_path) -> dict[str, str]:
    """Fresh homes per test: removing a member changes the room for good."""
    people = make_homes(tmp_path, "market")
    ana = json.loads(ok("id", "show", "--home", people["ana"], "--json").stdout)
    Contacts(Home(people["mod"])).add("Ana", ana["public_id"])  # by public id
    Contacts(Home(people["mod"])).add("Ben", people["ben_fp"])  # by fingerprint only
    return people


def room_clock():
    loop = asyncio.get_running_loop()
    epoch = time.time() - loop.time()
    return lambda: epoch + loop.time()


async def until(check, timeout: float = 30.0, step: float = 0.05) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(step)


def heard_frames(session: RoomSession, speaker: bytes) -> int:
    overs = [*session.playout.overs, *session.playout.live_overs()]
    return sum(len(o.pcm) for o in overs if o.sender == speaker)


@contextlib.asynccontextmanager
async def three(homes, url: str, source, *, ben_listen_only: bool = True):
    clock = room_clock()
    h = {n: Home(homes[n]) for n in ("mod", "ana", "ben")}
    async with (
        open_session(h["mod"], "market", url, clock=clock) as mod,
        open_session(h["ben"], "market", url, clock=clock, listen_only=ben_listen_only) as ben,
        open_session(h["ana"], "market", url, clock=clock, source=source) as ana,
    ):
        yield mod, ana, ben


def test_hand_grant_speech_verdict_and_names(homes) -> None:
    async def scenario():
        async with three(homes, "sim://s1?preset=SHORT_TURBO&lbt=on", file_source(SHORT)) as (
            mod,
            ana,
            ben,
        ):
            me = mod.snapshot()
            assert me.moderator and me.me.me and me.floor.holder is None
            with pytest.raises(UsageError, match="do not hold the floor"):
                await ana.ptt_start()
            assert await ana.raise_hand() == "hand raised"
            await until(lambda: mod.snapshot().hands)
            await asyncio.sleep(2.0)
            (hand,) = mod.snapshot().hands
            assert hand.member.name == "Ana" and hand.member.contact and hand.waiting >= 2.0
            assert mod.resolve("ana") == ana.me  # contact names fold case
            assert "granted the floor to Ana" in await mod.grant()  # the first hand
            await until(lambda: ana.snapshot().floor.mine)
            await until(lambda: not ana.hand_raised)
            assert ana.snapshot().floor.left > 50
            assert await ana.ptt_start() == "talking"
            levels = []
            while ana.talking:
                levels.append(ana.snapshot().level)
                await asyncio.sleep(0.1)
            (mine,) = ana.snapshot().overs
            assert mine.verdict == "sent" and mine.speaker.me and abs(mine.seconds - 1.6) < 0.1
            await until(lambda: ben.snapshot().overs)
            (over,) = ben.snapshot().overs
            assert over.verdict == "verified" and abs(over.seconds - 1.6) < 0.1
            assert over.speaker.name == ana.snapshot().me.short  # ben has no contacts
            await until(lambda: mod.snapshot().overs)
            assert mod.snapshot().overs[0].speaker.name == "Ana"
            assert abs(len(ben.heard_audio()) / 8000 - 1.6) < 0.1
            snap = mod.snapshot()
            names = {m.name for m in snap.members}
            assert {"Ana", "Ben"} <= names  # Ben by fingerprint: enrolled on mod's roster
            assert snap.link.airtime_used > 0 and snap.link.radio == "SHORT_TURBO"
            assert 0 < snap.link.airtime_used < snap.link.airtime_budget
            json.dumps(snap.to_dict())  # what a web gateway would send
            assert max(levels) > 0.3
            assert any("over by Ana: verified" in line.text for line in snap.log)
            return ben.member.link.stats.sent

    sent_by_listener = run(scenario(), virtual=True)
    assert sent_by_listener == 0  # --listen-only: the radio stayed silent


def test_mute_mid_over_then_remove_rotates_the_key(homes) -> None:
    async def scenario():
        async with three(homes, "sim://s2?preset=SHORT_TURBO&lbt=on", file_source(LONG)) as (
            mod,
            ana,
            ben,
        ):
            with pytest.raises(UsageError, match="listen-only"):
                await ben.raise_hand()
            await ana.raise_hand()
            await until(lambda: mod.room.next_hand() is not None)
            await mod.grant("Ana", 30)
            await until(lambda: ana.snapshot().floor.mine)
            await ana.ptt_start()
            await until(lambda: heard_frames(ben, ana.me) > 50)  # 2 s of 6 heard
            assert ben.snapshot().floor.holder.speaking
            assert "muted Ana" in await mod.mute("ana")
            await until(lambda: ben._muted(ana.me), timeout=8)  # by the action or a beacon
            at_mute = heard_frames(ben, ana.me)
            await until(lambda: not ana.talking, timeout=5)  # the talker stops by itself
            await asyncio.sleep(3.0)
            assert heard_frames(ben, ana.me) == at_mute < 150  # not one frame more
            assert heard_frames(mod, ana.me) < 150
            assert ana.snapshot().me.muted
            await until(lambda: ben.snapshot().overs)  # the muted speaker's seal
            (cut,) = ben.snapshot().overs
            assert cut.cut and cut.speaker.muted
            with pytest.raises(UsageError, match="muted"):
                await ana.ptt_start()
            with pytest.raises(UsageError, match="already muted"):
                await mod.mute("ana")
            await mod.mute("ana", unmute=True)
            await until(lambda: ana.me not in ana.room.muted, timeout=5)

            epochs = (mod.room.epoch, ana.room.epoch, ben.room.epoch)
            assert "removed Ben" in await mod.remove("ben")
            await until(lambda: ben.me in ben.room.removed, timeout=5)
            await until(lambda: ana.room.epoch == epochs[1] + 1, timeout=5)
            assert mod.room.epoch == epochs[0] + 1 and ben.room.epoch == epochs[2]
            assert ben.snapshot().me.removed
            assert any("you were removed" in line.text for line in ben.snapshot().log)
            rosters = mod.member.rooms.roster(mod.member.info.room_id)
            assert ben.me not in {p.identity for p in rosters}  # never gets a key again
            with pytest.raises(UsageError, match="already removed"):
                await mod.remove("ben")

    run(scenario(), virtual=True)


def test_actions_refused_with_reasons(homes) -> None:
    async def scenario():
        async with three(
            homes, "sim://s3?preset=SHORT_TURBO&lbt=on", None, ben_listen_only=False
        ) as (mod, ana, ben):
            with pytest.raises(UsageError, match="only a moderator"):
                await ana.mute("ben")
            with pytest.raises(UsageError, match="nothing to talk with"):
                await ana.ptt_start()
            with pytest.raises(UsageError, match="no hand is raised"):
                await mod.grant()
            with pytest.raises(UsageError, match="nobody holds the floor"):
                await mod.revoke()
            with pytest.raises(UsageError, match="no member 'zzzz'"):
                mod.resolve("zzzz")
            with pytest.raises(UsageError, match="too short"):
                mod.resolve("ab")
            with pytest.raises(UsageError, match="unknown action"):
                await mod.act("shout")
            with pytest.raises(UsageError, match="cannot remove yourself"):
                await mod.remove(mod.me.hex())
            assert set(ACTIONS) >= {"grant", "mute", "remove", "appoint"}
            # A listener who may transmit raises a hand; the moderator appoints them.
            await ben.raise_hand()
            await until(lambda: mod.room.next_hand() is not None)
            assert "appointed Ben" in await mod.act("appoint", "Ben")
            await until(lambda: ben.snapshot().me.moderator, timeout=5)
            assert await ben.lower_hand() in ("hand lowered", "your hand is not up")

    run(scenario(), virtual=True)


def test_level_meter_scale() -> None:
    import numpy as np

    assert level(np.zeros(160, np.int16)) == 0.0
    assert level(np.full(160, 32767, np.int16)) == pytest.approx(1.0, abs=0.01)
    assert 0.4 < level((np.sin(np.arange(160)) * 1000).astype(np.int16)) < 0.6


def test_console_sound_card_path_microphone_to_speaker(homes, monkeypatch) -> None:
    """The console's devices with sounddevice faked: the speaker talks from the microphone,
    the listener's speaker plays every frame it heard; without a sound card it says so."""
    from test_cli_talk import FakeOutput
    from test_live_voice import fake_sounddevice

    import relay.voice.device as device
    from relay.cli.console import _devices
    from relay.voice.device import SpeakerPlayout

    monkeypatch.setattr(device, "require_sounddevice", lambda flag: fake_sd)
    fake_sd = fake_sounddevice(SHORT, FakeOutput)
    mic, _, warnings = _devices(False, None, out_path=object())
    _, speaker, _ = _devices(True, None, out_path=None)
    assert mic is not None and speaker is not None and not warnings

    async def scenario():
        clock = room_clock()
        h = {n: Home(homes[n]) for n in ("mod", "ana", "ben")}
        heard = SpeakerPlayout(speaker)
        url = "sim://snd?preset=SHORT_TURBO&lbt=on"
        async with (
            open_session(h["mod"], "market", url, clock=clock) as mod,
            open_session(
                h["ben"], "market", "sim://snd", clock=clock, listen_only=True, playout=heard
            ) as ben,
            open_session(h["ana"], "market", "sim://snd", clock=clock, source=mic) as ana,
        ):
            await ana.raise_hand()
            await until(lambda: mod.room.next_hand() is not None)
            await mod.grant()
            await until(lambda: ana.room.holds_floor(ana.clock()))
            await ana.ptt_start()
            await asyncio.sleep(1.0)
            await ana.ptt_stop()
            await until(lambda: ben.snapshot().overs)
            return ben.snapshot().overs[0], sum(len(p) for o in heard.overs for p in o.pcm)

    over, played = run(scenario(), virtual=True)
    assert over.verdict == "verified" and 0.9 <= over.seconds <= 1.3
    assert sum(len(chunk) for chunk in speaker._chunks) == played > 7000  # all of it played

    def no_card(flag: str):
        raise UsageError(f"{flag} needs the optional sounddevice package")

    monkeypatch.setattr(device, "require_sounddevice", no_card)
    source, sink, warnings = _devices(False, None, out_path=None)
    assert source is None and sink is None
    assert "talk with --input FILE, hear with --out FILE" in warnings[0]
