"""A room as a user interface sees it: a snapshot to draw, and actions as plain calls.

:class:`RoomSession` wraps one running room member (:mod:`relay.runtime.member`: the room
state machine on a link) and adds only what people need on a screen: who holds the floor and
for how long, the hand queue with waiting times, members by local name, each over's verdict,
a level meter, the link's health and the log of what happened. It keeps no room state of its
own: floor, hands, mutes, removals and keys are read from the :class:`~relay.core.room.Room`
every time, so the terminal console, ``relay moderate``'s control socket and a browser
gateway all see one truth.

Every action (push-to-talk, raise or lower a hand, grant, revoke, mute, unmute, remove,
appoint) is a coroutine that returns one line saying what was done, or raises
:class:`~relay.errors.UsageError` saying why not. Members are named by a reference string
(:meth:`RoomSession.resolve`): a contact's name, a fingerprint or a prefix of it, or the
identity's hex.

Nothing here imports a user-interface toolkit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from relay.app.audio import AudioSource, level
from relay.core.identity import PublicIdentity
from relay.core.room import (
    HandRaised,
    KeyRotated,
    MemberChanged,
    OverEnded,
    RelayNoticed,
    Room,
    RoomEvent,
)
from relay.core.roommsg import PREFIX_LEN
from relay.errors import LinkError, UsageError
from relay.links.base import Link
from relay.radio.duty import AirtimeWindow
from relay.runtime.member import Member, open_member
from relay.runtime.room import BEACON_SIZE, GRANT_REPEATS, RoomNode
from relay.runtime.voice import Playout, RoomClock
from relay.store.contacts import Contacts, Names, short_id
from relay.store.home import Home

GRANT_SECONDS = 60  # a grant's default length (the moderator's key, `relay mod grant`)
HAND_TIMEOUT = 3600.0  # a raised hand stays up (and is raised again now and then) this long
AIRTIME_WINDOW = 3600.0  # duty-cycle rules count airtime per hour
TICK = 0.1
LEVEL_HOLD = 0.3  # seconds a level reading stays on the meter
LOG_LINES = 200
OVERS_KEPT = 50
ACTIONS = (
    "talk",
    "stop",
    "raise",
    "lower",
    "grant",
    "revoke",
    "mute",
    "unmute",
    "remove",
    "appoint",
)
MODERATOR_ACTIONS = frozenset(("grant", "revoke", "mute", "unmute", "remove", "appoint"))


# ------------------------------------------------------------------------------ snapshot
@dataclass(frozen=True, slots=True)
class MemberView:
    """One member as a screen shows it. ``id`` (hex of the identity, or of the 8-byte prefix
    a beacon gave) is what actions take."""

    id: str
    name: str  # the contact's name, else the short id
    short: str
    fingerprint: str | None
    contact: bool
    me: bool
    moderator: bool
    muted: bool
    removed: bool
    hand: bool
    speaking: bool
    enrolled: bool  # receives new room keys (a moderator's roster)


@dataclass(frozen=True, slots=True)
class HandView:
    member: MemberView
    waiting: float  # seconds since we saw the hand go up


@dataclass(frozen=True, slots=True)
class FloorView:
    holder: MemberView | None
    held: float  # seconds since the floor went to the holder (as we saw it)
    left: float  # seconds of the grant left
    mine: bool


@dataclass(frozen=True, slots=True)
class OverView:
    speaker: MemberView
    verdict: str  # verified | partial | forged | unheard | unsigned; sent: our own
    seconds: float  # as long as the speaker says it was
    at: float  # room clock (Unix time) when it ended
    cut: bool = False  # a moderator muted or removed the speaker during it: not all was played


@dataclass(frozen=True, slots=True)
class LinkHealth:
    url: str
    radio: str
    alive: bool
    loss: float | None  # our own packet loss on overs heard lately (0..1), None before one
    dropped: int  # packets that reached the room and were refused (forged, replayed...)
    datagrams: int
    airtime_used: float  # seconds we transmitted in the last `window` seconds
    airtime_budget: float  # seconds the duty cycle allows per window
    window: float
    duty_cycle: float
    rssi: float | None
    snr: float | None


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float  # room clock (Unix time)
    text: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a screen draws, at one moment; ``to_dict`` is its JSON form."""

    room: str
    epoch: int
    me: MemberView
    moderator: bool
    listen_only: bool
    talking: bool
    hand_raised: bool
    can_talk: bool  # a voice source is there (microphone or --input)
    floor: FloorView
    hands: tuple[HandView, ...]
    members: tuple[MemberView, ...]
    overs: tuple[OverView, ...]  # newest first
    level: float  # 0..1, what we say while talking, else what we hear
    link: LinkHealth
    notices: tuple[str, ...]
    log: tuple[LogLine, ...]  # oldest first

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------ session
class RoomSession:
    """One member's room for a user interface; see the module's docstring.

    ``start`` begins the bookkeeping (and, for a moderator whose radio may transmit, the
    beacons late joiners need); ``close`` seals an over in progress, lowers a raised hand
    and stops. :func:`open_session` does all of it around :func:`open_member`.
    """

    def __init__(
        self,
        member: Member,
        *,
        names: Names | None = None,
        listen_only: bool = False,
        source: AudioSource | None = None,
        grant_seconds: int = GRANT_SECONDS,
        fec: bool = False,
        dtx: bool = False,
    ) -> None:
        self.member = member
        self.names = names or Names()
        self.listen_only = listen_only
        self.source = source
        self.grant_seconds = grant_seconds
        self.fec = fec
        self.dtx = dtx
        self._log: deque[LogLine] = deque(maxlen=LOG_LINES)
        self._overs: deque[tuple[bytes, str, float, float, bool]] = deque(maxlen=OVERS_KEPT)
        self._hand_since: dict[bytes, float] = {}
        self._floor: bytes | None = None
        self._floor_since = 0.0
        self._talking: asyncio.Task[None] | None = None
        self._stop_talking = False
        self._starting = False
        self._hand: asyncio.Task[None] | None = None
        self._beacons: asyncio.Task[None] | None = None
        self._beacons_stop = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._said = (0.0, float("-inf"))  # level of the last frame we said, loop time
        self._airtime = AirtimeWindow(AIRTIME_WINDOW)
        self._airtime_seen = member.link.stats.airtime_s
        self._changed: list[Callable[[], None]] = []
        self._publics: dict[bytes, PublicIdentity] = {}
        previous = member.on_event

        def on_event(event: RoomEvent) -> None:
            self._on_event(event)
            if previous is not None:
                previous(event)

        member.on_event = on_event

    # -------------------------------------------------------------- what it wraps
    @property
    def room(self) -> Room:
        return self.member.room

    @property
    def node(self) -> RoomNode:
        return self.member.node

    @property
    def playout(self) -> Playout:
        return self.member.node.playout

    @property
    def clock(self) -> RoomClock:
        return self.member.clock

    @property
    def is_moderator(self) -> bool:
        return self.room.is_moderator

    @property
    def me(self) -> bytes:
        return self.member.identity.identity

    @property
    def talking(self) -> bool:
        return self._talking is not None and not self._talking.done()

    @property
    def hand_raised(self) -> bool:
        return self._hand is not None and not self._hand.done()

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever something worth redrawing happened."""
        self._changed.append(callback)

    def note(self, text: str) -> None:
        """Add a line to the session's log (what the UI shows as history)."""
        self._log.append(LogLine(self.clock(), text))
        for callback in self._changed:
            callback()

    # -------------------------------------------------------------- running
    async def start(self, *, beacons: bool = True) -> None:
        """Begin bookkeeping; a moderator that may transmit also sends the room's beacons
        (``beacons=False`` when the caller runs :meth:`RoomNode.moderate` itself)."""
        self._poll()
        self._ticker = asyncio.create_task(self._tick(), name="relay-session-tick")
        if beacons and self.is_moderator and not self.listen_only:
            self._beacons = asyncio.create_task(
                self.node.moderate(auto_grant=None, stop=self._beacons_stop),
                name="relay-session-beacons",
            )
        if self.listen_only:
            self.note("listen-only: this radio transmits nothing")

    async def close(self) -> None:
        """Seal an over in progress, lower a raised hand, stop beacons and bookkeeping."""
        if self.talking:
            with contextlib.suppress(UsageError, LinkError):
                await self.ptt_stop()
        if self.hand_raised:
            with contextlib.suppress(UsageError, LinkError):
                await self.lower_hand()
        self._beacons_stop.set()
        for task in (self._beacons, self._ticker, self._talking, self._hand):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, LinkError, UsageError):
                    await task

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self._poll()

    def _poll(self) -> None:
        """Note what changed without an event: our own grants, expiries, hands, airtime."""
        now = self._now()
        self.room.holds_floor(self.clock())  # lets an expired grant go
        holder = self.room.floor
        if holder != self._floor:
            self._floor, self._floor_since = holder, now
            if holder is None:
                self.note("the floor is free")
            else:
                left = max(0.0, self.room.floor_until - self.clock())
                self.note(f"{self._name(holder)} has the floor ({left:.0f} s)")
        hands = set(self.room.hands)
        for ident in list(self._hand_since):
            if ident not in hands:
                del self._hand_since[ident]
        for ident in self.room.hands:
            self._hand_since.setdefault(ident, now)
        spent = self.member.link.stats.airtime_s
        if spent > self._airtime_seen:
            self._airtime.add(now, spent - self._airtime_seen)
            self._airtime_seen = spent

    def _on_event(self, event: RoomEvent) -> None:
        if isinstance(event, HandRaised):
            self._poll()
            state = "raised" if event.raised else "lowered"
            self.note(f"hand {state}: {self._name(event.member)}")
        elif isinstance(event, OverEnded):
            seconds = event.frames * self.member.mode.frame_seconds
            cut = self._muted(event.speaker) or event.speaker in self.room.removed
            self._overs.append((event.speaker, event.verdict, seconds, self.clock(), cut))
            how = ", cut by a moderator" if cut else ""
            self.note(
                f"over by {self._name(event.speaker)}: {event.verdict} ({seconds:.1f} s{how})"
            )
        elif isinstance(event, MemberChanged):
            if event.member == self.me and event.change in ("muted", "removed"):
                self._stop_talking = True
                if self._hand is not None:
                    self._hand.cancel()
                self.note(
                    "a moderator muted you"
                    if event.change == "muted"
                    else "you were removed from the room: the key rotated without you"
                )
            else:
                self.note(f"{self._name(event.member)} {event.change}")
        elif isinstance(event, KeyRotated):
            self.note(f"new room key (epoch {event.epoch})")
        elif isinstance(event, RelayNoticed):
            self.note(f"relay notice: {event.notice.text}")

    # -------------------------------------------------------------- members
    def _public(self, ident: bytes) -> PublicIdentity | None:
        if ident == self.me:
            return self.member.identity.public
        public = self.member.public_of(ident)
        if public is None:  # a removed member leaves the roster, not our memory
            return self._publics.get(ident)
        self._publics[ident] = public
        return public

    def _name(self, ident: bytes) -> str:
        public = self._public(ident)
        return self.names.contact(ident, public) or short_id(ident, public)

    @staticmethod
    def _in(group: Iterable[bytes], ident: bytes) -> bool:
        """``ident`` is in ``group``, by its full key or the 8-byte prefix beacons carry."""
        return any(g == ident or (len(g) == PREFIX_LEN and ident[:PREFIX_LEN] == g) for g in group)

    def _muted(self, ident: bytes) -> bool:
        return self._in(self.room.muted, ident)

    def _known(self) -> list[bytes]:
        """Everyone this member has heard of in the room, in a stable order (a beacon's
        prefix only when no full key starts with it)."""
        room = self.room
        seen: dict[bytes, None] = {self.me: None}
        for group in (
            room.moderators,
            room.roster,
            room.introduced,
            room.hands,
            sorted(room.muted),
            sorted(room.removed),
            [room.floor] if room.floor else [],
            [speaker for speaker, *_ in self._overs],
        ):
            for ident in group:
                seen.setdefault(ident, None)
        full = [i for i in seen if len(i) != PREFIX_LEN]
        return [
            i for i in seen if len(i) != PREFIX_LEN or not any(f[:PREFIX_LEN] == i for f in full)
        ]

    def _view(self, ident: bytes) -> MemberView:
        room, public = self.room, self._public(ident)
        contact = self.names.contact(ident, public)
        short = short_id(ident, public)
        return MemberView(
            id=ident.hex(),
            name=contact or short,
            short=short,
            fingerprint=public.fingerprint if public is not None else None,
            contact=contact is not None,
            me=ident == self.me,
            moderator=ident in room.moderators,
            muted=self._muted(ident),
            removed=ident in room.removed,
            hand=self._in(room.hands, ident),
            speaking=ident == room.floor and self._speaking(ident),
            enrolled=ident in room.roster,
        )

    def _speaking(self, ident: bytes) -> bool:
        if ident == self.me:
            return self.talking
        return any(o.sender == ident for o in self.playout.live_overs())

    def resolve(self, ref: str) -> bytes:
        """The member ``ref`` names: a contact's name, a fingerprint (or a prefix of one,
        dashes optional), or the identity's hex (or a prefix of it); at least 4 characters
        of a prefix. UsageError if nobody or more than one member matches."""
        text = ref.strip()
        if not text:
            raise UsageError("name a member: a contact's name, a fingerprint or an id")
        known = self._known()
        folded = text.casefold()
        for ident in known:
            if ident.hex() == folded:
                return ident
        for ident in known:
            name = self.names.contact(ident, self._public(ident))
            if name is not None and name.casefold() == folded:
                return ident
        for identity, name in self.names.by_identity.items():
            if name.casefold() == folded:
                return identity
        if folded in (n.casefold() for n in self.names.by_fingerprint.values()):
            raise UsageError(f"contact {text!r} is not in this room (nobody with that fingerprint)")
        if len(folded.replace("-", "")) < 4:
            raise UsageError(f"{text!r} is too short to name a member (4 characters at least)")
        bare = folded.replace("-", "")
        matches = []
        for ident in known:
            public = self._public(ident)
            fingerprint = public.fingerprint.replace("-", "") if public is not None else ""
            if fingerprint.startswith(bare) or ident.hex().startswith(bare):
                matches.append(ident)
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UsageError(f"no member {text!r} in this room")
        names = ", ".join(self._name(m) for m in matches[:5])
        raise UsageError(f"{text!r} names more than one member ({names}): say more")

    def view(self, ref: str) -> MemberView:
        """How the member ``ref`` names is shown (see :meth:`resolve`)."""
        return self._view(self.resolve(ref))

    # -------------------------------------------------------------- snapshot
    def snapshot(self) -> Snapshot:
        """The room as it is now, for a screen (cheap: call it a few times a second)."""
        self._poll()
        now, clock = self._now(), self.clock()
        room = self.room
        holder = room.floor
        floor = FloorView(
            holder=self._view(holder) if holder else None,
            held=now - self._floor_since if holder else 0.0,
            left=max(0.0, room.floor_until - clock) if holder else 0.0,
            mine=holder == self.me,
        )
        hands = tuple(
            HandView(self._view(ident), now - self._hand_since.get(ident, now))
            for ident in room.hands
        )
        overs = tuple(
            OverView(self._view(speaker), verdict, round(seconds, 2), at, cut)
            for speaker, verdict, seconds, at, cut in reversed(self._overs)
        )
        log = self.node.log
        profile = self.member.profile
        health = LinkHealth(
            url=self.member.link.url,
            radio=profile.name,
            alive=self.member.receiving,
            loss=room.heard_loss,
            dropped=sum(log.dropped.values()),
            datagrams=log.datagrams,
            airtime_used=self._airtime.used(now),
            airtime_budget=profile.duty_cycle * AIRTIME_WINDOW,
            window=AIRTIME_WINDOW,
            duty_cycle=profile.duty_cycle,
            rssi=log.rssi,
            snr=log.snr,
        )
        return Snapshot(
            room=self.member.info.name,
            epoch=room.epoch,
            me=self._view(self.me),
            moderator=self.is_moderator,
            listen_only=self.listen_only,
            talking=self.talking,
            hand_raised=self.hand_raised,
            can_talk=self.source is not None,
            floor=floor,
            hands=hands,
            members=tuple(self._view(ident) for ident in self._known()),
            overs=overs,
            level=self._level(now),
            link=health,
            notices=tuple(log.notices[-5:]),
            log=tuple(self._log),
        )

    def _level(self, now: float) -> float:
        if self.talking:
            value, at = self._said
            return value if now - at <= LEVEL_HOLD else 0.0
        best = 0.0
        for over in self.playout.live_overs():
            if over.pcm and over.play_times and now - max(over.play_times.values()) <= LEVEL_HOLD:
                best = max(best, level(over.pcm[-1]))
        return best

    def heard_audio(self) -> np.ndarray:
        """Everything heard so far, over after over (an over still playing included)."""
        overs = [*self.playout.overs, *self.playout.live_overs()]
        audio = [o.audio() for o in overs if o.pcm]
        return np.concatenate(audio) if audio else np.zeros(0, np.int16)

    # -------------------------------------------------------------- actions
    def _may_transmit(self) -> None:
        if self.listen_only:
            raise UsageError("listen-only: this radio stays silent (start without --listen-only)")
        if not self.member.receiving:
            raise UsageError("the link is closed")
        if self.me in self.room.removed:
            raise UsageError("you were removed from this room")

    def _may_moderate(self) -> None:
        self._may_transmit()
        if not self.is_moderator:
            raise UsageError("only a moderator can do that")

    async def act(self, action: str, member: str | None = None, seconds: int | None = None) -> str:
        """Any action by name (what a control socket or a web handler receives)."""
        if action not in ACTIONS:
            raise UsageError(f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
        needs_member = action in ("mute", "unmute", "remove", "appoint")
        if needs_member and not member:
            raise UsageError(f"{action} needs a member")
        if action == "talk":
            return await self.ptt_start()
        if action == "stop":
            return await self.ptt_stop()
        if action == "raise":
            return await self.raise_hand()
        if action == "lower":
            return await self.lower_hand()
        if action == "grant":
            return await self.grant(member, seconds)
        if action == "revoke":
            return await self.revoke()
        if action in ("mute", "unmute"):
            return await self.mute(member or "", unmute=action == "unmute")
        if action == "remove":
            return await self.remove(member or "")
        return await self.appoint(member or "")

    async def ptt_start(self) -> str:
        """Start talking (push-to-talk pressed). A moderator with the floor free takes it; a
        member must have been granted it (raise a hand)."""
        self._may_transmit()
        if self.talking or self._starting:
            return "already talking"
        if self.source is None:
            raise UsageError("nothing to talk with: start with the microphone or --input FILE")
        if self._muted(self.me):
            raise UsageError("a moderator muted you")
        fpp, fits = self.member.frames_per_packet()
        if not fits:
            raise UsageError(
                f"live voice does not fit {self.member.profile.name}: send a voice message "
                "(relay talk or relay clip send)"
            )
        if not self.room.holds_floor(self.clock()):
            holder = self.room.floor
            if not self.is_moderator:
                raise UsageError("you do not hold the floor: raise your hand and wait for a grant")
            if holder is not None:
                raise UsageError(f"{self._name(holder)} holds the floor: revoke it first")
            self._starting = True
            try:
                await self.node.grant_floor(self.me, self.grant_seconds)
                # Talk once the grant's repeats have left the air (as wait_for_floor does).
                await asyncio.sleep(GRANT_REPEATS * self.member.link.airtime(BEACON_SIZE) + 0.05)
            finally:
                self._starting = False
        if self._hand is not None:
            self._hand.cancel()
        self._stop_talking = False
        self._talking = asyncio.create_task(self._talk(fpp), name="relay-session-talk")
        left = max(0.0, self.room.floor_until - self.clock())
        self.note(f"talking ({left:.0f} s of floor left)")
        return "talking"

    async def ptt_stop(self) -> str:
        """Stop talking (push-to-talk released): the over is sealed and the floor released."""
        task = self._talking
        if task is None or task.done():
            return "not talking"
        self._stop_talking = True
        await task
        return "over sealed"

    async def _talk(self, frames_per_packet: int) -> None:
        assert self.source is not None
        mode = self.member.mode
        source = self.source(mode)
        loop = asyncio.get_running_loop()

        async def metered() -> AsyncIterator[np.ndarray]:
            async for pcm in source:
                self._said = (level(pcm), loop.time())
                yield pcm

        spoken = metered()
        try:
            async with contextlib.aclosing(source), contextlib.aclosing(spoken):
                said = await self.node.speak_live(
                    mode,
                    spoken,
                    frames_per_packet,
                    fec=self.fec,
                    dtx=self.dtx,
                    until=lambda: self._stop_talking,
                )
        except (LinkError, UsageError) as exc:
            self.note(f"talking stopped: {exc}")
            return
        seconds = said.positions * mode.frame_seconds
        self._overs.append((self.me, "sent", seconds, self.clock(), self._muted(self.me)))
        why = "" if self._stop_talking else " (the floor ended or the voice ran out)"
        self.note(f"over sealed: {seconds:.1f} s in {said.packets_sent} packets{why}")

    async def ptt_toggle(self) -> str:
        return await (self.ptt_stop() if self.talking else self.ptt_start())

    async def raise_hand(self) -> str:
        """Ask for the floor: the hand goes up between overs and again now and then (it may
        be lost) until a moderator grants the floor or the hand is lowered."""
        self._may_transmit()
        if self._muted(self.me):
            raise UsageError("a moderator muted you: your hand would not be seen")
        if self.hand_raised:
            return "your hand is already up"
        if self.room.holds_floor(self.clock()):
            return "you already hold the floor"
        self._hand = asyncio.create_task(self._wait_for_floor(), name="relay-session-hand")
        self.note("you raised your hand")
        return "hand raised"

    async def _wait_for_floor(self) -> None:
        try:
            granted = await self.node.wait_for_floor(HAND_TIMEOUT)
        except (LinkError, UsageError) as exc:
            self.note(f"hand down: {exc}")
            return
        if granted:
            left = max(0.0, self.room.floor_until - self.clock())
            self.note(f"you have the floor for {left:.0f} s: push to talk")
        else:
            self.note("nobody granted the floor: your hand is down")

    async def lower_hand(self) -> str:
        self._may_transmit()
        task = self._hand
        if task is None or task.done():
            return "your hand is not up"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.node.send(self.room.lower_hand(self.clock()))
        self.note("you lowered your hand")
        return "hand lowered"

    async def toggle_hand(self) -> str:
        return await (self.lower_hand() if self.hand_raised else self.raise_hand())

    # -------------------------------------------------------------- moderating
    async def grant(self, member: str | None = None, seconds: int | None = None) -> str:
        """Give the floor to ``member`` (default: the first raised hand)."""
        self._may_moderate()
        if member:
            ident = self.resolve(member)
        else:
            ident = self.room.next_hand()
            if ident is None:
                raise UsageError("no hand is raised")
        seconds = seconds or self.grant_seconds
        await self.node.grant_floor(ident, seconds)
        self._poll()
        return f"granted the floor to {self._name(ident)} for {seconds} s"

    async def revoke(self) -> str:
        """Take the floor back from whoever holds it."""
        self._may_moderate()
        self.room.holds_floor(self.clock())  # lets an expired grant go
        holder = self.room.floor
        if holder is None:
            raise UsageError("nobody holds the floor")
        await self.node.announce(self.room.revoke(self.clock()))
        self.playout.cut(holder)
        self._poll()
        return f"took the floor from {self._name(holder)}"

    async def mute(self, member: str, *, unmute: bool = False) -> str:
        """Mute a member (their voice stops at once, everywhere; the floor is taken from
        them) or unmute them."""
        self._may_moderate()
        ident = self.resolve(member)
        if ident == self.me and not unmute:
            raise UsageError("you cannot mute yourself")
        if unmute and not self._muted(ident):
            raise UsageError(f"{self._name(ident)} is not muted")
        if not unmute and self._muted(ident):
            raise UsageError(f"{self._name(ident)} is already muted")
        await self.node.announce(self.room.mute(ident, self.clock(), unmute=unmute))
        if not unmute:
            self.playout.cut(ident)
        self._poll()
        text = f"{'unmuted' if unmute else 'muted'} {self._name(ident)}"
        self.note(text)
        return text

    async def toggle_mute(self, member: str) -> str:
        ident = self.resolve(member)
        return await self.mute(ident.hex(), unmute=self._muted(ident))

    async def remove(self, member: str) -> str:
        """Remove a member: a new room key goes to everyone else enrolled."""
        self._may_moderate()
        ident = self.resolve(member)
        if ident == self.me:
            raise UsageError("you cannot remove yourself")
        if ident in self.room.removed:
            raise UsageError(f"{self._name(ident)} was already removed")
        name = self._name(ident)  # (remembers their public id, which leaves the roster)
        keep = len([i for i in self.room.roster if i not in (ident, self.me)])
        # Rotates our key (persisted) and sends the removal and the rekey's first copy; the
        # later copies go out from the moderator loop (RoomNode.moderate) when due.
        await self.node.remove(ident)
        self.playout.cut(ident)
        with contextlib.suppress(UsageError):  # not on our roster: nothing to forget
            self.member.rooms.remove_member(self.member.info.room_id, ident)
        text = f"removed {name}: new room key (epoch {self.room.epoch}) sent to {keep} members"
        self.note(text)
        return text

    async def appoint(self, member: str) -> str:
        """Make a member a co-moderator (we must know their public id)."""
        self._may_moderate()
        ident = self.resolve(member)
        if ident in self.room.moderators:
            raise UsageError(f"{self._name(ident)} is already a moderator")
        public = self._public(ident)
        if public is None:
            raise UsageError(
                f"{self._name(ident)} never introduced themselves: their public id is unknown"
            )
        await self.node.send(self.room.appoint(public, self.clock()))
        with contextlib.suppress(UsageError):
            self.member.rooms.add_moderator(self.member.info.room_id, public)
        text = f"appointed {self._name(ident)} moderator"
        self.note(text)
        return text


@contextlib.asynccontextmanager
async def open_session(
    home: Home,
    room_ref: str,
    url: str,
    *,
    listen_only: bool = False,
    playout: Playout | None = None,
    source: AudioSource | None = None,
    names: Names | None = None,
    clock: RoomClock = time.time,
    seed: int | None = None,
    grant_seconds: int = GRANT_SECONDS,
    beacons: bool = True,
    fec: bool = False,
    dtx: bool = False,
    link: Link | None = None,
) -> AsyncIterator[RoomSession]:
    """Join ``room_ref`` in ``home`` on the link at ``url`` and run a :class:`RoomSession`.

    Members are named from the home's contacts unless ``names`` is given. Errors about the
    identity, the room or the link come before anything is transmitted.
    """
    if names is None:
        names = Names(Contacts(home).list())
    async with open_member(
        home, room_ref, url, playout=playout, clock=clock, seed=seed, link=link
    ) as m:
        session = RoomSession(
            m,
            names=names,
            listen_only=listen_only,
            source=source,
            grant_seconds=grant_seconds,
            fec=fec,
            dtx=dtx,
        )
        await session.start(beacons=beacons)
        try:
            yield session
        finally:
            await session.close()
