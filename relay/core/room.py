"""The room: floor control, moderation, verified overs and key rotation (sans-I/O).

One ``Room`` is one member's view of one room. Methods that act (raise a hand, grant the
floor, speak, remove someone) return the packets to send; ``receive`` takes a packet and the
time and returns what happened. Nothing here touches a socket or a clock.

Rules every receiver enforces:
* Only a moderator's signature changes the floor, mutes, removes or appoints; holding the
  room key is not enough. Each moderator's actions must come in increasing packet-counter
  order, and the signature covers the packet header, so an old action cannot be replayed,
  re-wrapped or reordered.
* Voice is played only from the member who holds the floor, under the sender session and
  within the counter range its grant named, while the grant lasts, and never from a muted
  or removed member.
* No packet moves a replay window unless the room accepted it: control kinds must be signed
  by their sender; unsigned packets (voice, clips) may move a window at most UNSIGNED_AHEAD
  past the sender's last signed counter or granted range (see relay.core.session), so a
  member holding the room key cannot silence another with a forged counter.
* Each over ends with the speaker's signature over digests of its frames: listeners mark it
  verified, partial (some frames lost, nothing contradicted) or forged. During the over,
  keys the speaker reveals one interval late (relay.core.live, anchored in its signed hand
  raise) verify or flag its words within about a second.
* Removing a member rotates the room key. The moderator holding the room's key tree
  (relay.core.keytree) replaces the keys on the removed member's path and sends about
  log2(N) wraps, named by tree node; members enrolled without a leaf get the key sealed to
  their X25519 key. The removed member cannot read anything sent afterwards. Copies of the
  rekey go out spread in time (:meth:`Room.due`), so a member that lost one recovers
  without transmitting.
* Every key ratchets forward each hour by the clock (forward secrecy, nothing sent): the
  room key and every key-tree key; the old ones stay in memory for a short grace only.
"""

from __future__ import annotations

import math
import os
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from relay.core import live
from relay.core import roommsg as msg
from relay.core.crypto import RoomKeys
from relay.core.events import ClipData, ControlMessage, Hello, Rejected, VoiceFrames
from relay.core.ham import is_ham
from relay.core.identity import Identity, PublicIdentity, valid_agreement_key, verify
from relay.core.keytree import KeyTree, MemberPath, ratchet, ratchet_step, step_start
from relay.core.notice import RelayNotice, is_notice, parse_notice
from relay.core.sealed import ephemeral_public, new_ephemeral, open_sealed, seal_for
from relay.core.session import (
    HINT_TOLERANCE,
    INTRO_EVERY,
    CounterSource,
    GateAnswer,
    Receiver,
    Sender,
    Signed,
)
from relay.core.signing import signed_message, split_signature
from relay.core.wire import CONTROL_PACKET_OVERHEAD, SESSION_LEN, ControlKind, fec_mode
from relay.errors import PacketError, UsageError
from relay.voice.modes import CodecMode

STALE_ACTION = 600.0  # seconds: a moderation action older than this is not applied
REKEY_GRACE = 30.0  # seconds the previous key is still accepted from remaining members
# Packets whose loss hurts a whole over or cuts a member out go out more than once: at 10 %
# loss two copies miss 1 % of the time, three 0.1 %.
SEAL_COPIES = 2
# Voice counters a grant admits: its duration at the highest packet rate any mode can use
# (3200 at one frame a packet, 50/s) plus slack for counter blocks skipped on a restart.
MAX_PACKET_RATE = 50
COUNTER_SLACK = 256
SIGNED_KINDS = frozenset(
    (
        ControlKind.OVER_END,
        ControlKind.HAND,
        ControlKind.MOD,
        ControlKind.BEACON,
        ControlKind.REKEY,
        ControlKind.LIVE_BASE,
    )
)
REPLAY_WINDOW = 4096
# How far past its sender's last signed counter (or a moderator's vouched range) an unsigned
# packet (voice, clip) may move a replay window: far enough for a long clip transfer between
# introductions (senders say who they are every INTRO_EVERY unsigned packets), and far enough
# inside the window that a packet forged at the bound leaves every real one in reach.
UNSIGNED_AHEAD = 2048
SKIPPED = b""  # a position the speaker skipped (DTX), as the over seal covers it
MAX_POSITION = 1 << 20  # frames in one over (about 11 h of 1600): bounds playout buffers
MODERATOR_KINDS = frozenset((ControlKind.MOD, ControlKind.BEACON, ControlKind.REKEY))
REKEY_COPIES = 3
# Seconds after a removal at which the copies of its rekey go out: a burst of loss or one
# collision cannot take all of them, and a member that lost one catches the next, silently.
REKEY_DELAYS = (0.0, 10.0, 40.0, 120.0, 300.0)
RATCHET_GRACE = 300.0  # seconds the previous hour's key still opens packets (clock skew)
RATCHET_SKEW = 120.0  # seconds before the hour at which the next hour's key is tried too
MAX_STEPS_AHEAD = 1  # a rekey made at most this many hours ahead of our clock is applied
DEFAULT_MTU = 233
BEACON_SHARE = 0.02  # beacons may use at most this share of the channel's airtime
BEACON_MIN_INTERVAL = 5.0
# Live checks (relay.core.live): an interval of the speaker's key chain lasts about this
# much speech, so a listener flags injected words about two intervals after they were
# "said" at worst (well within 2 s), even when it lost the packet revealing one key.
LIVE_INTERVAL_SECONDS = 0.64
# Fingerprints of the floor holder's latest packets a listener keeps, by counter, to tell
# a second packet under one counter: what an injector can make it hold.
MAX_PENDING = live.MAX_PENDING
# Raised hands of members the moderator has not enrolled (strangers: anyone holding the room
# key can mint them) wait in a queue at most this long; enrolled members' hands always get in
# and are granted first.
MAX_STRANGER_HANDS = 16
# Frames of one over kept to check its seal (and DTX skips filled in): a key holder
# injecting as the floor holder could otherwise make a listener keep a million positions.
# Frames past the cap are still played, but the over can then only be *partial*. 16,384
# frames are 11 minutes of 1600 (5.5 of 3200); a DTX skip is never longer than 100 frames.
MAX_KEPT_FRAMES = 1 << 14
MAX_SKIP_FILL = 128


# ---------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class Voice:
    """Frames from the floor holder, to be played."""

    frames: VoiceFrames


@dataclass(frozen=True, slots=True)
class Clip:
    """A voice-message packet from a member allowed to speak in the room (see relay.clip)."""

    sender: bytes
    payload: bytes
    counter: int


@dataclass(frozen=True, slots=True)
class OverEnded:
    speaker: bytes
    verdict: str  # verified | partial | forged | unsigned
    frames: int
    segments_ok: int = 0
    segments_total: int = 0


@dataclass(frozen=True, slots=True)
class SpeechVerified:
    """Voice packets of the floor holder that it is now known to have sent: their live MACs
    checked out under a key it revealed afterwards (``live``, about an interval after the
    words) or, for the last packets of an over, its signed seal covers them (``seal``).
    These frames at these positions are the speaker's words; a listener that plays only what
    is verified (``relay listen --verified-only``) plays exactly these."""

    speaker: bytes
    packets: tuple[VoiceFrames, ...]
    by: str


@dataclass(frozen=True, slots=True)
class SpeechFlagged:
    """Words were received in the floor holder's name that it did not say: a key it revealed
    contradicts their live MAC (``live``) or they revealed a key that is not its (``link``),
    they came under a counter the speaker reached only after it had said those positions
    (``ahead``), or two authentic packets came under one counter (``counter``: one of them
    was injected). ``positions``: the over positions concerned."""

    speaker: bytes
    positions: tuple[int, ...]
    reason: str
    time: float


@dataclass(frozen=True, slots=True)
class FloorChanged:
    holder: bytes | None
    until: float


@dataclass(frozen=True, slots=True)
class HandRaised:
    member: bytes
    raised: bool


@dataclass(frozen=True, slots=True)
class GrantAsked:
    """The floor holder raised its hand again: it did not hear its grant (a moderator's
    node answers with a beacon, which repeats the grant)."""

    member: bytes


@dataclass(frozen=True, slots=True)
class MemberChanged:
    member: bytes
    change: str  # introduced | muted | unmuted | removed | appointed


@dataclass(frozen=True, slots=True)
class KeyRotated:
    epoch: int
    key: bytes = field(repr=False)
    step: int = 0


@dataclass(frozen=True, slots=True)
class KeyState:
    """Every key this member holds for the room, after a change (rotation or ratchet): what
    the store must save, replacing (and erasing) what it held before."""

    epoch: int
    step: int
    key: bytes = field(repr=False)
    tree: KeyTree | None = field(default=None, repr=False)  # the tree holder's whole tree
    path: MemberPath | None = field(default=None, repr=False)  # a member's leaf-to-root keys


