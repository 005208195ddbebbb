"""UART LoRa modules: profiles, codecs, and the at:// driver against emulated modules on ptys."""

import asyncio
import contextlib
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.emulate.at import Emulator
from relay.errors import LinkError, PeerError, UsageError
from relay.links.at import link as atmod
from relay.links.at.codec import (
    SYNC,
    FrameDecoder,
    Junk,
    Line,
    LineParser,
    Packet,
    decode_payload,
    encode_payload,
    frame,
)
from relay.links.at.profile import profile, profiles
from relay.links.url import open_link
from relay.radio.lora import LoRaParams

FAST_AT = LoRaParams(sf=7, bw_hz=500_000, cr=5, preamble=8)
FAST_RAW = LoRaParams(sf=5, bw_hz=500_000, cr=5, preamble=8)
ALL = sorted(profiles())


def emulator(name: str, count: int = 2, **kw) -> Emulator:
    p = profile(name)
    return Emulator(p, count, lora=FAST_AT if p.mode == "at" else FAST_RAW, **kw)


def url(emu: Emulator, i: int) -> str:
    extra = {"baud": 921600} if emu.profile.mode == "raw" else {}
    return emu.url(emu.modules[i], **extra)


async def recv(link, timeout: float = 15.0):
    return await asyncio.wait_for(link.recv(), timeout)


async def pair(emu: Emulator) -> tuple[atmod.ATLink, atmod.ATLink]:
    a, b = atmod.open_url(url(emu, 0)), atmod.open_url(url(emu, 1))
    await a.ready(3)
    await b.ready(3)
    return a, b


# --- profiles ------------------------------------------------------------------------------


def test_profiles_state_mtu_after_encoding() -> None:
    assert {"rylr998", "rylr896", "rak3172", "wio-e5", "e22", "e220"} <= set(ALL)
    assert profile("RYLR998").mtu == 180  # 240 ASCII characters of base64
    assert profile("rak3172").mtu == 240 and profile("rak3172").encoding == "hex"
    assert profile("e22").mtu == 235 and profile("e220").mtu == 195  # 5 bytes of framing
    for name in ALL:
        p = profile(name)
        assert p.configure and p.title
        assert p.air_bytes(p.mtu) <= 255
        assert p.settings().lora.time_on_air(p.air_bytes(p.mtu)) > 0


