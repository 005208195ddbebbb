"""The room in a real browser: Debian's headless Chromium (driven by Playwright) on a gateway's
page, radio members on a simulated channel in the same process, real time.

Chromium's fake capture device plays a speech WAV as the microphone; the page's player
worklet hands back every sample it actually played, so the test scores what the page played.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import make_homes, ok

from bench.quality import codec_delay
from relay.app.audio import file_source
from relay.app.session import open_session
from relay.demo.voice import bundled_sample
from relay.store.home import Home
from relay.voice.audio import read_audio
from relay.web.gateway import Gateway, make_app
from relay.web.people import add_person

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
SAMPLE = bundled_sample("hts1.wav")  # 6 s of speech
SPEECH = read_audio(SAMPLE)


def _stoi(played: np.ndarray, reference: np.ndarray) -> float:
    from pystoi import stoi

    assert np.abs(played).max() > 1000, "the page played nothing but silence"
    delay = codec_delay(reference, played, max_delay=8000)  # recording starts before speech
    tail = played[delay:]
    n = min(len(reference), len(tail))
    return float(stoi(reference[:n] / 32768, tail[:n] / 32768, 8000))


@pytest.fixture
def homes(tmp_path) -> dict[str, str]:
    return make_homes(tmp_path, "market")


def room_clock():
    loop = asyncio.get_running_loop()
    epoch = time.time() - loop.time()
    return lambda: epoch + loop.time()


async def until(check, timeout: float = 30.0, step: float = 0.1) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _value(check):
        if loop.time() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(step)


async def _value(check):
    value = check()
    return await value if asyncio.iscoroutine(value) else value


@contextlib.asynccontextmanager
async def served(homes: dict[str, str], channel: str):
    """The moderator's home as the gateway, serving on a free port."""
    from aiohttp import web

    url = f"sim://{channel}?preset=SHORT_TURBO&lbt=on"
    gateway = Gateway(Home(homes["mod"]), "market", url)
    await gateway.start()
    runner = web.AppRunner(make_app(gateway), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield gateway, f"http://127.0.0.1:{port}", url
    finally:
        await runner.cleanup()
        await gateway.close()


@contextlib.asynccontextmanager
async def chromium(mic: Path | None = None):
    from playwright.async_api import async_playwright

    args = [
        "--no-sandbox",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
    ]
    if mic is not None:
        args.append(f"--use-file-for-fake-audio-capture={mic}")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser, base: str, token: str):
    page = await (await browser.new_context()).new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    response = await page.goto(f"{base}/join/{token}")
    assert response is not None and response.status == 200
    await until(lambda: page.evaluate("window.relay && window.relay.state !== null"))
    return page


def heard(session) -> float:
    """Seconds of speech a session has played so far."""
    return len(session.heard_audio()) / 8000


def link_for(homes, name: str, **kw) -> str:
    seat = add_person(Home(homes["mod"]), "market", name, **kw)
    assert seat.token is not None
    return seat.token


def test_a_browser_listener_hears_a_radio_speaker(homes) -> None:
    async def scenario():
        async with served(homes, "web1") as (gateway, base, url), chromium() as browser:
            page = await open_page(browser, base, link_for(homes, "gina"))
            await page.click("#listen")
            await page.evaluate("relay.record(true)")
            clock = room_clock()
            async with open_session(
                Home(homes["ana"]), "market", url, clock=clock, source=file_source(SPEECH)
            ) as ana:
                await ana.raise_hand()
                await until(lambda: gateway.main.snapshot().hands)
                await gateway.main.grant()
                await until(lambda: ana.snapshot().floor.mine)
                await ana.ptt_start()
                await until(lambda: not ana.talking, timeout=20)
                await until(lambda: gateway.main.snapshot().overs, timeout=10)
                await asyncio.sleep(1.0)
            over = gateway.main.snapshot().overs[0]
            state = await page.evaluate("relay.state")
            played = np.array(await page.evaluate("relay.playedPcm()"), dtype=np.int16)
            return over, state, played

    over, state, played = asyncio.run(scenario())
    assert over.verdict == "verified"
    assert state["room"]["overs"][0]["verdict"] == "verified"
    assert state["you"]["name"] == "gina" and not state["you"]["moderator"]
    assert len(played) > 0.9 * len(SPEECH)
    assert _stoi(played, SPEECH) > 0.6