@dataclass(frozen=True, slots=True)
class LossReport:
    """A member who transmits anyway (a speaker's seal, the moderator's beacon) said how many
    packets it missed lately, in percent. Listeners never report (they never transmit)."""

    reporter: bytes
    loss: int
    time: float


@dataclass(frozen=True, slots=True)
class RelayNoticed:
    """A relay (bridge or repeater) says it is not forwarding an over of this room.

    Signed by the relay, but anyone can run a relay: information to show, never acted on."""

    notice: RelayNotice


@dataclass(frozen=True, slots=True)
class Dropped:
    """A packet that reached the room but was not acted on; ``reason`` is a counter key."""

    reason: str
    detail: str


RoomEvent = (
    Voice
    | Clip
    | OverEnded
    | SpeechVerified
    | SpeechFlagged
    | FloorChanged
    | HandRaised
    | GrantAsked
    | MemberChanged
    | KeyRotated
    | LossReport
    | RelayNoticed
    | Dropped
)
LOSS_SMOOTHING = 0.5  # weight of the newest over in our own loss estimate


@dataclass
class _Listening:
    """Frames of the current over of one speaker, kept to check its end-of-over seal."""

    frames: dict[int, bytes] = field(default_factory=dict)  # the first frame played per position
    conflict: bool = False
    # DTX: the speaker skips silent frames. A packet whose counter directly follows the last
    # one but whose position jumps proves (as far as room-level authentication goes; the seal
    # decides) that the positions between were skipped: they are kept as b"" so the seal,
    # which covers skips too, can still verify the segment.
    last_counter: int | None = None
    last_end: int = -1
    # The key last_counter counts under: at the hourly ratchet an over's packets come under
    # two keys, whose counters are unrelated, so skips are inferred within one key only.
    last_key: object = None
    # FEC: positions whose lower-rate copy arrived before (or instead of) the primary. The
    # seal covers primaries only, so a copy that may have been played leaves the over partial.
    copies: set[int] = field(default_factory=set)
    unkept: int = 0  # frames played but not kept (past MAX_KEPT_FRAMES): not verifiable
    # Live checks (relay.core.live): the checker of this over (None: no anchor, or another
    # key than the grant's); (positions, fingerprint) of the latest packets by counter, to
    # tell a second packet under one counter; positions verified; whether anything was
    # flagged.
    live: live.Checker[VoiceFrames] | None = None
    # Packets no checker took (by key id and counter: keys change mid-over), for the seal;
    # the checker of the key before a key change, until the speaker's rebase adopts it.
    unchecked: dict[tuple[str, int], VoiceFrames] = field(default_factory=dict)
    retired: live.Checker[VoiceFrames] | None = None
    seen: dict[int, tuple[tuple[int, ...], bytes]] = field(default_factory=dict)
    verified: set[int] = field(default_factory=set)
    flagged: bool = False

    def follows(self, counter: int) -> bool:
        """``counter`` directly follows the last voice packet's (the speaker sent nothing
        between: for telling DTX skips from loss)."""
        return self.last_counter is not None and counter == self.last_counter + 1


def _positions(event: VoiceFrames) -> tuple[int, ...]:
    return tuple(range(event.position, event.position + len(event.frames)))


def _fingerprint(event: VoiceFrames) -> bytes:
    """What a voice packet says (for telling two packets under one counter apart)."""
    red = 0xFF if event.redundant_mode is None else event.redundant_mode.wire_index
    return live.voice_fields(
        "", b"", 0, event.mode.wire_index, event.position, event.frames, red, event.redundant
    )


def _note_verified(listening: _Listening, event: VoiceFrames) -> None:
    """Positions a live check verified, for the seal's verdict (kept as the frames are)."""
    if len(listening.verified) < MAX_KEPT_FRAMES:
        listening.verified.update(_positions(event))


def _cap(table: dict[int, Any], limit: int) -> None:
    """Keep the ``limit`` highest counters of ``table`` (the oldest go first)."""
    while len(table) > limit:
        del table[min(table)]


def _grant_range(first: int, seconds: int) -> tuple[int, int] | None:
    """Voice counters a grant admits; never wider than the replay window."""
    if first == msg.NO_COUNTER:
        return None
    span = min(seconds * MAX_PACKET_RATE + COUNTER_SLACK, REPLAY_WINDOW - 64)
    return first, first + span


def _grant_extra(extra: bytes) -> tuple[int, bytes | None, live.Anchor | None]:
    """A grant's first voice counter, the speaker's session and its live anchor
    (NO_COUNTER, None, None: absent)."""
    if len(extra) < 3 + SESSION_LEN:
        return msg.NO_COUNTER, None, None
    anchor = live.Anchor.parse(extra[3 + SESSION_LEN :]) if len(extra) > 3 + SESSION_LEN else None
    return int.from_bytes(extra[:3], "big"), bytes(extra[3 : 3 + SESSION_LEN]), anchor