def test_settings_refuse_what_the_firmware_would() -> None:
    with pytest.raises(UsageError, match="bandwidth"):
        profile("rylr998").settings(bw_hz=62_500)
    with pytest.raises(UsageError, match="coding rate"):
        profile("wio-e5").settings(cr=6)
    with pytest.raises(UsageError, match="SF"):
        profile("rylr896").settings(sf=5)
    with pytest.raises(UsageError, match="air rate"):
        profile("e22").settings(air_rate="7k")
    assert profile("e22").settings(air_rate="62.5k").lora.sf == 5
    with pytest.raises(UsageError, match="unknown AT profile"):
        profile("nope")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("at:///dev/null", "profile="),
        ("at:///dev/null?profile=rylr998&colour=red", "unknown at:// option"),
        ("at:///dev/null?profile=rylr998&addr=70000", "addr"),
        ("at://?profile=rylr998", "serial port"),
        ("at:///dev/null?profile=rylr998&bw=wide", "bandwidth"),
    ],
)
def test_url_errors(bad: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        open_link(bad)


def test_missing_port_fails_fast() -> None:
    with pytest.raises(LinkError, match="relay devices"):
        open_link("at:///dev/does-not-exist?profile=rylr998")


def test_url_options_reach_the_templates() -> None:
    port, p, s, opts = atmod.parse_url(
        "at:///dev/x?profile=rylr998&sf=9&bw=125k&cr=4/6&addr=7&network=5&baud=9600"
    )
    assert (port, p.name, opts) == ("/dev/x", "rylr998", {"baud": 9600})
    v = s.values(p)
    assert (v["sf"], v["bw_code"], v["cr_code"], v["addr"], v["network"]) == (9, 7, 2, 7, 5)


# --- codecs --------------------------------------------------------------------------------


def test_line_parser_classifies() -> None:
    parser = LineParser(profile("rylr998"))
    text = encode_payload("base64", b"hello")
    events = parser.feed(f"+OK\r\n+RCV=3,{len(text)},{text},-40,9\r\n+READY\r\n".encode())
    assert events == [Line("+OK"), Packet(b"hello", -40.0, 9.0)]
    junk = parser.feed(b"+RCV=3,10,aGVsbG8=,-40\r\n\xff\xfe\r\n+RCV=3,4,!!!!,-1,2\r\n")
    assert [e.reason for e in junk if isinstance(e, Junk)] == [
        "truncated",
        "garbage",
        "bad_payload",
    ]


def test_wio_meta_line_carries_rssi_and_length() -> None:
    parser = LineParser(profile("wio-e5"))
    events = parser.feed(b'+TEST: LEN:2, RSSI:-50, SNR:7\r\n+TEST: RX "ABCD"\r\n')
    assert events == [Packet(b"\xab\xcd", -50.0, 7.0)]
    events = parser.feed(b'+TEST: LEN:3, RSSI:-50, SNR:7\r\n+TEST: RX "ABCD"\r\n')
    assert isinstance(events[0], Junk) and events[0].reason == "truncated"


def test_overlong_line_is_skipped_once() -> None:
    parser = LineParser(profile("rak3172"), max_line=64)
    events = parser.feed(b"X" * 100)
    events += parser.feed(b"Y" * 10 + b"\r\nOK\r\n")
    assert [type(e).__name__ for e in events] == ["Junk", "Line"]
    assert events[0].reason == "overlong" and events[1] == Line("OK")


def test_frame_decoder_resyncs_after_damage() -> None:
    dec = FrameDecoder(235)
    good = frame(b"voice", 235)
    bad = bytearray(frame(b"other", 235))
    bad[-1] ^= 0xFF
    events = dec.feed(b"noise" + bytes(bad) + good)
    assert Packet(b"voice") in events
    reasons = [e.reason for e in events if isinstance(e, Junk)]
    assert "bad_checksum" in reasons and "garbage" in reasons
    assert dec.feed(SYNC + b"\x03ab") == [] and dec.stale()[0].reason == "truncated"


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600), name=st.sampled_from(ALL))
def test_parsers_never_raise_on_arbitrary_bytes(data: bytes, name: str) -> None:
    p = profile(name)
    try:
        events = (LineParser(p) if p.mode == "at" else FrameDecoder(p.mtu)).feed(data)
    except PeerError:
        return
    for event in events:
        assert isinstance(event, Packet | Line | Junk)
        if isinstance(event, Packet):
            assert 1 <= len(event.data) <= p.mtu


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=235), min_size=1, max_size=4),
    noise=st.binary(max_size=40),
    cut=st.integers(min_value=1, max_value=50),
)
def test_framing_roundtrip_through_noise_and_chunks(payloads, noise, cut) -> None:
    stream = noise + b"".join(frame(p, 235) for p in payloads) + noise
    dec = FrameDecoder(235)
    got = []
    for i in range(0, len(stream), cut):
        got += [e.data for e in dec.feed(stream[i : i + cut]) if isinstance(e, Packet)]
    while dec.buffered:  # what the driver's stale timer does when the line goes quiet
        got += [e.data for e in dec.stale() if isinstance(e, Packet)]
    # Noise may by chance contain a valid frame; every sent payload still comes out, in order.
    it = iter(got)
    assert all(any(p == g for g in it) for p in payloads)


@given(data=st.binary(min_size=1, max_size=240), encoding=st.sampled_from(["base64", "hex"]))
def test_payload_encodings_roundtrip(data: bytes, encoding: str) -> None:
    assert decode_payload(encoding, encode_payload(encoding, data)) == data


@given(text=st.text(max_size=50), encoding=st.sampled_from(["base64", "hex"]))
def test_payload_decoding_raises_only_peer_errors(text: str, encoding: str) -> None:
    with contextlib.suppress(PeerError):
        decode_payload(encoding, text)


# --- the driver against the emulator -------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_two_modules_exchange_relay_sized_datagrams(name: str) -> None:
    rng = random.Random(name)

    async def main() -> None:
        async with emulator(name) as emu:
            a, b = await pair(emu)
            sizes = [16, 48, 120, profile(name).mtu]
            sent = [rng.randbytes(n) for n in sizes]
            for data in sent:
                await a.send(data)
            got = [await recv(b) for _ in sent]
            assert [d.data for d in got] == sent
            if profile(name).mode == "at":
                assert all(d.rssi is not None and d.snr is not None for d in got)
            await b.send(b"reply" * 4)
            assert (await recv(a)).data == b"reply" * 4
            await a.drain()
            assert a.stats.sent == len(sent) and b.stats.received == len(sent)
            assert a.airtime(48) > 0 and not a.stats.extra.get("timeouts")
            with pytest.raises(UsageError, match="MTU"):
                await a.send(bytes(a.mtu + 1))
            await a.close()
            await b.close()
            with pytest.raises(LinkError):
                await a.send(b"late")

    asyncio.run(main())


@pytest.mark.parametrize("name", ["rylr998", "rak3172", "wio-e5"])
def test_garbage_truncated_and_unexpected_lines_are_counted(name: str) -> None:
    async def main() -> None:
        async with emulator(name) as emu:
            a, b = await pair(emu)
            rx = profile(name).rx_prefix.encode()
            emu.modules[1].inject(
                b"\x00\xff\xfe garbage \x07\r\n"  # binary noise
                + rx
                + b"12,3\r\n"  # a receive line cut short
                + b"+ERR=4\r\nAT_ERROR\r\n"  # replies nobody asked for
                + b"Z" * 2000
                + b"\r\n"  # an overlong line
            )
            await a.send(b"still works")
            assert (await recv(b)).data == b"still works"
            extra = b.stats.extra
            assert extra.get("garbage") and extra.get("truncated") and extra.get("overlong")
            assert extra.get("unexpected", 0) >= 2
            await a.close()
            await b.close()

    asyncio.run(main())


