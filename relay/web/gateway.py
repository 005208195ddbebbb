"""The room in a browser: a gateway serves one page to the people it holds identities for.

One radio, one decoder: the gateway's own member hears the room and decodes each over once;
the speech goes to every browser over its WebSocket as 8 kHz PCM. A person who raises a
hand, talks or moderates acts through a member of their own (their identity, held by the
gateway) on a tap of the same radio (:mod:`relay.links.shared`), started at their first
such action; their browser's microphone arrives as PCM and is encoded with Codec2 here.
Screens show :class:`relay.app.session.RoomSession` snapshots: the console's room, not a
second state machine.

WebSocket messages, server to browser: text ``{"type": "state", "room": snapshot, "you":
{...}}`` a few times a second, ``{"type": "result", ...}`` for each action; binary: one byte
kind (1 = speech), 8 bytes of send time (big-endian float64, Unix time), then int16
little-endian PCM at 8 kHz. Browser to server: text ``{"type": "act", "action": ...,
"member": id, "seconds": n}``; binary: int16 little-endian PCM at 8 kHz from the microphone
while talking.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from relay.app.session import ACTIONS, RoomSession, open_session
from relay.errors import LinkError, RelayError, UsageError
from relay.links.shared import SharedLink
from relay.runtime.member import open_link_async
from relay.store.contacts import Contacts, Names
from relay.store.home import Home
from relay.store.rooms import RoomStore
from relay.voice.modes import CodecMode
from relay.web.guests import Guest, Guests

log = logging.getLogger(__name__)

COOKIE = "relay_session"
STATE_EVERY = 0.25  # seconds between state pushes
AUDIO_EVERY = 0.02  # seconds between speech pushes
SEND_QUEUE = 256  # messages a slow browser may lag before it is cut off
MIC_QUEUE = 400  # microphone chunks buffered (a few seconds)
MAX_MIC_CHUNK = 16000  # bytes in one microphone message (1 s of 8 kHz int16)
KIND_SPEECH = 1
PERSONAL = ("me", "moderator", "listen_only", "talking", "hand_raised", "can_talk")


class WebVoice:
    """A browser's microphone as an :data:`relay.app.audio.AudioSource`: PCM chunks in, one
    Codec2 frame out at a time. A gap in what the browser sends is filled with silence at the
    pace of speech, so an over never stalls on a quiet network."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[np.ndarray] = asyncio.Queue(MIC_QUEUE)
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        if not data or len(data) > MAX_MIC_CHUNK or len(data) % 2:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(np.frombuffer(data, "<i2").astype(np.int16))
        except asyncio.QueueFull:
            self.dropped += 1

    def clear(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    def __call__(self, mode: CodecMode) -> AsyncIterator[np.ndarray]:
        self.clear()  # what was said before push-to-talk is not part of the over
        return self._frames(mode)

    async def _frames(self, mode: CodecMode) -> AsyncIterator[np.ndarray]:
        step = mode.samples_per_frame
        held = np.zeros(0, np.int16)
        while True:
            while len(held) < step:
                try:
                    chunk = await asyncio.wait_for(self._queue.get(), 2 * mode.frame_seconds)
                except TimeoutError:
                    chunk = np.zeros(step - len(held), np.int16)
                held = np.concatenate([held, chunk])
            yield held[:step].copy()
            held = held[step:]


@dataclass(eq=False)
class Browser:
    """One open page."""

    guest: Guest
    ws: web.WebSocketResponse
    outbox: asyncio.Queue[str | bytes | None] = field(
        default_factory=lambda: asyncio.Queue(SEND_QUEUE)
    )
    cut_off: bool = False

    def push(self, message: str | bytes) -> None:
        if self.cut_off:
            return
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            self.cut()  # a stuck page must not hold speech for everyone else

    def cut(self) -> None:
        """Close this page: nothing queued for it is sent any more."""
        self.cut_off = True
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.outbox.put_nowait(None)


class Gateway:
    """Serves ``room_ref`` of ``home`` on the radio at ``url`` to browsers."""

    def __init__(
        self,
        home: Home,
        room_ref: str,
        url: str,
        *,
        listen_only: bool = False,
        dtx: bool = True,
    ) -> None:
        self.home = home
        self.room_ref = room_ref
        self.url = url
        self.listen_only = listen_only
        self.dtx = dtx
        with RoomStore(home) as store:
            self.info = store.get(room_ref)  # errors about the room come before the radio
        home.identity()
        self.guests = Guests(home)
        self.browsers: set[Browser] = set()
        self.main: RoomSession | None = None
        self._radio: SharedLink | None = None
        self._stack = contextlib.AsyncExitStack()
        self._people: dict[bytes, RoomSession] = {}
        self._voices: dict[bytes, WebVoice] = {}
        self._opening: dict[bytes, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._sent: dict[int, int] = {}  # id(over) -> frames already sent
        self.stats = {"speech_messages": 0, "refused": 0, "cut_off": 0}

    # -------------------------------------------------------------- running
    async def start(self) -> None:
        self._radio = SharedLink(await open_link_async(self.url))
        self._stack.push_async_callback(self._radio.close)
        names = Names(Contacts(self.home).list())
        me = self.home.identity().identity
        self.main = await self._stack.enter_async_context(
            open_session(
                self.home,
                self.info.id_hex,
                self.url,
                link=self._radio.tap(),
                listen_only=self.listen_only,
                source=self._voice(me),
                names=names,
                dtx=self.dtx,
            )
        )
        self._names = names
        self._tasks = [
            asyncio.create_task(self._pump_speech(), name="relay-web-speech"),
            asyncio.create_task(self._pump_state(), name="relay-web-state"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for browser in list(self.browsers):
            await browser.ws.close()
        await self._stack.aclose()
        self.guests.close()

    def _voice(self, ident: bytes) -> WebVoice:
        return self._voices.setdefault(ident, WebVoice())

    async def session_for(self, guest: Guest) -> RoomSession:
        """The member acting for ``guest``: the gateway's own for its identity, else one of
        their own on a tap of the radio, started at their first action."""
        assert self.main is not None and self._radio is not None
        if guest.as_me:
            return self.main
        session = self._people.get(guest.identity)
        if session is not None:
            return session
        lock = self._opening.setdefault(guest.identity, asyncio.Lock())
        async with lock:
            if guest.identity not in self._people:
                session = await self._stack.enter_async_context(
                    open_session(
                        guest.home(self.home),
                        self.info.id_hex,
                        self.url,
                        link=self._radio.tap(),
                        listen_only=self.listen_only,
                        source=self._voice(guest.identity),
                        names=self._names,
                        dtx=self.dtx,
                    )
                )
                self._people[guest.identity] = session
        return self._people[guest.identity]

    def _enroll(self, guest: Guest) -> None:
        """A moderating gateway's room must know a person added while it runs, so the next
        key rotation reaches them."""
        assert self.main is not None
        room = self.main.room
        if guest.as_me or not room.is_moderator or guest.identity in room.roster:
            return
        if guest.identity in room.removed:
            return
        with contextlib.suppress(UsageError):
            room.enroll(guest.home(self.home).identity().public)

    def removed(self, guest: Guest) -> bool:
        assert self.main is not None
        return not guest.as_me and guest.identity in self.main.room.removed

    # -------------------------------------------------------------- pushing to browsers
    async def _pump_speech(self) -> None:
        """Send every browser what the gateway's decoder played since the last turn."""
        assert self.main is not None
        playout = self.main.playout
        while True:
            await asyncio.sleep(AUDIO_EVERY)
            finished = list(playout.overs)
            for over in [*finished, *playout.live_overs()]:
                done = self._sent.get(id(over), 0)
                if len(over.pcm) > done:
                    pcm = np.concatenate(over.pcm[done:]).astype("<i2").tobytes()
                    self._sent[id(over)] = len(over.pcm)
                    message = struct.pack(">Bd", KIND_SPEECH, time.time()) + pcm
                    self.stats["speech_messages"] += 1
                    for browser in self.browsers:
                        browser.push(message)
            for over in finished:  # a gateway runs for days: keep no speech it has sent
                self._sent.pop(id(over), None)
            del playout.overs[: len(finished)]

    async def _pump_state(self) -> None:
        while True:
            await asyncio.sleep(STATE_EVERY)
            self.push_state()

    def push_state(self) -> None:
        assert self.main is not None
        if not self.browsers:
            return
        shared = self.main.snapshot().to_dict()
        shared_json = json.dumps({k: v for k, v in shared.items() if k not in PERSONAL})
        for browser in list(self.browsers):
            if self.removed(browser.guest):
                browser.cut()  # a removed person hears nothing more
                continue
            session = self._people.get(browser.guest.identity)
            if browser.guest.as_me:
                session = self.main
            if session is not None:
                mine = session.snapshot().to_dict()
                you = {k: mine[k] for k in PERSONAL}
            else:
                you = self._you(browser.guest, shared)
            you["name"] = browser.guest.name
            browser.push(f'{{"type":"state","you":{json.dumps(you)},"room":{shared_json}}}')

    def _you(self, guest: Guest, shared: dict[str, Any]) -> dict[str, Any]:
        """What a person who has not acted yet sees of themselves (their member starts at
        their first action)."""
        assert self.main is not None
        me = next((m for m in shared["members"] if m["id"] == guest.identity.hex()), None)
        if me is None:
            me = dataclasses.asdict(self.main._view(guest.identity))
        me = {**me, "me": True}
        return {
            "me": me,
            "moderator": me["moderator"],
            "listen_only": self.listen_only,
            "talking": False,
            "hand_raised": False,
            "can_talk": not self.listen_only,
        }

    # -------------------------------------------------------------- handling a page
    async def act(self, guest: Guest, message: dict[str, Any]) -> dict[str, Any]:
        action = message.get("action")
        if action not in ACTIONS:
            return {"type": "result", "ok": False, "text": f"unknown action {action!r}"}
        member = message.get("member")
        seconds = message.get("seconds")
        if member is not None and not isinstance(member, str):
            return {"type": "result", "ok": False, "text": "member must be a string"}
        if seconds is not None and (not isinstance(seconds, int) or not 1 <= seconds <= 3600):
            return {"type": "result", "ok": False, "text": "seconds must be 1..3600"}
        try:
            session = await self.session_for(guest)
            text = await session.act(action, member, seconds)
        except (UsageError, LinkError, RelayError) as exc:
            return {"type": "result", "ok": False, "action": action, "text": str(exc)}
        self.push_state()
        return {"type": "result", "ok": True, "action": action, "text": text}

    async def serve_page(self, guest: Guest, ws: web.WebSocketResponse) -> None:
        browser = Browser(guest, ws)
        self._enroll(guest)
        self.browsers.add(browser)
        writer = asyncio.create_task(self._write(browser), name="relay-web-writer")
        self.push_state()
        try:
            async for msg in ws:
                if self.removed(guest) or browser.cut_off:
                    break
                if msg.type == WSMsgType.BINARY:
                    self._voice(guest.identity).feed(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    try:
                        message = json.loads(msg.data)
                    except ValueError:
                        message = None
                    if not isinstance(message, dict) or message.get("type") != "act":
                        browser.push(json.dumps({"type": "result", "ok": False, "text": "bad"}))
                        continue
                    browser.push(json.dumps(await self.act(guest, message)))
        finally:
            self.browsers.discard(browser)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write(self, browser: Browser) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while (message := await browser.outbox.get()) is not None:
                if isinstance(message, bytes):
                    await browser.ws.send_bytes(message)
                else:
                    await browser.ws.send_str(message)
        if browser.cut_off:
            self.stats["cut_off"] += 1
        await browser.ws.close()


# ------------------------------------------------------------------ the web application
def _static(name: str) -> bytes:
    return resources.files("relay.web").joinpath("static", name).read_bytes()


STATIC = {
    "app.js": "text/javascript",
    "audio.js": "text/javascript",
    "style.css": "text/css",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def make_app(gateway: Gateway, *, secure: bool = False) -> web.Application:
    """The aiohttp application: every route checks the session cookie, the WebSocket its
    origin too; a link's token is taken once and never shown again."""

    def person(request: web.Request) -> Guest | None:
        guest = gateway.guests.session(request.cookies.get(COOKIE))
        if guest is None or guest.room_id != gateway.info.room_id or gateway.removed(guest):
            return None
        return guest

    def refuse(request: web.Request) -> web.Response:
        gateway.stats["refused"] += 1
        return web.Response(
            status=403,
            text="This page needs a link from the gateway's operator.\n",
            headers=SECURITY_HEADERS,
        )

    async def join(request: web.Request) -> web.StreamResponse:
        redeemed = gateway.guests.redeem(request.match_info["token"])
        if redeemed is None:
            return refuse(request)
        guest, cookie = redeemed
        if guest.room_id != gateway.info.room_id:
            return refuse(request)
        response = web.HTTPSeeOther("/", headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE, cookie, httponly=True, samesite="Strict", secure=secure, path="/"
        )
        raise response

    async def page(request: web.Request) -> web.StreamResponse:
        if person(request) is None:
            return refuse(request)
        return web.Response(
            body=_static("index.html"), content_type="text/html", headers=SECURITY_HEADERS
        )

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if person(request) is None or name not in STATIC:
            return refuse(request)
        return web.Response(body=_static(name), content_type=STATIC[name], headers=SECURITY_HEADERS)

    async def socket(request: web.Request) -> web.StreamResponse:
        guest = person(request)
        origin = request.headers.get("Origin")
        expected = f"{request.scheme}://{request.host}"
        if guest is None or origin != expected:
            return refuse(request)
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=64 * 1024)
        await ws.prepare(request)
        await gateway.serve_page(guest, ws)
        return ws

    app = web.Application(client_max_size=64 * 1024)
    app.add_routes(
        [
            web.get("/", page),
            web.get("/join/{token}", join),
            web.get("/static/{name}", static),
            web.get("/ws", socket),
        ]
    )
    return app
