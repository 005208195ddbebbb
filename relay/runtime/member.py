"""One member of one room on one link, opened from a home: what talk, listen and moderate share.

:func:`open_member` resolves the room in the home's room store, opens the link, builds the
:class:`~relay.core.room.Room` (moderators from the room's record; the enrolled roster when
we moderate, so key rotations reach silent listeners; the MTU from the link) and starts a
:class:`~relay.runtime.room.RoomNode` receiving. Around the node it keeps the state that must
outlive the process:

* send counters in the home's ``counters.db`` (never reuse a nonce across restarts);
* rotated room keys and the hourly ratchet, written to the room store as soon as they
  happen (the key tree or our path with them), erasing the older keys; a silent room
  ratchets on a timer (TICK_SECONDS), so its old keys go on time;
* replay windows in ``replay.db`` (per sender session): restored at start, saved after every
  over, whenever a member introduces itself, and on exit, so a restarted listener does not accept a
  recording of what it already heard and still knows who introduced itself.

The room clock is the wall clock (``time.time``): moderation actions and beacons carry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from relay.core.identity import Identity, PublicIdentity
from relay.core.invite import RoomInfo
from relay.core.room import KeyState, MemberChanged, OverEnded, Room, RoomEvent
from relay.core.wire import VOICE_PACKET_MAX_OVERHEAD
from relay.demo.voice import choose_frames_per_packet
from relay.errors import LinkError, UsageError
from relay.links.base import Link
from relay.links.sim.channel import remote_address
from relay.links.url import open_link
from relay.plan import Budget
from relay.radio.profiles import RadioProfile, preset
from relay.runtime.room import EventHook, RoomNode
from relay.runtime.voice import Playout, RoomClock
from relay.store.counters import CounterStore
from relay.store.home import Home
from relay.store.replay import REPLAY_LABEL, ReplayStore
from relay.store.rooms import MODERATOR, RoomStore
from relay.voice.modes import CodecMode, mode_by_name

CLOSE_TIMEOUT = 2.0
TICK_SECONDS = 30.0  # how often a silent room checks whether its keys must ratchet
LINK_UP_TIMEOUT = 15.0  # seconds a Meshtastic node may take to answer when a member starts


async def open_link_async(url: str) -> Link:
    """Open ``url`` from inside a running loop (an ether in another process without blocking)."""
    if remote_address(url) is not None:
        from relay.links.sim.client import open_remote

        return await open_remote(url)
    return open_link(url)


@dataclass
class Member:
    """Everything one member needs in one room; see :func:`open_member`."""

    home: Home
    identity: Identity
    info: RoomInfo
    role: str
    link: Link
    room: Room
    node: RoomNode
    rooms: RoomStore
    counters: CounterStore
    replay: ReplayStore
    clock: RoomClock
    on_event: EventHook | None = None
    key_errors: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ what the room is
    @property
    def mode(self) -> CodecMode:
        return mode_by_name(self.info.mode)

    @property
    def is_moderator(self) -> bool:
        return self.room.is_moderator

    @property
    def profile(self) -> RadioProfile:
        """The radio the link really is (an ether says), else the room's preset."""
        profile = getattr(self.link, "profile", None)
        if profile is None:
            profile = getattr(getattr(self.link, "ether", None), "profile", None)
        return profile if profile is not None else preset(self.info.preset)

    def radio_mismatch(self) -> str | None:
        """A warning when the link's radio is not the one the room was created for."""
        actual = self.profile.name
        if actual.upper() != self.info.preset.upper():
            return (
                f"room {self.info.name!r} is set up for {self.info.preset} but the link is "
                f"{actual}; airtime and latency follow the link"
            )
        return None

    @property
    def budget(self) -> Budget:
        """The room's delay budget (from its invite), else the planner's default."""
        return self.info.budget or Budget()

    def frames_per_packet(self, mode: CodecMode | None = None) -> tuple[int, bool]:
        """The planner's frames per packet for ``mode`` (default: the room's) on this link
        within the room's delay budget, and whether live voice fits; never more than the
        link's MTU carries."""
        mode = mode or self.mode
        fpp, fits = choose_frames_per_packet(self.profile, mode, budget=self.budget)
        most = (self.link.mtu - VOICE_PACKET_MAX_OVERHEAD) // mode.bytes_per_frame
        if most < 1:
            raise UsageError(
                f"the link's MTU of {self.link.mtu} B cannot carry one Codec2 {mode.name} "
                f"frame after {VOICE_PACKET_MAX_OVERHEAD} B of header, live check and tag"
            )
        fpp = min(fpp, most)
        # Our next over's live-check intervals are cut to this packet length (see Room).
        self.room.packet_seconds = fpp * mode.frame_seconds
        return fpp, fits

    def public_of(self, ident: bytes) -> PublicIdentity | None:
        """A member's public id if we know it: enrolled, a moderator, or introduced by HELLO."""
        introduced = getattr(self.room, "introduced", {})
        return (
            self.room.roster.get(ident) or self.room.moderators.get(ident) or introduced.get(ident)
        )

    def name_of(self, ident: bytes) -> str:
        """A member's fingerprint when we know their public id (roster, hello), else short hex."""
        public = self.public_of(ident)
        return public.fingerprint if public is not None else ident[:6].hex()

    @property
    def fingerprint(self) -> str:
        return self.identity.public.fingerprint

    # ------------------------------------------------------------------ running
    def _start(self) -> None:
        self._task = asyncio.create_task(self.node.run(), name=f"relay-member-{self.info.name}")

    @property
    def receiving(self) -> bool:
        """False once the link has closed under us (the ether went away)."""
        return self._task is not None and not self._task.done()

    async def link_closed(self) -> None:
        """Wait until the link closes (the node stops receiving)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    # ------------------------------------------------------------------ durable state
    def restore_marks(self) -> int:
        """Give the receiver the replay windows saved for the current room key."""
        marks = self.replay.load(self.room.keys.key_id)
        # Marks of members we do not know yet (strangers) count against the receiver's bound
        # on introduced members like their HELLOs did: a flood saved yesterday cannot fill
        # memory today (Receiver.restore).
        self.room.receiver.restore(marks)
        return len(marks)

    def save_marks(self) -> None:
        self.replay.save(self.room.keys.key_id, self.room.receiver.export())

    def save_mark(self, ident: bytes) -> None:
        """One member's windows only (an introduction): not every peer's on each newcomer."""
        marks = [m for m in self.room.receiver.export() if m.identity == ident]
        if marks:
            self.replay.save(self.room.keys.key_id, marks)

    def _key_rotated(self, state: KeyState) -> None:
        try:
            self.rooms.save_key_state(self.info.room_id, state)
        except UsageError as exc:  # already stored (e.g. from a newer invite)
            self.key_errors.append(str(exc))
        self.restore_marks()

    async def remove(self, member: bytes) -> None:
        """Remove ``member`` from the room (we moderate): the key rotates, and they leave
        the stored roster, so no later rekey is ever sealed to them."""
        await self.node.remove(member)
        self.rooms.remove_member(self.info.room_id, member)

    async def _ticking(self) -> None:
        """Ratchet on time even when nothing arrives (the room also ratchets per packet)."""
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self.room.tick(self.clock())
                if self.room.tree is not None:  # members invited --for meanwhile get rekeys
                    self.rooms.merge_leaves(self.info.room_id, self.room.tree)
            except UsageError as exc:  # the database is busy: try again next time
                self.key_errors.append(str(exc))

    def _event(self, event: RoomEvent) -> None:
        # After an over, and when a member introduces itself: a restart (even kill -9) then
        # still knows the member (no second HELLO needed) and what it already accepted.
        if isinstance(event, OverEnded):
            self.save_marks()
        elif isinstance(event, MemberChanged) and event.change == "introduced":
            self.save_mark(event.member)  # one row, not every peer's: newcomers are cheap
        if isinstance(event, MemberChanged) and event.change == "removed":
            # Off the roster for good: a restarted moderator must not seal keys to them.
            with contextlib.suppress(UsageError):
                self.rooms.remove_member(self.info.room_id, event.member)
        if self.on_event is not None:
            self.on_event(event)


@contextlib.asynccontextmanager
async def open_member(
    home: Home,
    room_ref: str,
    url: str,
    *,
    playout: Playout | None = None,
    on_event: EventHook | None = None,
    clock: RoomClock = time.time,
    seed: int | None = None,
    require_moderator: bool = False,
    link: Link | None = None,
) -> AsyncIterator[Member]:
    """Join ``room_ref`` (a name or id prefix in ``home``) on the link at ``url``.

    The node receives in the background from the moment this yields; on exit the replay
    marks are saved and the link and the databases are closed. Errors about the room (no
    identity, unknown room, ``require_moderator`` and we are not one) come before the link
    is opened. ``link``: an open link to use instead of opening ``url`` (a tap of a
    radio shared by several members, :mod:`relay.links.shared`); it is closed on exit too.
    """
    identity = home.identity()
    async with contextlib.AsyncExitStack() as stack:
        rooms = stack.enter_context(RoomStore(home))
        info = rooms.get(room_ref)
        keys = rooms.advance(info.room_id, clock())  # erase what the hours since made old
        info = rooms.get(room_ref)
        role = rooms.role(info.room_id)
        roster = rooms.roster(info.room_id) if role == MODERATOR else []
        if require_moderator and info.moderator_index(identity.public.signing_key) is None:
            raise UsageError(
                f"only a moderator can moderate {info.name!r}; you are "
                + ("a member of it" if role != MODERATOR else "not one of its moderators")
            )
        if link is None:
            link = await open_link_async(url)
        stack.push_async_callback(_close_link, link)
        await link_up(link)
        counters = CounterStore(home.counters_db)
        stack.callback(counters.close)
        replay = ReplayStore(home.replay_db, home.unlock().sealer(REPLAY_LABEL))
        stack.callback(replay.close)
        room = Room(
            info.room_id,
            info.key,
            info.epoch,
            info.moderators,
            identity,
            counters,
            roster=roster,
            mtu=link.mtu,
            step=keys.step,
            tree=keys.tree,
            path=keys.path,
        )
        member: Member
        node = RoomNode(
            room,
            link,
            clock,
            playout=playout,
            on_event=lambda event: member._event(event),
            on_key=lambda state: member._key_rotated(state),
            seed=seed,
        )
        member = Member(
            home, identity, info, role, link, room, node, rooms, counters, replay, clock, on_event
        )
        member.restore_marks()
        member._start()
        ticker = asyncio.create_task(member._ticking())
        stack.callback(ticker.cancel)
        stack.push_async_callback(_stop, member)
        yield member


async def link_up(link: Link, timeout: float | None = None) -> None:
    """Wait until ``link`` reaches its radio or broker: a dead port, a refused login or an
    unplugged node is then an error now, not a silent room. KISS and MQTT links fail at
    their first attempt; a Meshtastic node gets ``timeout`` s (LINK_UP_TIMEOUT) to answer."""
    connect = getattr(link, "connect", None)
    if connect is not None:
        await connect()
        return
    wait_connected = getattr(link, "wait_connected", None)
    if wait_connected is not None:
        await wait_connected(LINK_UP_TIMEOUT if timeout is None else timeout)


async def _close_link(link: Link) -> None:
    with contextlib.suppress(LinkError, OSError):
        await link.close()


async def _stop(member: Member) -> None:
    member.save_marks()
    await _close_link(member.link)
    task = member._task
    if task is not None and not task.done():
        try:
            await asyncio.wait_for(task, CLOSE_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError, LinkError):
            task.cancel()


async def wait_for_grant(member: Member, timeout: float, poll: float = 0.05) -> bool:
    """Wait for the floor without raising a hand (a moderator grants it on their own)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not member.room.holds_floor(member.clock()):
        if loop.time() >= deadline or not member.receiving:
            return False
        await asyncio.sleep(poll)
    return True


def floor_seconds_left(member: Member) -> float:
    """Seconds of the current grant left to us (0 if we do not hold the floor)."""
    now = member.clock()
    return max(0.0, member.room.floor_until - now) if member.room.holds_floor(now) else 0.0
