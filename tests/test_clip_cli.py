"""`relay clip`: commands, their mistakes, and kill -9 of sender and receiver mid-transfer
across real processes sharing one `relay ether` channel."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from cli_helpers import (
    make_homes,
    ok,
    refused,
    relay_proc,
    start_ether,
    stop_processes,
    wait_for_text,
    wait_until,
)

from relay.runtime.clip import clip_store
from relay.store.clips import ClipStore
from relay.store.home import Home


def speech_file(path: Path, seconds: float, seed: int = 0) -> Path:
    """A voice-like test signal: a wobbling tone with noise (Codec2 needs no real words)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 8000)) / 8000
    x = 0.3 * np.sin(2 * np.pi * (180 + 40 * np.sin(2 * np.pi * 3 * t)) * t)
    x += 0.02 * rng.standard_normal(len(t))
    soundfile.write(path, x, 8000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def homes(tmp_path_factory) -> dict[str, str]:
    """A moderator with room `net` (SHORT_TURBO), members ana and ben enrolled --for."""
    return make_homes(tmp_path_factory.mktemp("clip-homes"), "net")


def count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=5) as conn:
        try:
            return conn.execute(sql).fetchone()[0]
        except sqlite3.OperationalError:
            return 0


# Real processes on a real-time channel: generous limits so a loaded machine is slow, not red.
@pytest.mark.timeout(420)
def test_kill_9_of_receiver_and_sender_mid_transfer_loses_nothing(homes, tmp_path) -> None:
    """Ben starts receiving; ana sends 30 s of speech. Ben is killed -9 with some pieces
    stored, then ana is killed -9 with the transfer under way. Both restart: the transfer
    resumes (ana re-runs the same command: it resumes rather than sending twice), the
    message arrives once and plays."""
    wav = speech_file(tmp_path / "say.wav", 30.0)
    ether, url = start_ether(
        "--preset", "SHORT_TURBO", "--loss", "0.1", "--seed", "4", log=tmp_path / "ether.log"
    )
    ben_db = Path(homes["ben"]) / "clips.db"
    ana_db = Path(homes["ana"]) / "clips.db"
    procs: list[subprocess.Popen] = []

    def receive(tag: str) -> subprocess.Popen:
        p = relay_proc(
            "clip", "receive", "net", "--link", f"{url}?node=ben", "--count", "1",
            "--duration", "200", "--json", "--home", homes["ben"], out=tmp_path / tag,
        )  # fmt: skip
        procs.append(p)
        return p

    def send(tag: str) -> subprocess.Popen:
        p = relay_proc(
            "clip", "send", "net", str(wav), "--link", f"{url}?node=ana", "--mode", "1600",
            "--timeout", "150", "--json", "--home", homes["ana"], out=tmp_path / tag,
        )  # fmt: skip
        procs.append(p)
        return p

    try:
        ben = receive("ben1")
        wait_for_text(tmp_path / "ben1.err", "collecting")
        ana = send("ana1")
        pieces = "SELECT COUNT(*) FROM inbox_pieces"
        wait_until(lambda: count(ben_db, pieces) >= 5, "ben to store some pieces")
        ben.send_signal(signal.SIGKILL)
        ben.wait()
        held = count(ben_db, pieces)
        assert 5 <= held < 30  # 30 s of 1600 is 29 pieces of 210 B
        ben = receive("ben2")
        # Ana is killed once ben's acks show progress past what ben held before his crash.
        acks = "SELECT COUNT(*) FROM outbox_acks"
        wait_until(lambda: count(ana_db, acks) >= 1, "ana to hear an ack")
        ana.send_signal(signal.SIGKILL)
        ana.wait()
        assert count(ana_db, "SELECT COUNT(*) FROM outbox WHERE state = 'sending'") == 1
        ana = send("ana2")
        assert ana.wait(timeout=170) == 0, (tmp_path / "ana2.err").read_text()
        sent = json.loads((tmp_path / "ana2.out").read_text())
        (msg,) = sent["messages"]
        assert msg["delivered"] and msg["resumed"]
        assert ben.wait(timeout=30) == 0, (tmp_path / "ben2.err").read_text()
        got = json.loads((tmp_path / "ben2.out").read_text())
        assert [m["id"] for m in got["received"]] == [msg["msg_id"]]
        assert got["received"][0]["from"] == homes["ana_fp"]
    finally:
        stop_processes(procs, ether)
    # Exactly once in the inbox; nothing partial left; it plays.
    with clip_store(Home(homes["ben"])) as store:  # sealed under ben's keys
        (clip,) = store.inbox()
        assert store.partials(clip.room_id) == []
    assert clip.id == msg["msg_id"]
    out = tmp_path / "heard.wav"
    played = json.loads(ok("clip", "play", clip.id[:4], "--out", str(out), "--json",
                           "--home", homes["ben"]).stdout)  # fmt: skip
    assert abs(soundfile.info(str(out)).duration - 30.0) < 0.1 and played["id"] == clip.id
    listing = json.loads(ok("clip", "inbox", "net", "--json", "--home", homes["ben"]).stdout)
    assert [m["id"] for m in listing["messages"]] == [clip.id]
    assert listing["messages"][0]["from"] == homes["ana_fp"]
    erased = json.loads(ok("clip", "delete", clip.id[:6], "--json", "--home", homes["ben"]).stdout)
    assert erased == {"id": clip.id, "erased": True}
    listing = json.loads(ok("clip", "inbox", "net", "--json", "--home", homes["ben"]).stdout)
    assert listing["messages"] == []
    assert (os.stat(ben_db).st_mode & 0o777) == 0o600
    # The sender's outbox has nothing pending any more.
    assert (
        json.loads(ok("clip", "inbox", "net", "--json", "--home", homes["ana"]).stdout)[
            "outbox_pending"
        ]
        == 0
    )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["clip", "send", "nowhere", "x.wav", "--link", "sim://x"], "nowhere"),
        (["clip", "send", "net", "--link", "sim://x"], "exactly one of FILE"),
        (["clip", "send", "net", "missing.wav", "--link", "sim://x"], "no such audio file"),
        (["clip", "inbox", "nowhere"], "nowhere"),
        (["clip", "play", "zz", "--out", "x.wav"], "not a voice-message id"),
        (["clip", "play", "abcd", "--out", "/nonexistent-dir/x.wav"], "does not exist"),
        (["clip", "play", "abcd"], "exactly one of --out"),
        (["clip", "delete", "zz"], "not a voice-message id"),
        (["clip", "receive", "nowhere", "--link", "sim://x"], "nowhere"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(homes, args, match) -> None:
    refused(*args, "--home", homes["ana"], match=match)


def test_odd_audio_oversized_unknown_id_and_full_disk(homes, tmp_path, monkeypatch) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio" * 10)
    refused("clip", "send", "net", str(junk), "--link", "sim://odd", "--home", homes["ana"],
            match="not an audio file")  # fmt: skip
    long = speech_file(tmp_path / "long.wav", 20.0)
    refused("clip", "send", "net", str(long), "--link", "sim://big?preset=SHORT_TURBO",
            "--max-bytes", "1000", "--home", homes["ana"],
            match="exceeds the limit of 1000 B")  # fmt: skip
    ok("clip", "inbox", "net", "--home", homes["mod"])  # creates an empty store
    refused("clip", "play", "abcdef", "--out", str(tmp_path / "x.wav"), "--home", homes["mod"],
            match="no voice message 'abcdef'")  # fmt: skip

    # A full disk while storing the new message: one clear line (see test_clip_store.py
    # for the real SQLITE_FULL condition).
    monkeypatch.setattr(ClipStore, "add_outgoing", lambda *a, **k: _raise_full())
    refused("clip", "send", "net", str(speech_file(tmp_path / "s.wav", 1.0)),
            "--link", "sim://full?preset=SHORT_TURBO", "--home", homes["ana"],
            match="disk full")  # fmt: skip


def _raise_full() -> None:
    from relay.store.clips import _disk

    with _disk(Path("clips.db")):
        raise sqlite3.OperationalError("database or disk is full")


def test_help_has_examples() -> None:
    for cmd in (["clip"], ["clip", "send"], ["clip", "receive"], ["clip", "inbox"],
                ["clip", "play"]):  # fmt: skip
        result = ok(*cmd, "--help")
        assert "Example" in result.output or "relay clip" in result.output


@pytest.mark.timeout(300)
def test_talk_sends_a_voice_message_where_live_voice_does_not_fit(homes, tmp_path) -> None:
    """On MEDIUM_FAST live voice does not fit: `relay talk` says so and sends the over as a
    voice message, which a member collecting with `relay clip receive` gets whole."""
    wav = speech_file(tmp_path / "short.wav", 2.0, seed=3)
    ether, url = start_ether("--preset", "MEDIUM_FAST", log=tmp_path / "ether.log")
    procs: list[subprocess.Popen] = []
    try:
        ben = relay_proc(
            "clip", "receive", "net", "--link", f"{url}?node=ben", "--count", "1",
            "--duration", "150", "--json", "--home", homes["ben"], out=tmp_path / "ben",
        )  # fmt: skip
        procs.append(ben)
        wait_for_text(tmp_path / "ben.err", "collecting")
        ana = relay_proc(
            "talk", "net", "--link", f"{url}?node=ana", "--input", str(wav), "--json",
            "--home", homes["ana"], out=tmp_path / "ana",
        )  # fmt: skip
        procs.append(ana)
        assert ana.wait(timeout=120) == 0, (tmp_path / "ana.err").read_text()
        report = json.loads((tmp_path / "ana.out").read_text())
        assert report["sent_as"] == "voice message" and not report["fits_live"]
        assert report["voice_message"]["delivered"]
        assert "live voice does not fit MEDIUM_FAST" in (tmp_path / "ana.err").read_text()
        assert ben.wait(timeout=30) == 0, (tmp_path / "ben.err").read_text()
        got = json.loads((tmp_path / "ben.out").read_text())
        assert [m["id"] for m in got["received"]] == [report["voice_message"]["msg_id"]]
    finally:
        stop_processes(procs, ether)


def test_reading_commands_create_no_state(tmp_path) -> None:
    """`clip inbox` (and the other commands that only read) leave a missing home missing,
    and a home without messages without a message database."""
    nowhere = tmp_path / "nowhere"
    refused("clip", "inbox", "market", "--home", str(nowhere), match="no room 'market'")
    refused("clip", "play", "ab12", "--out", str(tmp_path / "x.wav"), "--home", str(nowhere),
            match="inbox is empty")  # fmt: skip
    refused("clip", "delete", "ab12", "--home", str(nowhere), match="inbox is empty")
    ok("room", "list", "--home", str(nowhere))
    assert not nowhere.exists()
    home = tmp_path / "home"
    ok("id", "init", "--home", str(home))
    ok("room", "create", "market", "--home", str(home))
    before = sorted(p.name for p in home.iterdir())
    listed = json.loads(ok("clip", "inbox", "market", "--json", "--home", str(home)).stdout)
    assert listed == {"room": "market", "messages": [], "outbox_pending": 0}
    ok("id", "show", "--home", str(home))
    assert sorted(p.name for p in home.iterdir()) == before  # no clips.db appeared