def test_a_browser_speaker_reaches_a_radio_listener_verified(homes) -> None:
    async def scenario():
        async with (
            served(homes, "web2") as (_gateway, base, url),
            chromium(mic=SAMPLE) as browser,
        ):
            clock = room_clock()
            async with open_session(
                Home(homes["ben"]), "market", url, clock=clock, listen_only=True
            ) as ben:
                speaker = await open_page(browser, base, link_for(homes, "gina"))
                moderator = await open_page(browser, base, link_for(homes, "me", as_me=True))
                assert (await moderator.evaluate("relay.state.you.moderator")) is True
                await speaker.click("#hand")
                await until(lambda: moderator.evaluate("relay.state.room.hands.length === 1"))
                await moderator.click("#hands button")  # Grant
                await until(lambda: speaker.evaluate("!document.getElementById('ptt').disabled"))
                await speaker.hover("#ptt")
                await speaker.mouse.down()
                await until(
                    lambda: speaker.evaluate("relay.results.some(r => r.action === 'talk')")
                )
                await asyncio.sleep(4.0)
                await speaker.mouse.up()
                await until(lambda: ben.snapshot().overs, timeout=15)
                over = ben.snapshot().overs[0]
                heard = ben.heard_audio()
                results = await speaker.evaluate("relay.results")
            return over, heard, results

    over, heard, results = asyncio.run(scenario())
    assert all(r["ok"] for r in results), results
    assert over.verdict == "verified"
    assert over.speaker.id != ""  # gina's own identity, not the gateway's
    assert 3.0 < over.seconds < 6.0
    assert _stoi(heard, SPEECH) > 0.45  # the fake microphone loops the file from its start


def test_a_browser_moderator_mutes_a_radio_speaker(homes) -> None:
    async def scenario():
        async with served(homes, "web3") as (_gateway, base, url), chromium() as browser:
            moderator = await open_page(browser, base, link_for(homes, "me", as_me=True))
            clock = room_clock()
            async with (
                open_session(
                    Home(homes["ana"]), "market", url, clock=clock, source=file_source(SPEECH)
                ) as ana,
                open_session(
                    Home(homes["ben"]), "market", url, clock=clock, listen_only=True
                ) as ben,
            ):
                await ana.raise_hand()
                await until(lambda: moderator.evaluate("relay.state.room.hands.length === 1"))
                await moderator.click("#hands button")
                await until(lambda: ana.snapshot().floor.mine)
                await ana.ptt_start()
                await until(lambda: ben.snapshot().level > 0 or heard(ben) > 1.0)
                await asyncio.sleep(1.0)
                ana_id = ana.me.hex()
                await moderator.click(f"#members li[data-id='{ana_id}'] button:text('Mute')")
                await until(
                    lambda: (
                        ben.snapshot().members
                        and any(m.muted for m in ben.snapshot().members if m.id == ana_id)
                    )
                )
                heard_at_mute = heard(ben)
                await asyncio.sleep(3.0)
                heard_later = heard(ben)
                muted_for_ana = ana.snapshot().me.muted
            return heard_at_mute, heard_later, muted_for_ana

    heard_at_mute, heard_later, muted_for_ana = asyncio.run(scenario())
    assert muted_for_ana
    assert heard_at_mute < 5.0  # cut well before the 6 s sample ended
    assert heard_later - heard_at_mute < 0.5  # nothing more of ana was played


def test_a_browser_without_a_valid_link_gets_nothing(homes) -> None:
    async def scenario():
        from aiohttp import ClientSession, CookieJar, WSServerHandshakeError

        async with served(homes, "web4") as (gateway, base, _url):
            token = link_for(homes, "gina")
            async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
                statuses = {}
                for path in ("/", "/static/app.js", "/join/not-a-token", "/ws"):
                    async with http.get(base + path, allow_redirects=False) as r:
                        statuses[path] = r.status
                with pytest.raises(WSServerHandshakeError):
                    await http.ws_connect(base + "/ws", headers={"Origin": base})
                async with http.get(f"{base}/join/{token}", allow_redirects=False) as r:
                    statuses["first use"] = r.status
                    cookie = r.cookies["relay_session"]
                    assert cookie["httponly"] and cookie["samesite"] == "Strict"
                async with http.get(base + "/") as r:
                    statuses["with cookie"] = r.status
                with pytest.raises(WSServerHandshakeError):  # another site's page
                    await http.ws_connect(base + "/ws", headers={"Origin": "http://evil.example"})
                again = f"{base}/join/{token}"  # the same link, in another browser
                async with (
                    ClientSession() as other,
                    other.get(again, allow_redirects=False) as r,
                ):
                    statuses["second use"] = r.status
            return statuses, gateway.stats["refused"]

    statuses, refused = asyncio.run(scenario())
    assert statuses["/"] == statuses["/static/app.js"] == statuses["/ws"] == 403
    assert statuses["/join/not-a-token"] == 403 and statuses["second use"] == 403
    assert statuses["first use"] == 303 and statuses["with cookie"] == 200
    assert refused >= 6


