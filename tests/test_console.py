"""`relay console` driven by textual's pilot: keys in, screen state out.

A moderator, a speaker and a listener share one simulated channel (in-process, SHORT_TURBO
with listen-before-talk, real time: a few seconds). Then `relay mod` from a second process
acts through a running moderator's console, and the real `relay console` runs in tmux.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import (
    ENV,
    make_homes,
    ok,
    refused,
    relay_proc,
    start_ether,
    stop_processes,
    wait_for_text,
    wait_until,
)
from textual.widgets import DataTable, Log, Static

from relay.app.audio import file_source
from relay.app.session import RoomSession, open_session
from relay.console.app import ConsoleApp
from relay.demo.voice import bundled_sample
from relay.store.contacts import Contacts
from relay.store.home import Home
from relay.voice.audio import read_audio

LONG = np.concatenate([read_audio(bundled_sample(f"hts{i}.wav")) for i in (1, 2)])  # 12 s
FRAMES = 300  # of Codec2 1600
SIZE = (110, 40)


@pytest.fixture
def homes(tmp_path) -> dict[str, str]:
    people = make_homes(tmp_path, "market")
    for who in ("ana", "ben"):
        public = json.loads(ok("id", "show", "--home", people[who], "--json").stdout)
        Contacts(Home(people["mod"])).add(who.title(), public["public_id"])
    return people


def text(app: ConsoleApp, selector: str) -> str:
    """What a Static shows on screen now."""
    return str(app.query_one(selector, Static).render())


def rows(app: ConsoleApp, table: str) -> list[list[str]]:
    t = app.query_one(f"#{table}", DataTable)
    return [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]


def screen_rows(app: ConsoleApp, table: str) -> str:
    return " ".join(" ".join(row) for row in rows(app, table))


def log_text(app: ConsoleApp) -> str:
    return "\n".join(app.query_one("#log", Log).lines)


def heard_frames(session: RoomSession, speaker: bytes) -> int:
    overs = [*session.playout.overs, *session.playout.live_overs()]
    return sum(len(o.pcm) for o in overs if o.sender == speaker)


async def until(check, timeout: float = 30.0, why=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition never held {why()}")
        await asyncio.sleep(0.05)


async def select_member(pilot, app: ConsoleApp, name: str) -> None:
    """Focus the member list and put the cursor on ``name``'s row, with keys."""
    table = app.query_one("#members", DataTable)
    table.focus()
    await pilot.pause()
    names = [r[0] for r in rows(app, "members")]
    await pilot.press("home", *["down"] * names.index(name))
    assert app.selected() == app.session.resolve(name).hex()


def test_console_moderator_speaker_listener(homes) -> None:
    async def scenario() -> None:
        url = "sim://console?preset=SHORT_TURBO&lbt=on"
        h = {n: Home(homes[n]) for n in ("mod", "ana", "ben")}
        async with (
            open_session(h["mod"], "market", url) as mod,
            open_session(h["ben"], "market", url, listen_only=True) as ben,
            open_session(h["ana"], "market", url, source=file_source(LONG)) as ana,
        ):
            apps = ConsoleApp(mod), ConsoleApp(ana), ConsoleApp(ben)
            async with (
                apps[0].run_test(size=SIZE) as mp,
                apps[1].run_test(size=SIZE) as ap,
                apps[2].run_test(size=SIZE) as bp,
            ):
                mod_app, ana_app, ben_app = apps
                # Keys in the footer: moderators see theirs; a listener's radio stays silent.
                assert mod_app.check_action("mute", ()) and not ana_app.check_action("mute", ())
                assert not ben_app.check_action("ptt", ())
                assert not ben_app.check_action("hand", ())

                await ap.press("h")  # hand up
                await until(lambda: rows(mod_app, "hands"))
                assert rows(mod_app, "hands")[0][0] == "Ana"  # the contact's name
                assert "HANDS (1)" in str(mod_app.query_one("#hands-label").render())
                await mp.press("g")  # grant the selected hand
                await until(lambda: "(you)" in text(ana_app, "#floor"))  # ana has no contacts
                await until(lambda: "Ana" in text(mod_app, "#floor"))

                await ap.press("space")  # push to talk
                await until(lambda: ana.talking)
                await until(lambda: heard_frames(ben, ana.me) > 40)  # speech heard
                await until(lambda: "speaking" in text(ben_app, "#floor"))
                assert "● ON AIR" in text(ana_app, "#floor")
                assert "(you)" in text(ana_app, "#level") and "█" in text(ana_app, "#level")

                await select_member(mp, mod_app, "Ana")
                await mp.press("m")  # mute mid-over
                await until(
                    lambda: ben._muted(ana.me),
                    timeout=8,
                    why=lambda: (ben.member.link.stats, ben.node.log.dropped, ana.talking),
                )
                at_mute = heard_frames(ben, ana.me)
                await until(lambda: not ana.talking, timeout=5)
                await asyncio.sleep(1.5)
                assert heard_frames(ben, ana.me) == at_mute < FRAMES - 50  # nothing more played
                await until(lambda: "MUTED" in screen_rows(ben_app, "members"))
                assert "muted Ana" in text(mod_app, "#status")
                await ap.press("space")
                await until(lambda: "muted you" in text(ana_app, "#status"))

                epochs = mod.room.epoch, ana.room.epoch, ben.room.epoch
                await select_member(mp, mod_app, "Ben")
                await mp.press("x")  # remove: asks first
                await mp.pause()
                assert "Remove Ben from the room?" in str(
                    mod_app.screen.query_one("#confirm", Static).render()
                )
                await mp.press("n")
                await mp.pause()
                assert mod.room.epoch == epochs[0] and "kept Ben" in text(mod_app, "#status")
                await mp.press("x")
                await mp.pause()
                await mp.press("y")
                await until(lambda: ana.room.epoch == epochs[1] + 1)  # the key rotates
                assert mod.room.epoch == epochs[0] + 1 and ben.room.epoch == epochs[2]
                await until(lambda: "you were removed" in log_text(ben_app))
                await until(lambda: "key epoch 1" in text(ana_app, "#top"))
                await until(lambda: "REMOVED" in screen_rows(mod_app, "members"))
                for app, pilot in zip(apps, (mp, ap, bp), strict=True):
                    await pilot.press("q")
                    await pilot.pause()
                    assert not app.is_running
            assert ben.member.link.stats.sent == 0  # --listen-only transmitted nothing

    asyncio.run(scenario())