@pytest.mark.parametrize("name", ["e22", "e220"])
def test_transparent_module_drops_bad_frames(name: str) -> None:
    async def main() -> None:
        async with emulator(name) as emu:
            a, b = await pair(emu)
            bad = bytearray(frame(b"forged words", profile(name).mtu))
            bad[5] ^= 0x01
            emu.modules[1].inject(os.urandom(64) + bytes(bad))
            await a.send(b"clean")
            got = await recv(b)
            while got.data != b"clean":  # random noise may hold a valid frame, very rarely
                got = await recv(b)
            assert b.stats.extra.get("bad_checksum") or b.stats.extra.get("bad_length")
            await a.close()
            await b.close()

    asyncio.run(main())


@pytest.mark.parametrize("name", ["rylr998", "rak3172", "wio-e5"])
def test_module_refusal_is_retried_then_counted_not_raised(name: str) -> None:
    async def main() -> None:
        async with emulator(name) as emu:
            a, b = await pair(emu)
            emu.modules[0].refuse_sends = 1  # a busy module: the retry gets through
            await a.send(b"second try")
            assert (await recv(b)).data == b"second try"
            emu.modules[0].refuse_sends = atmod.SEND_TRIES
            await a.send(b"refused")
            await a.drain()
            assert a.stats.extra.get("tx_failed") == 1 and a.stats.sent == 1
            await a.send(b"accepted")
            assert (await recv(b)).data == b"accepted"
            await a.close()
            await b.close()

    asyncio.run(main())


def test_port_vanishes_and_comes_back(tmp_path) -> None:
    async def main() -> None:
        async with emulator("rak3172", link_prefix=str(tmp_path / "rak")) as emu:
            assert emu.modules[0].device == str(tmp_path / "rak0")
            a, b = await pair(emu)
            await a.send(b"before")
            assert (await recv(b)).data == b"before"
            emu.modules[0].unplug()
            for _ in range(50):
                if not a.up:
                    break
                await asyncio.sleep(0.01)
            assert not a.up and a.stats.extra.get("port_lost") == 1
            for i in range(3):  # accepted while down: queued, not lost
                await a.send(f"queued {i}".encode())
            await asyncio.sleep(0.2)
            emu.modules[0].replug()
            await a.ready(5)
            got = [(await recv(b)).data for _ in range(3)]
            assert got == [b"queued 0", b"queued 1", b"queued 2"]
            assert a.stats.extra.get("reopen_attempts", 0) >= 1
            await a.close()
            await b.close()

    asyncio.run(main())


def test_queue_full_while_down_drops_oldest_and_counts(tmp_path) -> None:
    async def main() -> None:
        async with emulator("rylr998", link_prefix=str(tmp_path / "m")) as emu:
            a = atmod.open_url(url(emu, 0) + "&queue=2")
            b = atmod.open_url(url(emu, 1))
            await a.ready(3)
            await b.ready(3)
            emu.modules[0].unplug()
            while a.up:
                await asyncio.sleep(0.01)
            for i in range(4):
                await a.send(bytes([i]) * 8)
            assert a.stats.extra["dropped_while_down"] == 2
            emu.modules[0].replug()
            assert [(await recv(b)).data[0] for _ in range(2)] == [2, 3]
            await a.close()
            await b.close()

    asyncio.run(main())


def test_silent_module_is_reopened() -> None:
    async def main() -> None:
        async with emulator("wio-e5") as emu:
            a, b = await pair(emu)
            a.reply_timeout = 0.1
            emu.modules[0].silent = True
            await a.send(b"into the void")
            for _ in range(100):
                if a.stats.extra.get("port_lost"):
                    break
                await asyncio.sleep(0.02)
            assert a.stats.extra["timeouts"] >= 1
            emu.modules[0].silent = False
            await a.ready(5)
            assert (await recv(b)).data == b"into the void"  # resent after the reopen
            await a.close()
            await b.close()

    asyncio.run(main())


def test_cli_emulate_at_prints_ptys() -> None:
    from click.testing import CliRunner

    from relay.cli.main import cli

    result = CliRunner().invoke(
        cli, ["emulate", "at", "--profile", "rak3172", "--pty", "--count", "2", "--duration", "0.2"]
    )
    assert result.exit_code == 0, result.output
    assert "at0: /dev/" in result.output and "at://" in result.output
    bad = CliRunner().invoke(cli, ["emulate", "at", "--profile", "rak3172"])
    assert bad.exit_code == 2 and "--pty" in bad.output