def test_web_cli_adds_lists_and_drops_people(homes) -> None:
    out = ok("web", "add", "market", "gina", "--no-qr", "--json", "--home", homes["mod"]).stdout
    seat = json.loads(out)
    assert seat["link"].startswith("http://127.0.0.1:8080/join/") and not seat["as_me"]
    listed = json.loads(ok("web", "list", "market", "--json", "--home", homes["mod"]).stdout)
    assert [p["name"] for p in listed["people"]] == ["gina"]
    ok("web", "drop", "market", "gina", "--home", homes["mod"])
    listed = json.loads(ok("web", "list", "market", "--json", "--home", homes["mod"]).stdout)
    assert listed["people"] == []
    # a member who does not moderate gets the public id to ask a moderator for an invite
    out = ok("web", "add", "market", "zoe", "--json", "--home", homes["ana"]).stdout
    assert json.loads(out)["link"] is None and json.loads(out)["public_id"].startswith("relayid1:")


async def _page_socket(http, base: str, token: str):
    async with http.get(f"{base}/join/{token}") as r:
        assert r.status == 200
    return await http.ws_connect(base + "/ws", headers={"Origin": base})


def test_a_removed_browser_member_is_cut_off_and_hears_nothing(homes) -> None:
    """The page of a person a moderator removed closes at once, their session ends, and
    the gateway sends them no more speech (the gateway's decoder holds the new key)."""

    async def scenario():
        from aiohttp import ClientSession, CookieJar, WSMsgType

        async with served(homes, "web5") as (gateway, base, _url):
            token = link_for(homes, "gina")
            gina = gateway.guests.get(gateway.info.room_id, "gina")
            async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
                ws = await _page_socket(http, base, token)
                first = await ws.receive(timeout=5)
                assert first.type == WSMsgType.TEXT and json.loads(first.data)["type"] == "state"
                await ws.send_str(json.dumps({"type": "act", "action": "raise"}))
                await until(lambda: gateway.main.snapshot().hands)
                assert gina.identity in gateway.main.room.roster  # enrolled: gets rekeys
                said = await gateway.main.remove(gina.identity.hex())
                kinds = []
                while True:
                    msg = await ws.receive(timeout=5)
                    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                        break
                    kinds.append(msg.type)
                async with http.get(base + "/") as r:
                    after = r.status
            return said, after, gateway.main.room.epoch

    said, after, epoch = asyncio.run(scenario())
    assert "removed gina" in said.lower() or "removed" in said
    assert epoch == 1 and after == 403


def test_tls_page_and_fingerprint_in_the_link(homes) -> None:
    from relay.web.tls import certificate, existing_fingerprint

    first = certificate(Home(homes["mod"]), "127.0.0.1")
    again = certificate(Home(homes["mod"]), "127.0.0.1")
    assert first == again and existing_fingerprint(Home(homes["mod"])) == first[2]
    assert oct(first[1].stat().st_mode & 0o777) == "0o600"
    out = ok("web", "add", "market", "gina", "--json", "--home", homes["mod"]).stdout
    link = json.loads(out)["link"]
    assert link.startswith("https://") and link.endswith(first[2].replace(":", ""))


def test_act_refuses_bad_messages_without_crashing(homes) -> None:
    """Whatever a page sends is answered with a result, never an exception."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    values = st.one_of(st.none(), st.integers(), st.text(max_size=20), st.booleans())
    messages = st.dictionaries(
        st.sampled_from(["action", "member", "seconds", "type", "x"]), values, max_size=4
    )

    async def scenario():
        async with served(homes, "web6") as (gateway, _base, _url):
            seat = add_person(Home(homes["mod"]), "market", "gina")
            guest = seat.guest
            answers = []

            @settings(max_examples=60, deadline=None)
            @given(messages)
            def check(message):
                answers.append(message)

            check()
            results = [await gateway.act(guest, m) for m in answers]
            return results

    results = asyncio.run(scenario())
    assert results and all(r["type"] == "result" and "text" in r for r in results)