def test_relay_mod_reaches_a_running_console(homes) -> None:
    """`relay mod grant` then `relay mod mute` from other processes act through the console."""

    async def relay_mod(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "mod", *args, "--home", homes["mod"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
        )  # fmt: skip
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(), err.decode()

    async def scenario() -> None:
        url = "sim://modsock?preset=SHORT_TURBO&lbt=on"
        h = {n: Home(homes[n]) for n in ("mod", "ana", "ben")}
        code, _, err = await relay_mod("mute", "market", "Ana")
        assert code == 3 and "no moderator of 'market' is running" in err
        from relay.app.control import control_path, serve_moderation

        async with (
            open_session(h["mod"], "market", url) as mod,
            open_session(h["ben"], "market", url, listen_only=True) as ben,
            open_session(h["ana"], "market", url, source=file_source(LONG)) as ana,
        ):
            control = await serve_moderation(h["mod"], mod)
            assert control is not None
            path = control_path(h["mod"], mod.member.info.room_id)
            assert path.stat().st_mode & 0o777 == 0o600
            assert path.parent.stat().st_mode & 0o777 == 0o700
            app = ConsoleApp(mod)
            async with app.run_test(size=SIZE) as pilot:
                await ana.raise_hand()
                await until(lambda: rows(app, "hands"))
                code, out, err = await relay_mod("grant", "market", "ana", "--seconds", "30")
                assert code == 0 and "granted the floor to Ana for 30 s" in out, err
                await until(lambda: ana.snapshot().floor.mine)
                await ana.ptt_start()
                await until(lambda: heard_frames(ben, ana.me) > 40)
                code, out, err = await relay_mod("mute", "market", "Ana")
                assert code == 0 and out.strip() == "muted Ana", err
                await until(lambda: ben._muted(ana.me), timeout=8)  # by the action or a beacon
                at_mute = heard_frames(ben, ana.me)
                await asyncio.sleep(1.5)
                assert heard_frames(ben, ana.me) == at_mute < FRAMES - 50
                await until(lambda: "MUTED" in screen_rows(app, "members"))
                code, _, err = await relay_mod("mute", "market", "Ana")
                assert code == 2 and "already muted" in err
                code, _, err = await relay_mod("remove", "market", "nobody-here")
                assert code == 2 and "no member 'nobody-here'" in err
                await pilot.press("q")
            await control.close()
            assert not path.exists()

    asyncio.run(scenario())


def test_relay_moderate_without_auto_grant_grants_through_relay_mod(homes, tmp_path) -> None:
    """`relay moderate` shows the hand with a hint; `relay mod grant` from another process
    gives the floor; `relay talk` then speaks; `relay mod` says so when none runs."""
    # --lbt: the verdict wants every packet, whenever the OS runs each process (start_ether).
    ether, url = start_ether("--preset", "SHORT_TURBO", "--lbt", log=tmp_path / "ether.log")
    procs: list[subprocess.Popen] = []
    try:
        mod = relay_proc(
            "moderate", "market", "--link", f"{url}?node=mod", "--duration", "150",
            "--home", homes["mod"], out=tmp_path / "mod",
        )  # fmt: skip
        procs.append(mod)
        wait_for_text(tmp_path / "mod.err", "hands are shown, not granted")
        talk = relay_proc(
            "talk", "market", "--link", f"{url}?node=ana", "--input",
            str(bundled_sample("forig.wav")), "--timeout", "90", "--json",
            "--home", homes["ana"], out=tmp_path / "ana",
        )  # fmt: skip
        procs.append(talk)
        shown = wait_for_text(tmp_path / "mod.out", r"hand raised: .*grant it: relay mod grant")
        assert f"hand raised: {homes['ana_fp']}" in shown
        hint = re.search(r"\(grant it: (relay mod grant market \S+)\)", shown).group(1)  # type: ignore[union-attr]
        granted = subprocess.run(
            [sys.executable, "-m", *hint.split(), "--home", homes["mod"]],
            capture_output=True, text=True, timeout=60, env=ENV,
        )  # fmt: skip
        assert granted.returncode == 0, granted.stderr
        assert granted.stdout.startswith("granted the floor to Ana")  # mod's contact
        assert talk.wait(timeout=60) == 0, (tmp_path / "ana.err").read_text()
        said = json.loads((tmp_path / "ana.out").read_text())
        assert said["granted"] and said["frames_sent"] == 40
        wait_for_text(tmp_path / "mod.out", "over ended: .* verified")
        assert "mod: granted the floor" in (tmp_path / "mod.out").read_text()
        mod.send_signal(signal.SIGINT)
        assert mod.wait(timeout=30) == 0
        gone = subprocess.run(
            [sys.executable, "-m", "relay", "mod", "revoke", "market", "--home", homes["mod"]],
            capture_output=True, text=True, timeout=60, env=ENV,
        )  # fmt: skip
        assert gone.returncode == 3 and "no moderator of 'market' is running" in gone.stderr
    finally:
        stop_processes(procs, ether)


def test_mod_and_contacts_commands_refuse_bad_input(homes, tmp_path) -> None:
    refused("mod", "mute", "market", "--home", homes["mod"], match="needs a MEMBER")
    refused("mod", "revoke", "market", "ana", "--home", homes["mod"], match="takes no MEMBER")
    refused("mod", "mute", "nope", "ana", "--home", homes["mod"], match="no room 'nope'")
    refused("mod", "mute", "x", "ana", "--home", str(tmp_path / "empty"), match="no room")
    refused("contacts", "add", "x", "not-an-id", "--home", homes["ben"], match="public id")
    refused("contacts", "add", "", homes["ana_fp"], "--home", homes["ben"], match="empty")
    refused("contacts", "add", "a\x1b[2J", homes["ana_fp"], "--home", homes["ben"],
            match="printable")  # fmt: skip
    refused("contacts", "remove", "zed", "--home", homes["ben"], match="no contact 'zed'")
    empty = tmp_path / "fresh"
    assert "no contacts yet" in ok("contacts", "list", "--home", str(empty)).stdout
    assert not empty.exists()  # a read-only command creates nothing
    ok("contacts", "add", "Ana K", homes["ana_fp"], "--home", homes["ben"])
    refused("contacts", "add", "ana k", homes["ana_fp"], "--home", homes["ben"],
            match="already a contact")  # fmt: skip
    listed = json.loads(ok("contacts", "list", "--json", "--home", homes["ben"]).stdout)
    assert listed["contacts"][0]["name"] == "Ana K"
    assert (Path(homes["ben"]) / "contacts.db").stat().st_mode & 0o777 == 0o600
    ok("contacts", "remove", "ana k", "--home", homes["ben"])
    refused("console", "market", "--link", "bogus://x", "--home", homes["mod"],
            match="unknown link scheme")  # fmt: skip
    refused("console", "nope", "--link", "sim://x", "--home", homes["mod"], match="no room")
    refused("console", "market", "--link", "sim://127.0.0.1:1", "--home", homes["mod"],
            match="no ether at 127.0.0.1:1")  # fmt: skip
    refused("console", "market", "--link", "sim://x", "--home", homes["mod"],
            match="draws on a terminal and this is not one")  # fmt: skip
    refused("console", "market", "--link", "sim://x", "--out", str(tmp_path / "no" / "a.wav"),
            "--home", homes["mod"], match="does not exist")  # fmt: skip


TMUX = shutil.which("tmux")


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_console_in_tmux(homes, tmp_path) -> None:
    """The real `relay console` in a terminal: it draws, takes keys and quits cleanly."""
    ether, url = start_ether("--preset", "SHORT_TURBO", log=tmp_path / "ether.log")
    session = f"relay-console-{os.getpid()}"
    tmux = [TMUX, "-L", session]  # a private tmux server: nothing else is touched
    try:
        wav = tmp_path / "heard.wav"
        command = " ".join(
            [
                sys.executable, "-m", "relay", "console", "market", "--link", url,
                "--home", homes["mod"], "--out", str(wav),
            ]
        )  # fmt: skip
        env = [f"-e{k}={v}" for k, v in ENV.items() if k in ("PATH", "PYTHONPATH", "HOME")]
        subprocess.run(
            [*tmux, "new-session", "-d", "-s", session, "-x", "110", "-y", "36", *env,
             f"{command}; sleep 30"],
            check=True, env=ENV,
        )  # fmt: skip

        def screen() -> str:
            return subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session],
                capture_output=True, text=True, env=ENV,
            ).stdout  # fmt: skip

        wait_until(lambda: "Quit" in screen(), "the console's footer (drawn last)")
        shown = screen()
        assert "relay console · market" in shown and "(moderator)" in shown, shown
        assert "FLOOR  free" in shown and "MEMBERS (3)" in shown and "Ana" in shown, shown
        assert "LINK  SHORT_TURBO up · loss n/a" in shown, shown
        assert "q Quit" in shown and "g Grant" in shown and "x Remove" in shown, shown  # footer
        (tmp_path / "console.txt").write_text(shown)
        subprocess.run([*tmux, "send-keys", "-t", session, "r"], check=True, env=ENV)
        wait_until(lambda: "nobody holds the floor" in screen(), "the floor released")
        subprocess.run([*tmux, "send-keys", "-t", session, "q"], check=True, env=ENV)
        # textual draws on stderr, then gives it back
        wait_until(lambda: "left 'market'" in screen(), "the console to quit")
        assert "relay: left 'market': heard 0 overs" in screen()
        assert not wav.exists()  # nothing heard, nothing written
    finally:
        with contextlib.suppress(Exception):
            subprocess.run([*tmux, "kill-server"], env=ENV, timeout=10)
        stop_processes([], ether)