class Room:
    """One member's view of one room."""

    def __init__(
        self,
        room_id: bytes,
        key: bytes,
        epoch: int,
        moderators: Iterable[PublicIdentity],
        me: Identity,
        counters: CounterSource,
        *,
        roster: Iterable[PublicIdentity] = (),
        mtu: int = DEFAULT_MTU,
        step: int | None = None,
        tree: KeyTree | None = None,
        path: MemberPath | None = None,
    ) -> None:
        """``key`` is the room key at ratchet ``step`` (None: at the step of the first
        ``now`` seen). ``tree``: we hold the room's key tree (we enroll members and rotate
        keys on removals); ``path``: our own leaf-to-root keys from our invite."""
        self.room_id = room_id
        self.me = me
        self._counters = counters
        self.mtu = mtu
        self.moderators: dict[bytes, PublicIdentity] = {m.identity: m for m in moderators}
        if not self.moderators:
            raise UsageError("a room needs at least one moderator")
        # Members whose X25519 key we know: they receive new keys when someone is removed.
        self.roster: dict[bytes, PublicIdentity] = dict(self.moderators)
        for member in roster:
            self.roster[member.identity] = member
        self.epoch = epoch
        self.floor: bytes | None = None
        self.floor_until = 0.0
        self.grant_seq = 0
        self.grant_range: tuple[int, int] | None = None  # voice counters the grant admits
        self.floor_session: bytes | None = None  # the session the floor holder speaks under
        self.floor_anchor: live.Anchor | None = None  # the live anchor of its over
        self.hands: list[bytes] = []
        self.muted: set[bytes] = set()
        self.removed: set[bytes] = set()
        self.stats: Tally[str] = Tally()
        # Highest packet counter of an applied action, per (key id, moderator, session):
        # each room key and each sender session has its own counter space. Across sessions
        # (a moderator restarted, restored or on two devices) the signed times must not go
        # back: the latest applied, per (key id, moderator).
        self._last_action: dict[tuple[str, bytes, bytes], int] = {}
        self._last_issued: dict[tuple[str, bytes], int] = {}
        self._listening: dict[bytes, _Listening] = {}
        self._my_over: dict[int, bytes] = {}
        self._my_fpp = 1
        # Live checks of our own next over: the key chain our hand raise announced, and
        # the speech one packet of ours lasts (the driver sets it; intervals last about
        # LIVE_INTERVAL_SECONDS). live_bytes: what the checks added to our voice packets.
        self._chain: live.Chain | None = None
        # After a key change mid-over: the key our intervals now count under and where they
        # start, and the signed rebase that tells listeners so (see live_packets).
        self._live_base: tuple[RoomKeys, live.Base] | None = None
        self._live_out: list[bytes] = []
        self.packet_seconds = 0.16
        self.live_interval = LIVE_INTERVAL_SECONDS
        self.live_bytes = 0
        # (key id, speaker) -> grant of the last seal handled: grants restart with each key.
        self._sealed: dict[tuple[str, bytes], int] = {}
        # Called with the new KeyState whenever a key changes (our own removal of a member, a
        # rekey we received, the hourly ratchet): the caller persists it, erasing the old.
        self.on_rotate: Callable[[KeyState], None] | None = None
        self.step = step
        self.tree = tree
        self.path = path
        self._stale_keys: RoomKeys | None = None  # the key before a removal: control only
        # The key whose counters grant_range counts: each key (hour, epoch) restarts them.
        self._grant_keys: RoomKeys | None = None
        self._next: tuple[int, Receiver] | None = None  # next hour's key, near the hour
        self._scheduled: list[tuple[float, int, bytes]] = []  # (when, epoch, rekey copy)
        self._queued_removals: list[bytes] = []  # removals by co-moderators to rekey for
        self._rekey_regranted: int | None = None  # epoch whose rekey a grant sent again
        # Our over in progress keeps the key it started under, through the hour's ratchet
        # (until the grace ends), so its counters run on and listeners can tell DTX skips:
        # (sender, keys, until).
        self._over_key: tuple[Sender, RoomKeys, float] | None = None
        # (session, counter) of each member's signed hand raise: a grant names both, and
        # repeats the live anchor the hand carried.
        self._hand_counter: dict[bytes, tuple[bytes, int]] = {}
        self._hand_anchor: dict[bytes, live.Anchor | None] = {}
        self.introduced: dict[bytes, PublicIdentity] = {}  # said HELLO; not enrolled
        self._previous: tuple[Receiver, float] | None = None
        self._gated_body = b""
        # Our own packet loss on overs we heard (EWMA, 0..1; None until we heard one): sent
        # in our seals and beacons, never on its own (a listener stays silent).
        self.heard_loss: float | None = None
        self._install_key(key)
        self._opened_with = self.keys

    # ------------------------------------------------------------------ keys & sessions
    def _make_receiver(self, keys: RoomKeys, old: Receiver | None = None) -> Receiver:
        # A window as wide as a grant's counter range: packets injected ahead by a member
        # holding the room key cannot push the speaker's real packets out of it.
        receiver = Receiver(keys, window=REPLAY_WINDOW, ahead=UNSIGNED_AHEAD)
        receiver.gate = self._gate
        receiver.introducers = self.moderators
        receiver.on_forget = self._forget_stranger
        for ident in self.roster:
            if ident not in self.removed:
                receiver.add_sender(ident)
        if self.floor is not None:
            receiver.add_sender(self.floor)
        if old is not None:
            receiver.adopt(old)  # the sessions the old key's receiver knew stay introduced
        return receiver

    def _install_key(self, key: bytes, receiver: Receiver | None = None) -> None:
        self._room_key = key
        self.keys = receiver.keys if receiver is not None else RoomKeys(key)
        # One session per start of this process, kept across key rotations (the keys differ,
        # so no nonce repeats; members who knew our session still do).
        previous = getattr(self, "sender", None)
        session = previous.session if previous is not None else None
        self.sender = Sender(self.keys, self.me.identity, self._counters, session=session)
        self.receiver = receiver if receiver is not None else self._make_receiver(self.keys)

    def _restart_counters(self, keep_range: bool = False) -> None:
        # Counters restart under a new key: hand counters of the old one are void, and so is
        # a grant's range, except (``keep_range``, the hourly ratchet) for packets still
        # arriving under the key it was given in (see _grant_keys).
        self._hand_counter.clear()
        self._hand_anchor.clear()
        if not keep_range:
            self.grant_range = None

    def _rotate_to(self, key: bytes, epoch: int, now: float, step: int) -> KeyRotated:
        old = self.receiver
        for ident in self.removed:
            old.forget_sender(ident)
        self._previous = (old, now + REKEY_GRACE)
        self._stale_keys = old.keys
        self._next = None
        self._over_key = None  # after a removal the old key carries no voice
        self.epoch = epoch
        self.step = step
        self._restart_counters()
        self._install_key(key, self._make_receiver(RoomKeys(key), old))
        self._notify()
        return KeyRotated(epoch, key, step)

    def _notify(self) -> None:
        if self.on_rotate is not None and self.step is not None:
            self.on_rotate(KeyState(self.epoch, self.step, self._room_key, self.tree, self.path))

    def key_state(self) -> KeyState:
        """What the store holds for this room now (see :class:`KeyState`)."""
        if self.step is None:
            raise UsageError("the room has not seen the time yet")
        return KeyState(self.epoch, self.step, self._room_key, self.tree, self.path)

    def tick(self, now: float) -> None:
        """Ratchet every key forward if ``now`` is in a later hour than our keys.

        Called by everything that takes ``now``; a driver may call it on its own so a silent
        room still erases its old keys on time."""
        step = ratchet_step(now)
        if self.step is None:
            self.step = step
            if self.tree is not None:
                self.tree.ratchet_to(step)
            if self.path is not None:
                self.path.ratchet_to(step, keep_previous=False)
            return
        if step <= self.step:
            return
        behind = step - self.step
        adopt = self._next[1] if self._next is not None and self._next[0] == step else None
        old = self.receiver
        self._previous = (old, now + RATCHET_GRACE) if behind == 1 else None
        self._stale_keys = None
        self._next = None
        self.step = step
        self._restart_counters(keep_range=True)
        key = ratchet(self._room_key, behind)
        if adopt is None:  # same members, next hour: everyone we knew stays known
            adopt = self._make_receiver(RoomKeys(key), old)
        else:
            adopt.adopt(old)  # sessions introduced since it was made
        self._install_key(key, adopt)
        if self.tree is not None:
            self.tree.ratchet_to(step)
        if self.path is not None:
            self.path.ratchet_to(step)
        self._notify()

    def _next_receiver(self, now: float) -> Receiver | None:
        """The next hour's receiver, when the hour is near: a sender whose clock runs a
        little ahead has already moved on."""
        if self.step is None or step_start(self.step + 1) - now > RATCHET_SKEW:
            return None
        if self._next is None or self._next[0] != self.step + 1:
            keys = RoomKeys(ratchet(self._room_key))
            self._next = (self.step + 1, self._make_receiver(keys, self.receiver))
        return self._next[1]

    @property
    def is_moderator(self) -> bool:
        return self.me.identity in self.moderators

    def _require_moderator(self) -> None:
        if not self.is_moderator:
            raise UsageError("only a moderator can do that in this room")

    # ------------------------------------------------------------------ acting
    def raise_hand(self, now: float) -> bytes:
        """Ask for the floor. Sent as an introduction, so moderators learn who we are."""
        self.tick(now)
        if self.me.identity not in self.hands:
            self.hands.append(self.me.identity)
        anchor = self._own_chain().anchor
        return self.sender.hello(ControlKind.HAND, msg.pack_hand(True, anchor), self.me, now)

    def _own_chain(self) -> live.Chain:
        """The key chain of our next over: one per over, the same for every repeat of the
        hand that asks for it (the moderator may grant any of them)."""
        if self._chain is None or self._chain.session != self.sender.session:
            per = live.per_interval_for(self.packet_seconds, self.live_interval)
            self._chain = live.Chain(self.me.identity, self.sender.session, per)
        return self._chain

    def lower_hand(self, now: float) -> bytes:
        self.tick(now)
        if self.me.identity in self.hands:
            self.hands.remove(self.me.identity)
        return self.sender.control_signed(ControlKind.HAND, msg.pack_hand(False), self.me, now)

    def introduce(self, now: float) -> bytes:
        """Tell the room who we are without asking for the floor."""
        self.tick(now)
        return self.sender.hello(ControlKind.HAND, msg.pack_hand(False), self.me, now)

    def _moderate(self, action: msg.ModMessage, now: float) -> bytes:
        self._require_moderator()
        self.tick(now)
        packet = self.sender.control_signed(ControlKind.MOD, action.pack(), self.me, now)
        counter = int.from_bytes(packet[4:7], "big")
        self._record_action(self.keys.key_id, self.me.identity, self.sender.session, counter)
        self._record_issued(self.keys.key_id, self.me.identity, action.issued_at)
        self._opened_with = self.keys  # our own action, under our current key
        self._apply(action, counter, now)
        return packet

    def _record_action(self, key_id: str, moderator: bytes, session: bytes, counter: int) -> None:
        self._last_action[(key_id, moderator, session)] = counter

    def _record_issued(self, key_id: str, moderator: bytes, issued_at: int) -> None:
        key = (key_id, moderator)
        self._last_issued[key] = max(self._last_issued.get(key, 0), issued_at)

    def grant(self, member: bytes, seconds: int, now: float) -> bytes:
        """Give ``member`` the floor for at most ``seconds``. After a removal, send what
        :meth:`due` then holds (a copy of the rekey) before the grant."""
        self._require_moderator()
        self.tick(now)
        if member in self.removed:
            raise UsageError("that member was removed from the room")
        if not 1 <= seconds < 1 << 16:
            raise UsageError("a floor grant lasts 1 to 65535 seconds")
        if member == self.me.identity:
            session, first = self.sender.session, self.sender.next_counter
            anchor: live.Anchor | None = self._own_chain().anchor
        elif member in self._hand_counter:
            # The session and counter of the member's own signed hand raise: nobody else
            # can move them. Listeners open the speaker's voice under that session, and
            # check it live against the anchor the hand carried.
            session, hand = self._hand_counter[member]
            first = hand + 1
            anchor = self._hand_anchor.get(member)
        else:
            raise UsageError("that member has not raised a hand (their counter is unknown)")
        extra = first.to_bytes(3, "big") + session + (anchor.pack() if anchor else b"")
        self._rekey_before_grant(now)
        return self._moderate(
            msg.ModMessage(msg.ModAction.GRANT, member, seconds, int(now), extra), now
        )

    def revoke(self, now: float) -> bytes:
        holder = self.floor or bytes(32)
        return self._moderate(msg.ModMessage(msg.ModAction.REVOKE, holder, 0, int(now)), now)

    def mute(self, member: bytes, now: float, *, unmute: bool = False) -> bytes:
        action = msg.ModAction.UNMUTE if unmute else msg.ModAction.MUTE
        return self._moderate(msg.ModMessage(action, member, 0, int(now)), now)

    def appoint(self, member: PublicIdentity, now: float) -> bytes:
        action = msg.ModMessage(
            msg.ModAction.APPOINT, member.identity, 0, int(now), member.agreement_key
        )
        return self._moderate(action, now)

    def remove(self, member: bytes, now: float, copies: int = REKEY_COPIES) -> list[bytes]:
        """Remove ``member`` and rotate the room key to everyone else we can reach.

        Returns the packets to send now: the signed removal (under the old key), then the
        first copy of the rekey (under the old key too: the removed member sees it but finds
        nothing it can open). The other ``copies - 1`` copies come out of :meth:`due` at
        REKEY_DELAYS after now. A co-moderator that does not hold the key tree sends the
        removal only: the tree holder rotates the key when it hears it.
        """
        if member in self.moderators:
            raise UsageError("remove a moderator's role before removing them")
        self._require_moderator()
        packets = [self._moderate(msg.ModMessage(msg.ModAction.REMOVE, member, 0, int(now)), now)]
        if self._rotates_keys():
            packets += self._rekey(member, now, copies)
        return packets

    def _rekey_before_grant(self, now: float) -> None:
        """The first grant after a removal, while copies of its rekey are still due, is
        preceded by one more copy (out of :meth:`due` now): a member that lost the first
        copy would otherwise lose the next over whole, as the next copy may come only
        REKEY_DELAYS[1] s later. The later copies keep their times (bursts of loss)."""
        pending = [item for item in self._scheduled if item[1] == self.epoch]
        if not pending or self._rekey_regranted == self.epoch:
            return
        self._rekey_regranted = self.epoch
        copy = [(now, epoch, packet) for when, epoch, packet in pending if when == pending[0][0]]
        self._scheduled = sorted(copy + self._scheduled, key=lambda item: item[0])

    def _rotates_keys(self) -> bool:
        """We hold the tree, or (a room without one) we know members' X25519 keys."""
        return self.tree is not None or any(i not in self.moderators for i in self.roster)

    def _rekey(self, member: bytes | None, now: float, copies: int = REKEY_COPIES) -> list[bytes]:
        """A new room key for everyone but ``member``; returns the first copy, schedules
        the rest."""
        self.tick(now)
        assert self.step is not None
        epoch = (self.epoch + 1) % (1 << 16)
        context = self._rekey_context(epoch)
        depth, step, wraps = 0, self.step, ()
        if self.tree is not None:
            rekey = self.tree.remove(member, context)
            new_key, depth, step, wraps = rekey.key, rekey.depth, rekey.step, rekey.wraps
        else:
            new_key = os.urandom(32)
        # Members we know but who hold no leaf: the new key sealed to their X25519 key.
        leafless = [
            p
            for ident, p in self.roster.items()
            if ident not in (self.me.identity, member)
            and ident not in self.removed
            and (self.tree is None or ident not in self.tree)
        ]
        ephemeral = new_ephemeral()
        sealed = []
        for person in leafless:
            try:
                sealed.append(seal_for(person.agreement_key, new_key, context, ephemeral)[1])
            except (UsageError, PacketError):
                self.stats["rekey_unsealable"] += 1  # a broken key must not block removal
        bodies = self._rekey_bodies(epoch, step, depth, wraps, ephemeral_public(ephemeral), sealed)
        delays = REKEY_DELAYS[: max(1, min(copies, len(REKEY_DELAYS)))]
        first: list[bytes] = []
        for delay in delays:
            signed = [
                self.sender.control_signed(ControlKind.REKEY, body, self.me, now) for body in bodies
            ]
            if delay <= 0:
                first += signed
            else:
                self._scheduled += [(now + delay, epoch, packet) for packet in signed]
        self._scheduled.sort(key=lambda item: item[0])
        self._rotate_to(new_key, epoch, now, step)
        return first

    def _rekey_bodies(
        self,
        epoch: int,
        step: int,
        depth: int,
        wraps: Sequence[tuple[int, bytes]],
        eph_pub: bytes,
        sealed: Sequence[bytes],
    ) -> list[bytes]:
        """Fragments that fit the MTU: tree wraps spread evenly, then sealed keys."""
        room = self.mtu - CONTROL_PACKET_OVERHEAD - 64 - msg.REKEY_HEAD_LEN
        per_wrap = room // msg.TREE_WRAP_LEN
        per_sealed = (room - msg.EPHEMERAL_LEN) // msg.SEALED_LEN
        if per_wrap < 1 or per_sealed < 1:
            raise UsageError(f"an MTU of {self.mtu} B is too small to rotate room keys")
        parts: list[tuple[tuple, tuple]] = []
        if wraps:
            n = math.ceil(len(wraps) / per_wrap)
            size = math.ceil(len(wraps) / n)
            parts += [(tuple(wraps[i : i + size]), ()) for i in range(0, len(wraps), size)]
        parts += [
            ((), tuple(sealed[i : i + per_sealed])) for i in range(0, len(sealed), per_sealed)
        ]
        parts = parts or [((), ())]
        if len(parts) > 255:
            raise UsageError("too many members without a key-tree leaf to rotate the key")
        return [
            msg.RekeyFragment(epoch, step, i, len(parts), depth, w, eph_pub if s else b"", s).pack()
            for i, (w, s) in enumerate(parts)
        ]

    def due(self, now: float) -> list[bytes]:
        """Packets whose time has come: later copies of a rekey, and rekeys for removals a
        co-moderator made (we hold the tree). A moderator's driver sends them."""
        return [packet for _, packet in self.due_by_epoch(now)]

    def due_by_epoch(self, now: float) -> list[tuple[int, bytes]]:
        """:meth:`due`, each packet with the key epoch its rekey introduces (for reports)."""
        out: list[tuple[int, bytes]] = []
        while self._queued_removals:
            packets = self._rekey(self._queued_removals.pop(0), now)
            out += [(self.epoch, p) for p in packets]
        while self._scheduled and self._scheduled[0][0] <= now:
            _, epoch, packet = self._scheduled.pop(0)
            out.append((epoch, packet))
        return out

    @property
    def next_due(self) -> float | None:
        """When :meth:`due` next has something (None: nothing scheduled)."""
        if self._queued_removals:
            return 0.0
        return self._scheduled[0][0] if self._scheduled else None

    def _rekey_context(self, epoch: int) -> bytes:
        return b"relay/v1 rekey" + self.room_id + epoch.to_bytes(2, "big")

    def beacon(self, now: float) -> bytes:
        """The room's state, signed, for late joiners."""
        self._require_moderator()
        self.tick(now)
        self._expire(now)
        # Fit one packet: the hand queue and mute list are cut to what the MTU leaves.
        room = self.mtu - CONTROL_PACKET_OVERHEAD - 64 - msg.BEACON_FIXED_LEN - 3
        hands = [h[: msg.PREFIX_LEN] for h in self.hands][: max(0, room // msg.PREFIX_LEN)]
        room -= len(hands) * msg.PREFIX_LEN
        muted = [m[: msg.PREFIX_LEN] for m in sorted(self.muted)][: max(0, room // msg.PREFIX_LEN)]
        beacon = msg.Beacon(
            self.epoch,
            self.floor,
            max(0, math.ceil(self.floor_until - now)) if self.floor else 0,
            self.grant_seq,
            tuple(hands[:255]),
            tuple(muted[:255]),
            int(now),
            self.grant_range[0]
            if self.grant_range and self._grant_keys is self.keys
            else msg.NO_COUNTER,
            self._loss_percent(),
            (self.floor_session or bytes(SESSION_LEN)) if self.floor else bytes(SESSION_LEN),
            self.floor_anchor.pack() if self.floor and self.floor_anchor else live.NO_ANCHOR,
        )
        packet = self.sender.control_signed(ControlKind.BEACON, beacon.pack(), self.me, now)
        counter = int.from_bytes(packet[4:7], "big")
        self._record_action(self.keys.key_id, self.me.identity, self.sender.session, counter)
        self._record_issued(self.keys.key_id, self.me.identity, beacon.issued_at)
        return packet

    @property
    def needs_introduction(self) -> bool:
        """True when we sent so many unsigned packets (clips) since our last signed one that
        receivers may soon refuse more (UNSIGNED_AHEAD): send :meth:`introduce` first."""
        return self.sender.unsigned_run >= INTRO_EVERY

    def holds_floor(self, now: float) -> bool:
        self._expire(now)
        return self.floor == self.me.identity

    def voice(
        self,
        mode: CodecMode,
        position: int,
        frames: Sequence[bytes],
        now: float,
        redundant: Sequence[bytes] | None = None,
    ) -> bytes:
        """One voice packet of our over; refused unless we hold the floor.

        ``redundant`` (FEC copies of the frames before ``position``) rides along but is not
        part of the over's seal: the seal covers what the speaker said, once.
        """
        self.tick(now)
        if not self.holds_floor(now):
            raise UsageError("you do not hold the floor: raise a hand and wait for a grant")
        for i, frame in enumerate(frames):
            self._my_over[position + i] = frame
        self._my_fpp = max(self._my_fpp, len(frames))
        sender, keys = self._over_sender(now)
        trailer = live.NO_TRAILER
        base = self._own_base(sender, keys, now)
        if base is not None:
            assert self._chain is not None
            counter = sender.next_counter
            red_index = None if redundant is None else fec_mode(mode).wire_index
            fields = live.voice_fields(
                keys.key_id,
                self.me.identity,
                counter,
                mode.wire_index,
                position,
                frames,
                red_index,
                redundant or (),
            )
            trailer = self._chain.trailer(base, counter, fields)
            self.live_bytes += len(trailer)
        return sender.voice(mode, position, frames, now, redundant, trailer)

    def _own_base(self, sender: Sender, keys: RoomKeys, now: float) -> live.Base | None:
        """Where our live intervals count from under ``keys`` (None: this packet goes
        without live checks). Under the grant's key, its first counter; under a key that
        changed mid-over, a signed rebase (queued for :meth:`live_packets`) whose counter
        is the packet after it, so this one packet goes unchecked."""
        chain, span = self._chain, self.grant_range
        if chain is None or self.floor_anchor != chain.anchor:
            return None
        if keys is self._grant_keys and span is not None:
            return live.Base(span[0])
        if self._live_base is not None and self._live_base[0] is keys:
            return self._live_base[1]
        base = live.Base(sender.next_counter + 2, chain.next_interval, chain.anchor.link)
        rebase = sender.control_signed(ControlKind.LIVE_BASE, base.pack(), self.me, now)
        self._live_out.append(rebase)
        self.live_bytes += len(rebase)
        self._live_base = (keys, base)
        return None

    def live_packets(self) -> list[bytes]:
        """Packets our live checks need sent after the voice packet just made (a rebase
        after a key change mid-over, rarely): the driver sends them at once."""
        out, self._live_out = self._live_out, []
        return out

    def _over_sender(self, now: float) -> tuple[Sender, RoomKeys]:
        """The sender (and keys) of our over: the key it started under, while receivers
        still take it (RATCHET_GRACE, less a margin for airtime and clocks)."""
        if self._over_key is None:
            assert self.step is not None
            until = step_start(self.step + 1) + RATCHET_GRACE - RATCHET_SKEW
            self._over_key = (self.sender, self.keys, until)
        sender, keys, until = self._over_key
        return (self.sender, self.keys) if now > until else (sender, keys)

    def clip(self, payload: bytes, now: float) -> bytes:
        """One voice-message packet; refused while we are muted (as receivers would)."""
        self.tick(now)
        if self.is_muted(self.me.identity):
            raise UsageError("a moderator muted you in this room")
        return self.sender.clip(payload, now)

    def end_over(self, now: float, copies: int = SEAL_COPIES) -> list[bytes]:
        """Close our over with a signature over what we said; releases the floor.

        The seal goes out ``copies`` times (each its own packet): a listener that loses it
        cannot verify anything of the over. Receivers keep the first and ignore the rest.
        """
        self.tick(now)
        sender, keys = self._over_sender(now)
        self._over_key = None
        # Positions we skipped (DTX) are sealed as skipped: listeners check that too.
        frames = [self._my_over.get(p, SKIPPED) for p in range(max(self._my_over, default=-1) + 1)]
        self._my_over, fpp, self._my_fpp = {}, self._my_fpp, 1
        # The seal covers what no revealed key did (listeners verify the tail by it); the
        # next over gets a new chain.
        self._chain, self._live_base, self._live_out = None, None, []
        seal = self._seal_over(self.me.identity, self.grant_seq, frames, fpp, keys.key_id).pack()
        packets = [
            sender.control_signed(ControlKind.OVER_END, seal, self.me, now)
            for _ in range(max(1, copies))
        ]
        if self.floor == self.me.identity:
            self.floor = None
        return packets

    def _seal_over(
        self, speaker: bytes, grant_seq: int, frames: list[bytes], fpp: int, key_id: str
    ) -> msg.OverSeal:
        # As many digests as fit one packet with the seal's header and signature.
        room = self.mtu - CONTROL_PACKET_OVERHEAD - 11 - 64  # 10 B header, 1 B loss report
        seg = msg.segment_frames(len(frames), fpp, max(1, room // msg.DIGEST_LEN))
        digests = tuple(
            msg.segment_digest(key_id, speaker, grant_seq, i, frames[s : s + seg])
            for i, s in enumerate(range(0, len(frames), seg))
        )
        return msg.OverSeal(len(frames), grant_seq, seg, digests, self._loss_percent())

    def _loss_percent(self) -> int | None:
        return None if self.heard_loss is None else min(100, round(100 * self.heard_loss))

    def _heard(self, listening: _Listening, frames: int) -> None:
        """Fold one over we heard into our loss estimate (skipped frames were not lost)."""
        skipped = sum(1 for f in listening.frames.values() if f == SKIPPED)
        expected = frames - skipped
        if expected <= 0:
            return
        got = sum(1 for p, f in listening.frames.items() if f != SKIPPED and 0 <= p < frames)
        loss = max(0.0, 1.0 - got / expected)
        old = self.heard_loss
        self.heard_loss = loss if old is None else old + LOSS_SMOOTHING * (loss - old)

    def beacon_interval(self, beacon_airtime: float) -> float:
        """Seconds between beacons so they use at most BEACON_SHARE of the channel."""
        return max(BEACON_MIN_INTERVAL, beacon_airtime / BEACON_SHARE)

    def _stranger_hands(self) -> int:
        return sum(1 for ident in self.hands if ident not in self.roster)

    def next_hand(self) -> bytes | None:
        """The first raised hand we can grant (a full identity whose counter we know);
        enrolled members before strangers, so minted identities cannot starve them."""
        ready = [i for i in self.hands if len(i) == msg.ID_LEN and i in self._hand_counter]
        for ident in ready:
            if ident in self.roster:
                return ident
        return ready[0] if ready else None

    # ------------------------------------------------------------------ receiving
    def receive(self, packet: bytes, now: float) -> list[RoomEvent]:
        """Everything one packet caused. Never raises for what a peer sent."""
        if is_notice(packet):
            return [self._on_notice(packet, now)]
        if is_ham(packet):  # never mixed: an encrypted room refuses amateur-band packets
            return [self._drop("ham_refused", "a signed, unencrypted amateur-band packet")]
        self.tick(now)
        self._expire(now)
        self._opened_with = self.keys
        event = self.receiver.receive(packet, now)
        if isinstance(event, Rejected) and self._previous is not None:
            old, until = self._previous
            if now <= until:
                event = self._retry(old, packet, now, event)
            else:
                self._previous = None
                self._stale_keys = None
                if self.path is not None:
                    self.path.forget_previous()
        if isinstance(event, Rejected):
            upcoming = self._next_receiver(now)
            if upcoming is not None:
                event = self._retry(upcoming, packet, now, event)
        try:
            events = self._handle(event, now)
            if isinstance(event, Rejected) and event.reason in ("replay", "auth"):
                events += self._on_reused_counter(packet, now)
            return events
        except PacketError as exc:
            return [self._drop(exc.reason, str(exc))]

    def _on_reused_counter(self, packet: bytes, now: float) -> list[RoomEvent]:
        """A packet under a counter of the floor holder we already accepted: if it is
        authentic and says something else, one of the two was injected (a conflict)."""
        listening = self._listening.get(self.floor) if self.floor is not None else None
        if listening is None or listening.last_key is None:
            return []
        # The key the speaker's over runs under (through the hour's ratchet, the last one).
        candidates = [self.receiver, self._previous[0] if self._previous else None]
        candidates.append(self._next[1] if self._next else None)
        receiver = next((r for r in candidates if r and r.keys is listening.last_key), None)
        event = receiver.reopen(packet, now) if receiver is not None else None
        if event is None or getattr(event, "sender", None) != self.floor:
            return []
        self._opened_with = receiver.keys
        got = listening.seen.get(event.counter)
        if isinstance(event, VoiceFrames) and got is not None and _fingerprint(event) != got[1]:
            listening.conflict = True
            if listening.live is not None:
                listening.live.drop(event.counter)  # neither can be verified now
            both = (*got[0], *_positions(event))
            return [self._flag(listening, event.sender, both, "counter", now)]
        return []

    def _retry(self, receiver: Receiver, packet: bytes, now: float, first: Rejected):
        """Open ``packet`` with another key; the first rejection stands if it fails too."""
        self._opened_with = receiver.keys
        retry = receiver.receive(packet, now)
        if isinstance(retry, Rejected):
            self._opened_with = self.keys
            return first
        return retry

    def _on_notice(self, packet: bytes, now: float) -> RelayNoticed | Dropped:
        try:
            notice = parse_notice(packet, now)
        except PacketError as exc:
            return self._drop(f"notice_{exc.reason}", str(exc))
        if notice.hint not in self.keys.hints_near(now, HINT_TOLERANCE):
            return self._drop("notice_other_room", "relay notice about another room")
        return RelayNoticed(notice)

    def _drop(self, reason: str, detail: str) -> Dropped:
        self.stats[reason] += 1
        return Dropped(reason, detail)

    def _handle(self, event, now: float) -> list[RoomEvent]:
        if isinstance(event, Rejected):
            return [self._drop(event.reason, event.detail)]
        sender = event.public.identity if isinstance(event, Hello) else event.sender
        if sender in self.removed:
            self.receiver.forget_sender(sender)
            return [self._drop("removed_member", "packet from a removed member")]
        if isinstance(event, VoiceFrames):
            return self._on_voice(event, now)
        if isinstance(event, Hello):
            return self._on_hello(event, now)
        if isinstance(event, ClipData):
            return [Clip(event.sender, event.payload, event.counter)]
        return self._on_control(event, now)

    def _on_voice(self, event: VoiceFrames, now: float) -> list[RoomEvent]:
        if event.sender != self.floor or self.is_muted(event.sender):
            return [self._drop("floor_violation", "voice from a member without the floor")]
        listening = self._listening.setdefault(event.sender, _Listening())
        if listening.last_key is not self._opened_with:
            # Counters restart under another key: live checks by counter start afresh too
            # (under the grant's key only: another key's counters are not the grant's).
            listening.last_key, listening.last_counter = self._opened_with, None
            listening.seen.clear()
            if listening.live is not None:
                listening.retired = listening.live
            listening.live = self._live_checker(event.sender)
        clashes: list[int] = []
        if (
            listening.follows(event.counter)
            and event.position > listening.last_end + 1
            and event.position - listening.last_end - 1 <= MAX_SKIP_FILL
            and len(listening.frames) + event.position - listening.last_end <= MAX_KEPT_FRAMES
        ):
            for pos in range(listening.last_end + 1, event.position):
                if listening.frames.setdefault(pos, SKIPPED) != SKIPPED:
                    clashes.append(pos)
        if listening.last_counter is None or event.counter > listening.last_counter:
            listening.last_counter = event.counter
            listening.last_end = max(listening.last_end, event.position + len(event.frames) - 1)
        start = event.position - len(event.redundant)
        if len(listening.copies) < MAX_KEPT_FRAMES:
            listening.copies.update(
                p for p in range(start, event.position) if p >= 0 and p not in listening.frames
            )
        else:
            listening.unkept += len(event.redundant)
        for i, frame in enumerate(event.frames):
            if (
                len(listening.frames) >= MAX_KEPT_FRAMES
                and event.position + i not in listening.frames
            ):
                listening.unkept += 1
                continue
            held = listening.frames.setdefault(event.position + i, frame)
            if held != frame:
                clashes.append(event.position + i)  # two different frames for one position
        # A clash makes the over forged at its seal, but is no live flag: it rests on where
        # 8-bit positions were unwrapped, which heavy loss around pauses can get wrong. The
        # live MACs (by counter, low position bits) decide live.
        listening.conflict = listening.conflict or bool(clashes)
        self._carry_positions(event.sender, event.session, listening.last_end, now)
        return [Voice(event), *self._live_check(listening, event, now)]

    def _carry_positions(
        self, speaker: bytes, session: bytes, last: int | None, now: float
    ) -> None:
        """Tell the receivers of a later hour's key where the floor holder's over stands
        (``last``: its last frame; None: the over ended, or a new grant starts another).

        Near the hour an over runs under two keys (the speaker keeps its over's key through
        the ratchet's grace, then moves on; see _over_sender), and each key's receiver
        unwraps positions from its own history: the one the over moves to must continue it,
        or the rest of the over lands on positions already said (and the seal reads forged).
        The next over starts afresh at 0, whatever key it comes under."""
        if last is None:
            previous = self._previous[0] if self._previous is not None else None
            upcoming = self._next[1] if self._next is not None else None
            receivers = [self.receiver, previous, upcoming]
        else:
            receivers = [self.receiver, self._next_receiver(now)]
        for receiver in receivers:
            if receiver is not None and (last is None or receiver.keys is not self._opened_with):
                receiver.carry_position(speaker, session, last, now)

    # ------------------------------------------------------------------ live checks
    def _flag(
        self, listening: _Listening, speaker: bytes, positions: Iterable[int], why: str, now: float
    ) -> SpeechFlagged:
        listening.flagged = True
        self.stats["flagged_speech"] += 1
        return SpeechFlagged(speaker, tuple(sorted(set(positions))), why, now)

    def _on_live_base(self, event: ControlMessage, base: live.Base) -> list[RoomEvent]:
        """The floor holder's key changed mid-over: its live intervals go on under the new
        key from where it says (signed), with the chain links we already trust."""
        speaker = event.sender
        if speaker != self.floor or event.session != self.floor_session:
            return [self._drop("floor_violation", "live rebase from a member without the floor")]
        anchor = self.floor_anchor
        if anchor is None or base.anchor != anchor.link:
            return [self._drop("stale_live_base", "live rebase of another over")]
        if self._opened_with is self._grant_keys or self._opened_with is not self.keys:
            return []  # the grant's own key (its base is the grant's), or not our key now
        listening = self._listening.setdefault(speaker, _Listening())
        old = listening.live
        if old is not None and old.base == base and listening.last_key is self._opened_with:
            return []  # a copy
        source = old if old is not None else listening.retired
        known = source.known if source is not None else None
        session = self.floor_session or b""
        checker: live.Checker[VoiceFrames] = live.Checker(speaker, session, anchor, base, known)
        if listening.last_key is not self._opened_with:
            listening.last_key, listening.last_counter = self._opened_with, None
            listening.seen.clear()
        if listening.retired is not None:
            checker.adopt(listening.retired)  # the old key's packets still await their keys
            listening.retired = None
        listening.live = checker
        # Packets under this key that came before the rebase: checked now.
        events: list[RoomEvent] = []
        key_id = self._opened_with.key_id
        for (kid, counter), heard in list(listening.unchecked.items()):
            if kid == key_id and checker.interval(counter) is not None:
                del listening.unchecked[(kid, counter)]
                events += self._live_check(listening, heard, event.time)
        return events

    def _live_checker(self, speaker: bytes) -> live.Checker[VoiceFrames] | None:
        """A checker for the floor holder's over, if its grant named an anchor and the
        packets come under the grant's key (whose counters the grant counts)."""
        anchor, span, session = self.floor_anchor, self.grant_range, self.floor_session
        if anchor is None or span is None or session is None:
            return None
        if self._opened_with is not self._grant_keys:
            return None  # until the speaker's rebase says where its intervals go on
        return live.Checker(speaker, session, anchor, live.Base(span[0]))

    def _live_check(self, listening: _Listening, event: VoiceFrames, now: float) -> list[RoomEvent]:
        """Check a voice packet's live MAC (now, if its key is out; else when it is), and
        every kept packet the key it reveals covers."""
        listening.seen[event.counter] = (_positions(event), _fingerprint(event))
        _cap(listening.seen, MAX_PENDING)
        checker = listening.live
        if checker is None:
            listening.unchecked[(self._opened_with.key_id, event.counter)] = event
            while len(listening.unchecked) > MAX_PENDING:  # the oldest go first
                del listening.unchecked[next(iter(listening.unchecked))]
            return []
        if event.redundant_mode is not None and len(event.redundant) != len(event.frames):
            # The receiver dropped FEC copies it placed before the over's start: it can only
            # have misplaced the packet. We cannot check it, and must not flag it.
            return []
        red = None if event.redundant_mode is None else event.redundant_mode.wire_index
        fields = live.voice_fields(
            self._opened_with.key_id,
            event.sender,
            event.counter,
            event.mode.wire_index,
            event.position,
            event.frames,
            red,
            event.redundant,
        )
        verdicts = checker.receive(event.counter, fields, event.live_mac, event.live_link, event)
        self.stats["live_late"] += verdicts.late
        events: list[RoomEvent] = []
        if verdicts.verified:
            for heard in verdicts.verified:
                _note_verified(listening, heard)
            events.append(SpeechVerified(event.sender, tuple(verdicts.verified), "live"))
            # The speaker's counters and positions grow together: voice kept under a later
            # counter, at a position the speaker had already passed, was not the speaker's
            # (a key holder took a counter ahead, to stay unchecked while its words play
            # now). Flag it now.
            ahead = [
                (c, h)
                for c, h in checker.pending_items()
                if any(
                    v.counter < c and h.position <= v.position + len(v.frames) - 1
                    for v in verdicts.verified
                )
            ]
            for c, _ in ahead:
                checker.drop(c)
            early = [p for _, h in ahead for p in _positions(h)]
            if early:
                events.append(self._flag(listening, event.sender, early, "ahead", now))
        if verdicts.forged:
            why = "link" if event in verdicts.forged and event.live_link is not None else "live"
            forged = [p for h in verdicts.forged for p in _positions(h)]
            events.append(self._flag(listening, event.sender, forged, why, now))
        return events

    def _on_hello(self, event: Hello, now: float) -> list[RoomEvent]:
        """An introduction names a member; it does not enroll it (only a moderator's
        ``enroll`` or an invite made --for them does), so a member cannot mint identities
        that would receive the next room key."""
        ident = event.public.identity
        events: list[RoomEvent] = []
        if ident not in self.roster and ident not in self.introduced:
            self.introduced[ident] = event.public
            events.append(MemberChanged(ident, "introduced"))
        if event.kind == ControlKind.HAND:
            raised, anchor = msg.parse_hand(event.payload)
            if raised and self._opened_with is self.keys:  # (see _on_control)
                self._hand_counter[ident] = (event.session, event.counter)
                self._hand_anchor[ident] = anchor
            events += self._on_hand(ident, raised, event.time)
        return events

    def _forget_stranger(self, ident: bytes) -> None:
        """The receiver evicted a member known only from its HELLO: forget it here too."""
        if ident in self.roster or ident in self.moderators or ident == self.floor:
            return
        if self.receiver.knows(ident):
            return  # evicted by the previous key's receiver only
        self.introduced.pop(ident, None)
        self._hand_counter.pop(ident, None)
        self._hand_anchor.pop(ident, None)
        if ident in self.hands:
            self.hands.remove(ident)
        self._listening.pop(ident, None)
        for key in [k for k in self._sealed if k[1] == ident]:
            del self._sealed[key]

    def enroll(self, member: PublicIdentity) -> MemberPath | None:
        """Admit a member to the rekey roster (a moderator's decision). If we hold the key
        tree the member gets a leaf: the returned path goes into their invite."""
        if not valid_agreement_key(member.agreement_key):
            raise UsageError("that member's X25519 key is invalid")
        self.roster[member.identity] = member
        self.receiver.add_sender(member.identity)
        if self.tree is None:
            return None
        path = self.tree.add(member.identity)
        self._notify()
        return path

    def _on_hand(self, ident: bytes, raised: bool, now: float) -> list[RoomEvent]:
        if (
            raised
            and ident == self.floor
            and now <= self.floor_until
            and ident not in self._listening
        ):
            # The holder has not spoken under its grant: it did not hear it (every copy
            # lost), and this is not a new request. (Once it spoke, its hand asks for
            # another over: queued as usual.)
            return [GrantAsked(ident)] if self.is_moderator else []
        if raised and ident not in self.hands and not self.is_muted(ident):
            if ident not in self.roster and self._stranger_hands() >= MAX_STRANGER_HANDS:
                return [self._drop("hand_queue_full", "too many strangers' hands raised")]
            self.hands.append(ident)
        elif not raised and ident in self.hands:
            self.hands.remove(ident)
        else:
            return []
        return [HandRaised(ident, raised)]

    def _gate(self, event) -> GateAnswer:
        """Decide, before the session moves any state, whether the room accepts a packet.

        Voice and clips are unsigned (the session bounds how far they move a window past
        the sender's signed counters); control kinds must be signed by their sender, and
        only a moderator's actions and beacons, which carry a signed time, may introduce a
        new session of their sender."""
        sender = event.public.identity if isinstance(event, Hello) else event.sender
        if sender in self.removed:
            return "removed_member"
        if isinstance(event, Hello):
            return None  # the session verified its signature and time
        if isinstance(event, VoiceFrames):
            if self._opened_with is self._stale_keys:
                return "old_key"  # after a removal the old key carries control only
            self._expire(event.time)
            if sender != self.floor or self.is_muted(sender):
                return "floor_violation"
            if self.floor_session is not None and event.session != self.floor_session:
                return "floor_violation"
            # The range counts the counters of the key the grant came under: under another
            # hour's key they restart (see tick), so it guards that key's packets only.
            span = self.grant_range if self._opened_with is self._grant_keys else None
            if span and not span[0] <= event.counter <= span[1]:
                return "floor_violation"
            if not 0 <= event.position <= MAX_POSITION:
                return "malformed"
            return None
        if isinstance(event, ClipData):
            if self._opened_with is self._stale_keys:
                return "old_key"
            return "muted" if self.is_muted(sender) else None
        if isinstance(event, ControlMessage) and event.kind not in SIGNED_KINDS:
            return "unknown_kind"  # must not move anybody's replay window
        if isinstance(event, ControlMessage):
            if event.kind in MODERATOR_KINDS and sender not in self.moderators:
                return "forged_moderation"
            try:
                self._gated_body = self._verified_body(event)
                if event.kind == ControlKind.MOD:
                    return Signed(msg.ModMessage.parse(self._gated_body).issued_at)
                if event.kind == ControlKind.BEACON:
                    return Signed(msg.Beacon.parse(self._gated_body).issued_at)
            except PacketError as exc:
                return exc.reason
            return Signed()
        return "unknown_kind"

    def _verified_body(self, event: ControlMessage) -> bytes:
        """The body of a signed message, checked against its sender's identity key."""
        parts = split_signature(event.payload)
        if parts is None:
            raise PacketError("forged_signature", "control message without a signature")
        body, signature = parts
        message = signed_message(
            self._opened_with.key_id, event.sender, event.associated, event.kind, body
        )
        if not verify(event.sender, signature, message):
            raise PacketError("forged_signature", "signature does not verify")
        return body

    def _on_control(self, event: ControlMessage, now: float) -> list[RoomEvent]:
        kind = event.kind
        if kind not in SIGNED_KINDS:
            return [self._drop("unknown_kind", f"unknown control kind {kind}")]
        body = self._gated_body  # the gate verified the signature
        if kind == ControlKind.OVER_END:
            return self._on_over_end(event, body)
        if kind == ControlKind.LIVE_BASE:
            return self._on_live_base(event, live.Base.parse(body))
        if kind == ControlKind.HAND:
            raised, anchor = msg.parse_hand(body)
            # A grant names the hand's counter as the first the speaker may use: only a hand
            # under our current key counts (another hour's key has other counters).
            if raised and self._opened_with is self.keys:
                self._hand_counter[event.sender] = (event.session, event.counter)
                self._hand_anchor[event.sender] = anchor
            return self._on_hand(event.sender, raised, now)
        key_id = self._opened_with.key_id
        seq_key = (key_id, event.sender, event.session)
        if event.counter <= self._last_action.get(seq_key, -1):
            return [self._drop("stale_moderation", "older than an action already applied")]
        if kind == ControlKind.REKEY:
            return self._on_rekey(event, msg.RekeyFragment.parse(body), now)
        issued = (
            msg.Beacon.parse(body).issued_at
            if kind == ControlKind.BEACON
            else msg.ModMessage.parse(body).issued_at
        )
        if issued < self._last_issued.get((key_id, event.sender), 0):
            return [self._drop("stale_moderation", "older than an action of another session")]
        self._record_action(key_id, event.sender, event.session, event.counter)
        self._record_issued(key_id, event.sender, issued)
        if kind == ControlKind.BEACON:
            return self._on_beacon(event, msg.Beacon.parse(body), now)
        action = msg.ModMessage.parse(body)
        if action.issued_at < now - STALE_ACTION:
            return [self._drop("stale_moderation", "moderation action issued too long ago")]
        if (
            action.action == msg.ModAction.REMOVE
            and self.tree is not None
            and action.target not in self.removed
            and action.target not in self.moderators
        ):
            self._queued_removals.append(action.target)  # a co-moderator's: we rotate
        return self._apply(action, event.counter, now)

    def _apply(self, action: msg.ModMessage, counter: int, now: float) -> list[RoomEvent]:
        target, kind = action.target, action.action
        if kind == msg.ModAction.GRANT:
            self.floor, self.floor_until, self.grant_seq = target, now + action.arg, counter
            first, speaker_session, self.floor_anchor = _grant_extra(action.extra)
            self.grant_range = _grant_range(first, action.arg)
            self._grant_keys = self._opened_with
            self.floor_session = speaker_session
            self.receiver.add_sender(target)
            self._vouch_floor(action.issued_at, now, "grant")
            if target in self.hands:
                self.hands.remove(target)
            self._keep_listening(target)
            self._listening.pop(target, None)
            if speaker_session is not None:
                self._carry_positions(target, speaker_session, None, now)
            return [FloorChanged(target, self.floor_until)]
        if kind == msg.ModAction.REVOKE:
            self.floor = None
            return [FloorChanged(None, now)]
        if kind in (msg.ModAction.MUTE, msg.ModAction.UNMUTE):
            muting = kind == msg.ModAction.MUTE
            (self.muted.add if muting else self.muted.discard)(target)
            if not muting:
                self.muted.discard(target[: msg.PREFIX_LEN])  # as a beacon named it
            events: list[RoomEvent] = [MemberChanged(target, "muted" if muting else "unmuted")]
            if muting and target in self.hands:
                self.hands.remove(target)
            if muting and self.floor == target:
                self.floor = None
                events.append(FloorChanged(None, now))
            return events
        if kind == msg.ModAction.REMOVE:
            self.removed.add(target)
            self.roster.pop(target, None)
            if target in self.hands:
                self.hands.remove(target)
            self.receiver.forget_sender(target)
            events = [MemberChanged(target, "removed")]
            if self.floor == target:
                self.floor = None
                events.append(FloorChanged(None, now))
            return events
        public = PublicIdentity(target, action.extra)  # APPOINT
        self.moderators[target] = public
        self.roster[target] = public
        self.receiver.add_sender(target)
        return [MemberChanged(target, "appointed")]

    def _vouch_floor(self, issued_at: int, now: float, what: str) -> None:
        """The moderator named the floor holder's session and counter range (signed, at
        ``issued_at``): open the holder's voice under it. Nothing without a range (it would
        bound nothing) or a session (an all-zero one is "none").

        Under our current key, and under the key the grant came in if that is another (the
        previous hour's, within the ratchet's grace: a speaker whose clock is behind ours
        starts its over under it, and keeps it)."""
        holder, session, span = self.floor, self.floor_session, self.grant_range
        if holder is None or holder == self.me.identity or span is None:
            return
        if session is None or session == bytes(SESSION_LEN):
            return
        receivers = [self.receiver]
        if self._opened_with is not self.keys:
            previous = self._previous[0] if self._previous is not None else None
            upcoming = self._next[1] if self._next is not None else None
            receivers += [r for r in (previous, upcoming) if r and r.keys is self._opened_with]
        for receiver in receivers:
            reason = receiver.vouch(holder, session, issued_at, now, span[0], span[1])
            if reason is not None:
                self.stats[f"{what}_{reason}"] += 1

    def _on_beacon(self, event: ControlMessage, beacon: msg.Beacon, now: float) -> list[RoomEvent]:
        if beacon.issued_at < now - STALE_ACTION:
            return [self._drop("stale_moderation", "beacon issued too long ago (a recording?)")]
        events: list[RoomEvent] = []
        holder = beacon.holder if beacon.remaining > 0 else None
        if holder != self.floor or beacon.grant_seq != self.grant_seq:
            self.floor, self.grant_seq = holder, beacon.grant_seq
            self.floor_until = now + beacon.remaining
            self.grant_range = _grant_range(beacon.first_counter, beacon.remaining)
            self._grant_keys = self._opened_with
            self.floor_session = beacon.session if holder is not None else None
            self.floor_anchor = live.Anchor.parse(beacon.anchor) if holder is not None else None
            if holder is not None:
                self.receiver.add_sender(holder)
                self._keep_listening(holder)
                self._carry_positions(holder, beacon.session, None, now)
            events.append(FloorChanged(holder, self.floor_until))
        if holder is not None and beacon.session == self.floor_session:
            # Late joiners learn the floor holder's session here (the moderator vouches).
            self._vouch_floor(beacon.issued_at, now, "beacon")
        by_prefix = self._by_prefix()
        # A hand is the one member its prefix names; a prefix naming several stays a prefix
        # (never granted). A mute silences every member its prefix names, so a colliding
        # prefix cannot leave the muted one heard. Unknown prefixes stay as they are.
        self.hands = [g[0] if len(g := by_prefix.get(p, ())) == 1 else p for p in beacon.hands]
        self.muted = {ident for p in beacon.muted for ident in by_prefix.get(p, (p,))}
        if beacon.loss is not None:
            events.append(LossReport(event.sender, beacon.loss, now))
        return events

    def _by_prefix(self) -> dict[bytes, list[bytes]]:
        """Every member we know in full (enrolled, introduced by HELLO only, ourselves, the
        floor holder, hands and mutes named in full), by the prefix beacons name them by."""
        known = (
            *self.roster,
            *self.introduced,
            self.me.identity,
            *((self.floor,) if self.floor is not None else ()),
            *self.hands,
            *self.muted,
        )
        by_prefix: dict[bytes, list[bytes]] = {}
        for ident in known:
            if len(ident) == msg.ID_LEN:
                group = by_prefix.setdefault(ident[: msg.PREFIX_LEN], [])
                if ident not in group:
                    group.append(ident)
        return by_prefix

    def is_muted(self, ident: bytes) -> bool:
        """A moderator muted ``ident``: by name, or by the prefix a beacon named it by (a
        member we heard of only after the beacon)."""
        return ident in self.muted or ident[: msg.PREFIX_LEN] in self.muted

    def _on_rekey(
        self, event: ControlMessage, fragment: msg.RekeyFragment, now: float
    ) -> list[RoomEvent]:
        if fragment.epoch == self.epoch:
            return []  # already rotated (another fragment or copy carried our key)
        if fragment.epoch != (self.epoch + 1) % (1 << 16):
            return [self._drop("stale_moderation", "rekey for an unexpected epoch")]
        context = self._rekey_context(fragment.epoch)
        assert self.step is not None
        if fragment.step > self.step + MAX_STEPS_AHEAD:
            return [self._drop("stale_moderation", "rekey from a clock hours ahead")]
        step = max(self.step, fragment.step)
        key = None
        if self.path is not None and fragment.wraps:
            key = self.path.apply(fragment.step, fragment.depth, fragment.wraps, context)
        if key is None and fragment.sealed:
            for sealed in fragment.sealed:
                try:
                    key = open_sealed(self.me, fragment.ephemeral, sealed, context)
                except PacketError:
                    continue
                key = ratchet(key, step - fragment.step)
                break
        if key is None:
            return []
        if self.path is not None and self.path.step < step:
            self.path.ratchet_to(step, keep_previous=False)
        return [self._rotate_to(key, fragment.epoch, now, step)]

    def _on_over_end(self, event: ControlMessage, body: bytes) -> list[RoomEvent]:
        speaker = event.sender
        seal = msg.OverSeal.parse(body)
        sealed_key = (self._opened_with.key_id, speaker)
        if self._sealed.get(sealed_key) == seal.grant_seq:
            return []  # a repeated copy of a seal already handled
        self._sealed[sealed_key] = seal.grant_seq
        self._carry_positions(speaker, event.session, None, event.time)
        listening = self._listening.pop(speaker, _Listening())
        if self.floor == speaker:
            self.floor = None
        if seal.grant_seq != self.grant_seq:
            return [OverEnded(speaker, "forged", seal.frames, 0, len(seal.digests))]
        forged = listening.conflict or listening.flagged
        if not forged and not listening.frames:
            return [OverEnded(speaker, "unheard", seal.frames, 0, len(seal.digests))]
        ok = unverifiable = 0
        sealed: set[int] = set()  # positions in segments the seal verified
        for i, digest in enumerate(seal.digests):
            start = i * seal.segment_frames
            positions = range(start, min(start + seal.segment_frames, seal.frames))
            have = [p for p in positions if p in listening.frames]
            if len(have) < len(positions):
                # Played, but its segment cannot be checked (unless a live check did).
                unverifiable += sum(1 for p in have if p not in listening.verified)
                continue
            frames = [listening.frames[p] for p in positions]
            mine = msg.segment_digest(self._opened_with.key_id, speaker, seal.grant_seq, i, frames)
            if mine != digest:
                forged = True
                continue
            ok += 1
            sealed.update(positions)
        if any(p >= seal.frames or p < 0 for p in listening.frames):
            forged = True
        # The packets no revealed key covered (the last ones, or all of an over without live
        # checks): the seal verifies their frames where they are the frames it checked (not
        # their FEC copies: it does not cover them).
        waiting = list(listening.unchecked.values())
        for checker in (listening.live, listening.retired):
            if checker is not None:
                waiting += [h for _, h in checker.pending_items()] + checker.carried_items()
        tail = tuple(
            replace(heard, redundant=(), redundant_mode=None)
            for heard in sorted(waiting, key=lambda h: h.position)
            if all(
                p in sealed and listening.frames.get(p) == frame
                for p, frame in zip(_positions(heard), heard.frames, strict=True)
            )
        )
        events: list[RoomEvent] = [SpeechVerified(speaker, tail, "seal")] if tail else []
        if forged:
            self.stats["forged_over"] += 1
            return [*events, OverEnded(speaker, "forged", seal.frames, ok, len(seal.digests))]
        unverifiable += len(listening.copies)  # FEC copies are not sealed: maybe played
        unverifiable += listening.unkept
        # Verified: every frame that was played is covered by a verified segment or a live
        # check (frames that never arrived were concealment, not words).
        verdict = "partial" if unverifiable else "verified"
        self._heard(listening, seal.frames)
        events.append(OverEnded(speaker, verdict, seal.frames, ok, len(seal.digests)))
        if seal.loss is not None:
            events.append(LossReport(speaker, seal.loss, event.time))
        return events

    def _keep_listening(self, holder: bytes) -> None:
        """Frames kept for seals: the new holder's and the last over's (its seal may still
        come); older overs whose seal never arrived are let go."""
        last = next(reversed(self._listening), None)
        for ident in [i for i in self._listening if i not in (holder, last)]:
            del self._listening[ident]

    def _expire(self, now: float) -> None:
        if self.floor is not None and now > self.floor_until:
            self.floor = None