def test_hold_to_talk_and_the_moderator_takes_a_free_floor(homes, monkeypatch) -> None:
    """--ptt hold: talking lasts while space repeats and stops soon after the last repeat;
    a moderator's space takes a free floor."""
    import relay.console.app as console_app

    # The grace is wall time, and a pilot's key press on a loaded machine can take longer
    # than the real 0.8 s: with 1.5 s, repeats every 0.1 s still hold the key there.
    monkeypatch.setattr(console_app, "HOLD_GRACE", 1.5)

    async def scenario() -> None:
        url = "sim://hold?preset=SHORT_TURBO"
        async with open_session(Home(homes["mod"]), "market", url, source=file_source(LONG)) as s:
            app = ConsoleApp(s, ptt="hold")
            async with app.run_test(size=SIZE) as pilot:
                await pilot.press("space")
                await until(lambda: s.talking)
                assert s.room.floor == s.me  # granted itself
                for _ in range(12):  # key repeat, every 0.1 s
                    await asyncio.sleep(0.1)
                    await pilot.press("space")
                    assert s.talking
                released = time.monotonic()
                await until(lambda: not s.talking, timeout=15)
                # the grace, not the rest of the 12 s file (slack for a loaded machine)
                assert time.monotonic() - released < 1.5 + 3.0
                await until(lambda: "over sealed" in log_text(app))
                await pilot.press("q")

    asyncio.run(scenario())


def test_a_relay_notice_shows_on_screen(homes) -> None:
    """A bridge's notice about this room reaches the snapshot, the log and the LINK panel."""
    from relay.core.crypto import hint_epoch
    from relay.core.identity import Identity
    from relay.core.notice import NoticeReason, RelayNotice, build_notice
    from relay.links.url import open_link

    async def scenario() -> None:
        url = "sim://notice?preset=SHORT_TURBO"
        async with open_session(Home(homes["ben"]), "market", url, listen_only=True) as s:
            bridge = Identity.generate()
            now = s.clock()
            notice = RelayNotice(
                reason=NoticeReason.AIRTIME,
                hint=s.room.keys.hint(hint_epoch(now)),
                speaker=0xBEEF,
                first_counter=7,
                packets=25,
                issued_at=int(now),
                relay=bridge.public,
            )
            radio = open_link(f"{url}&node=bridge")
            app = ConsoleApp(s)
            async with app.run_test(size=SIZE) as pilot:
                await radio.send(build_notice(bridge, notice))
                await until(lambda: s.snapshot().notices)
                assert s.snapshot().notices == (notice.text,)
                await until(lambda: "NOTICE  relay" in text(app, "#health"))
                assert f"relay notice: {notice.text}" in log_text(app)
                await pilot.press("q")
            await radio.close()

    asyncio.run(scenario())
