"""Sending and receiving sessions for one room: bytes and time in, bytes and events out.

No sockets, no clocks, no threads: ``now`` is passed in (seconds on the room's shared clock,
UNIX time in real use), so tests drive hours of radio time in milliseconds.

Sender sessions. Every :class:`Sender` draws a random *session* value when it starts; its
key is HKDF(room key, identity, session) (see :mod:`relay.core.crypto`), so a counter that a
restored backup, a snapshot or a second device hands out again is used under another key.
A :class:`Receiver` keeps, per sender, at most :data:`MAX_SESSIONS` sessions, each with its
own replay window, and admits a new one only from a fresh signed message:

* the member's own HELLO (signed, carrying the session and the member's clock), or
* a moderator's signed action or beacon naming the moderator's own session in its clear
  bytes, or vouching for the floor holder's (:meth:`Receiver.vouch`, from the rooms layer),

and only if its signed time is within :data:`INTRO_FRESH` of ours and later than every
session the receiver already dropped for that sender. So an old recording cannot bring back
a session whose window was forgotten, nothing unsigned can create one (a key holder can
neither lock a member out nor make us keep state), and a packet costs at most one key
derivation and one trial decryption per sender sharing its short id.

Windows only move for packets the rooms layer accepted (``gate``). An unsigned packet
(voice, clip) may in addition move its session's window at most ``ahead`` counters past the
last counter the sender signed (or a moderator vouched for), so a member holding the room
key cannot push another's window out of reach of its real packets.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag

from relay.core import live, wire
from relay.core.crypto import RoomKeys, SenderCipher, hint_epoch, new_session
from relay.core.events import ClipData, ControlMessage, Event, Hello, Rejected, VoiceFrames
from relay.core.identity import (
    KEY_LEN,
    SIGNATURE_LEN,
    Identity,
    PublicIdentity,
    valid_agreement_key,
)
from relay.core.ratelimit import Buckets, TokenBucket
from relay.core.replay import ReplayWindow
from relay.core.signing import signed_message
from relay.errors import PacketError, UsageError
from relay.voice.modes import CodecMode

COUNTER_BLOCK = 64
HINT_TOLERANCE = 2  # epochs (hours) either side before a hint counts as clock skew
STREAM_GAP = 5.0  # seconds of silence after which a sender's next voice starts a new over
MAX_SESSIONS = 4  # sender sessions a receiver keeps per sender (starts, restores, devices)
# Seconds a signed introduction may be off our clock, either way: an older recording cannot
# introduce a session (as a moderation action older than this is not applied).
INTRO_FRESH = 600.0
# A sender says who it is again after this many unsigned packets, well inside the bound a
# room's receivers put on how far unsigned packets may run ahead (UNSIGNED_AHEAD in room.py).
INTRO_EVERY = 512
# Bounds on what members who merely introduced themselves (HELLO) cost a receiver: a holder
# of the room key can mint identities by the thousand. Members the room added (enrolled,
# moderators, the floor holder: ``add_sender``/``vouch``) are never counted here or evicted.
MAX_INTRODUCED = 256  # introduced peers kept; the least recently heard goes first
MAX_INTRODUCED_PER_SHORT = 2  # introduced peers sharing one short id
NEWCOMER_RATE = 1.0  # signature checks a second for hellos from identities we do not know
NEWCOMER_BURST = 10.0
KNOWN_HELLO_RATE = 1.0  # signature checks a second per known identity's hellos
KNOWN_HELLO_BURST = 5.0
KNOWN_HELLO_TABLE = 4096  # identities whose hello buckets are kept


class CounterSource(Protocol):
    """Hands out blocks of never-used send counters, durably, before they are used."""

    def reserve(self, name: str, count: int, limit: int) -> int:
        """Return ``start`` such that [start, start+count) was never handed out before."""
        ...


class Sender:
    """Seals this member's packets for one room, under a session of its own (module doc)."""

    def __init__(
        self,
        keys: RoomKeys,
        identity: bytes,
        counters: CounterSource,
        *,
        block: int = COUNTER_BLOCK,
        session: bytes | None = None,
    ) -> None:
        self._keys = keys
        self.session = new_session() if session is None else session
        self._cipher: SenderCipher = keys.sender(identity, self.session)
        self._clear_session = wire.xor(self.session, keys.session_mask(identity))
        self._counters = counters
        self._block = block
        # Counters stay per identity and room key (not per session): within one start, and
        # across clean restarts, they never repeat even if two sessions ever collided.
        self.counter_name = f"{keys.key_id}:{hashlib.sha256(identity).hexdigest()[:32]}"
        self._lock = threading.Lock()
        self._next = 0
        self._limit = 0  # nothing reserved yet: the first packet reserves a block
        # Unsigned packets sent since the last signed one: receivers bound how far those may
        # run ahead, so the rooms layer says who we are again before it grows too large.
        self.unsigned_run = 0

    @property
    def identity(self) -> bytes:
        return self._cipher.identity

    @property
    def next_counter(self) -> int:
        """The counter the next packet will use (reserving its block durably if needed)."""
        with self._lock:
            self._ensure_block()
            return self._next

    def _ensure_block(self) -> None:
        if self._next >= self._limit:
            start = self._counters.reserve(self.counter_name, self._block, wire.COUNTER_LIMIT)
            self._next, self._limit = start, start + self._block

    def _take_counter(self) -> int:
        with self._lock:
            self._ensure_block()
            counter = self._next
            self._next += 1
            return counter

    def _header(self, ptype: int, sub: int, now: float) -> wire.Header:
        return wire.Header(
            ptype=ptype,
            sub=sub,
            hint=self._keys.hint(hint_epoch(now)),
            sender=self._cipher.short_id,
            counter=self._take_counter(),
        )

    def _associated(self, header: wire.Header) -> bytes:
        """What the AEAD authenticates in the clear: the header, and our session after it
        on the packet types that carry it."""
        extra = self._clear_session if header.ptype in wire.SESSION_TYPES else b""
        return header.pack() + extra

    def _seal(self, ptype: int, sub: int, plaintext: bytes, now: float) -> bytes:
        header = self._header(ptype, sub, now)
        associated = self._associated(header)
        self.unsigned_run += 1
        return associated + self._cipher.seal(associated, header.counter, plaintext)

    def voice(
        self,
        mode: CodecMode,
        position: int,
        frames: Sequence[bytes],
        now: float,
        redundant: Sequence[bytes] | None = None,
        trailer: bytes = live.NO_TRAILER,
    ) -> bytes:
        """One sealed voice packet carrying ``frames``, the first at index ``position``.

        With ``redundant`` (lower-rate copies of the ``len(frames)`` frames before
        ``position``, in the mode :data:`wire.FEC_PAIRS` names) it is a VOICE_FEC packet.
        ``trailer``: the room's live MAC (and link) for it, see :mod:`relay.core.live`.
        """
        if position < 0:
            raise UsageError("frame position must not be negative")
        low = position % wire.POSITION_MODULUS
        if redundant is None:
            body = wire.VoiceBody(low, tuple(frames)).pack(mode) + trailer
            return self._seal(wire.PacketType.VOICE, mode.wire_index, body, now)
        if position < len(frames):
            raise UsageError("redundant frames need as many frames before the packet")
        body = wire.VoiceFecBody(low, tuple(frames), tuple(redundant)).pack(mode) + trailer
        return self._seal(wire.PacketType.VOICE_FEC, mode.wire_index, body, now)

    def control(self, kind: int, payload: bytes, now: float) -> bytes:
        body = wire.ControlBody(kind, payload).pack()
        return self._seal(wire.PacketType.CONTROL, 0, body, now)

    def clip(self, payload: bytes, now: float) -> bytes:
        """One sealed voice-message packet (its payload is the clip layer's business)."""
        if not payload:
            raise UsageError("a clip packet needs a payload")
        return self._seal(wire.PacketType.CLIP, 0, bytes(payload), now)

    def _check_signer(self, signer: Identity) -> None:
        if signer.identity != self.identity:
            raise UsageError("a member signs only its own packets")

    def control_signed(self, kind: int, body: bytes, signer: Identity, now: float) -> bytes:
        """A control packet whose body the member signs (room state changes).

        The signature covers the clear header *and our session*, so a signed body cannot
        be re-wrapped under another session."""
        self._check_signer(signer)
        header = self._header(wire.PacketType.CONTROL, 0, now)
        associated = self._associated(header)
        signature = signer.sign(
            signed_message(self._keys.key_id, self.identity, associated, kind, body)
        )
        plaintext = wire.ControlBody(kind, body + signature).pack()
        self.unsigned_run = 0
        return associated + self._cipher.seal(associated, header.counter, plaintext)

    def hello(self, kind: int, body: bytes, signer: Identity, now: float) -> bytes:
        """An introduction: who this member is, and the session its packets use.

        Readable by every holder of the room key: sealed under the shared announce key with
        a random nonce (members do not know our session yet, so they cannot derive our own
        key), signed by the identity it names, stamped with our clock so that a recording
        cannot introduce a session later (``INTRO_FRESH``).
        """
        self._check_signer(signer)
        header = self._header(wire.PacketType.HELLO, 0, now)
        associated = header.pack()
        pub = signer.public
        stamp = min(max(int(now), 0), (1 << 32) - 1).to_bytes(4, "big")
        signed = pub.signing_key + pub.agreement_key + self.session + stamp + bytes((kind,)) + body
        signature = signer.sign(
            signed_message(self._keys.key_id, self.identity, associated, kind, signed)
        )
        nonce = os.urandom(wire.HELLO_NONCE_LEN)
        sealed = self._keys.announce.encrypt(nonce, signed + signature, associated)
        packet = associated + nonce + sealed
        if len(packet) > wire.MAX_PACKET_LEN:
            raise UsageError(f"a packet may not exceed {wire.MAX_PACKET_LEN} bytes")
        self.unsigned_run = 0
        return packet

    def over_end(self, frames_sent: int, now: float) -> bytes:
        """The control packet that tells listeners an over is complete."""
        if not 0 <= frames_sent < 1 << 32:
            raise UsageError("an over's frame count must fit in 32 bits")
        return self.control(wire.ControlKind.OVER_END, frames_sent.to_bytes(4, "big"), now)


@dataclass(frozen=True, slots=True)
class Signed:
    """The rooms layer's answer (``Receiver.gate``) for a packet it accepts whose signature
    by its own sender verified. ``issued_at`` is the signed time, when the message carries
    one: only such a message may introduce its sender's session."""

    issued_at: float | None = None


# What ``Receiver.gate`` returns: a reason string refuses, None accepts an unsigned packet.
GateAnswer = str | Signed | None


@dataclass(frozen=True, slots=True)
class SessionMark:
    """One sender session as a receiver knows it: what a restarted receiver restores."""

    identity: bytes
    session: bytes
    intro_time: float  # signed time of its latest introduction
    highest: int  # replay window: highest counter accepted
    bits: int  # replay window: bit i set <=> counter highest - i was accepted
    anchor: int  # highest counter signed by the sender or vouched for by a moderator
    floor: float  # the sender's: sessions introduced at or before this time are refused


@dataclass
class _Session:
    cipher: SenderCipher
    window: ReplayWindow
    intro_time: float = -math.inf  # signed time of its latest introduction
    anchor: int = -1  # highest counter the sender signed (or a moderator vouched for)
    vouched: int = -1  # highest counter of a range a moderator granted
    last_position: int | None = None  # absolute index of the last frame received
    # Counter of that frame's packet; None: last_position was carried over from another
    # key's receiver (see carry_position), whose counters say nothing about ours.
    last_counter: int | None = 0
    last_time: float = 0.0


@dataclass
class _Peer:
    identity: bytes
    short_id: int
    mask: bytes  # RoomKeys.session_mask(identity): unmasks the clear session bytes
    sessions: dict[bytes, _Session] = field(default_factory=dict)
    voice: bytes | None = None  # the session voice is opened under (voice carries none)
    floor: float = -math.inf  # latest introduction time of a session we dropped
    introduced: bool = False  # known only from its own HELLO (or its saved marks): evictable


class Receiver:
    """Opens packets for one room; rejects and counts everything that is not right.

    Authentication here is room-level: it proves a packet was sealed with a key derived from
    the room key for that sender, which any holder of the room key can derive. Per-member
    proof comes from signatures over whole overs (the rooms layer).

    The room hint is a routing filter, not a security check (one byte: 5 in 256 random hints
    match); a hint outside the clock tolerance is counted as ``hint_skew`` and the packet is
    still tried, so members whose clocks drifted, and late store-and-forward packets, still get
    through. Replay protection is the per-session window, persisted by the caller
    (:meth:`export` and :meth:`restore`).

    ``ahead`` bounds how far an unsigned packet may move a window past the sender's last
    signed counter (module docstring); None leaves it unbounded, for a plain session without
    a rooms layer to check signatures (the demo's one-way voice).

    State per stranger is bounded: peers known only from their own HELLO are at most
    :data:`MAX_INTRODUCED` (least recently heard evicted, ``on_forget`` told) and at most
    :data:`MAX_INTRODUCED_PER_SHORT` per short id; peers the caller added are tried first
    and never evicted. A HELLO costs a signature check only after the cheap checks (length,
    announce-key tag, short id, replay window of a known session) and within a rate:
    :data:`NEWCOMER_RATE` a second for identities we do not know, :data:`KNOWN_HELLO_RATE`
    per known identity.
    """

    def __init__(
        self,
        keys: RoomKeys,
        *,
        window: int = 64,
        hint_tolerance: int = HINT_TOLERANCE,
        ahead: int | None = None,
    ) -> None:
        if ahead is not None and not 0 < ahead < window:
            raise UsageError("unsigned packets may run ahead less than the replay window")
        self._keys = keys
        self._window = window
        self._ahead = ahead
        self._tolerance = hint_tolerance
        self._peers: dict[bytes, _Peer] = {}
        self._by_short: dict[int, list[_Peer]] = {}  # peers the caller added come first
        self._introduced: OrderedDict[bytes, None] = OrderedDict()  # LRU: oldest first
        self._newcomers = TokenBucket(NEWCOMER_RATE, NEWCOMER_BURST)
        self._known_hellos = Buckets(KNOWN_HELLO_RATE, KNOWN_HELLO_BURST, KNOWN_HELLO_TABLE)
        # Called with each introduced identity evicted to make room (the room forgets it too).
        self.on_forget: Callable[[bytes], None] | None = None
        self.evicted = 0
        self.accepted = 0
        self.rejected: Tally[str] = Tally()
        self.hint_skew = 0
        # Called with each authentic event before any state moves; a reason string refuses
        # it, Signed() says its sender's signature verified. The rooms layer uses it so that
        # a member holding the room key cannot move another member's replay window with
        # packets the room would not accept anyway.
        self.gate: Callable[[Event], GateAnswer] | None = None
        # Senders whose signed control packets may introduce their own session (the rooms
        # layer's moderators: their actions and beacons carry a signed time). For everyone
        # else a control or clip packet under an unknown session is refused unopened.
        self.introducers: Container[bytes] = ()

    @property
    def keys(self) -> RoomKeys:
        return self._keys

    def knows(self, identity: bytes) -> bool:
        return identity in self._peers

    def _peer(self, identity: bytes, *, introduced: bool = False) -> _Peer:
        """The peer of ``identity``, made if new. ``introduced``: known only from its own
        HELLO or saved marks (bounded, evictable); without it a known stranger is promoted
        (the room vouches for it: enrolled, granted, a moderator)."""
        peer = self._peers.get(identity)
        if peer is None:
            peer = _Peer(identity, self._keys.short_id(identity), self._keys.session_mask(identity))
            self._admit(peer, introduced)
        elif peer.introduced and not introduced:
            peer.introduced = False
            self._introduced.pop(identity, None)
            group = self._by_short[peer.short_id]
            group.remove(peer)
            group.insert(0, peer)
        elif peer.introduced:
            self._introduced.move_to_end(identity)
        return peer

    def _admit(self, peer: _Peer, introduced: bool) -> None:
        group = self._by_short.setdefault(peer.short_id, [])
        peer.introduced = introduced
        if not introduced:
            group.insert(0, peer)
        else:
            strangers = [p for p in group if p.introduced]
            if len(strangers) >= MAX_INTRODUCED_PER_SHORT:
                rank = {ident: i for i, ident in enumerate(self._introduced)}
                self._evict(min(strangers, key=lambda p: rank.get(p.identity, -1)).identity)
            if len(self._introduced) >= MAX_INTRODUCED:
                self._evict(next(iter(self._introduced)))
            self._by_short.setdefault(peer.short_id, []).append(peer)
            self._introduced[peer.identity] = None
        self._peers[peer.identity] = peer

    def _evict(self, identity: bytes) -> None:
        self.forget_sender(identity)
        self.evicted += 1
        if self.on_forget is not None:
            self.on_forget(identity)

    @property
    def introduced_count(self) -> int:
        """Peers known only from their own HELLO (at most :data:`MAX_INTRODUCED`)."""
        return len(self._introduced)

    def _new_session(self, identity: bytes, session: bytes) -> _Session:
        return _Session(self._keys.sender(identity, session), ReplayWindow(self._window))

    def add_sender(self, identity: bytes, session: bytes | None = None) -> None:
        """Admit a member; with ``session``, also a session of it the caller vouches for
        (a local decision: no freshness check) and voice is opened under it."""
        peer = self._peer(identity)
        if session is None:
            return
        known = peer.sessions.get(session)
        if known is None:
            if len(peer.sessions) >= MAX_SESSIONS:
                self._drop_oldest(peer)
            known = peer.sessions[session] = self._new_session(identity, session)
        peer.voice = session

    def vouch(
        self, identity: bytes, session: bytes, issued_at: float, now: float, first: int, last: int
    ) -> str | None:
        """A moderator's signed grant or beacon (issued at ``issued_at``) says ``identity``
        speaks under ``session``, counters ``first``..``last``: introduce the session if it
        is fresh, open voice under it and let unsigned packets run up to ``last``.
        Returns a reason if the session cannot be introduced."""
        peer = self._peer(identity)
        known = peer.sessions.get(session)
        if known is None:
            known = self._new_session(identity, session)
            try:
                self._introduce(peer, session, known, issued_at, now)
            except PacketError as exc:
                return exc.reason
        else:
            self._refresh(known, issued_at, now)
        peer.voice = session
        known.anchor = max(known.anchor, first - 1)
        known.vouched = max(known.vouched, last)
        return None

    def export(self) -> list[SessionMark]:
        """Every session's replay window and introduction, for persisting across restarts."""
        return [
            SessionMark(
                peer.identity,
                value,
                sess.intro_time,
                sess.window.highest,
                sess.window.bits,
                sess.anchor,
                peer.floor,
            )
            for peer in self._peers.values()
            for value, sess in peer.sessions.items()
            if sess.window.highest >= 0
        ]

    def highest_counters(self) -> dict[bytes, int]:
        """Per sender, the highest counter accepted in any of its sessions (for status)."""
        out: dict[bytes, int] = {}
        for peer in self._peers.values():
            for sess in peer.sessions.values():
                out[peer.identity] = max(out.get(peer.identity, -1), sess.window.highest)
        return out

    def restore(self, marks: Sequence[SessionMark]) -> None:
        """Take back what :meth:`export` saved (merging with what is known: marks only grow)."""
        for mark in marks:
            peer = self._peer(mark.identity, introduced=True)  # a stranger unless known
            peer.floor = max(peer.floor, mark.floor)
            known = peer.sessions.get(mark.session)
            if known is None:
                if mark.intro_time < peer.floor:
                    continue  # dropped for a newer session before the save
                if len(peer.sessions) >= MAX_SESSIONS:
                    self._drop_oldest(peer)
                known = peer.sessions[mark.session] = self._new_session(mark.identity, mark.session)
            if mark.highest > known.window.highest:
                known.window = ReplayWindow(self._window, mark.highest, mark.bits)
            known.intro_time = max(known.intro_time, mark.intro_time)
            known.anchor = max(known.anchor, mark.anchor)
        for peer in self._peers.values():
            if peer.voice is None and peer.sessions:
                peer.voice = max(peer.sessions.items(), key=lambda i: i[1].intro_time)[0]

    def adopt(self, old: Receiver) -> None:
        """After a key rotation: the sessions ``old`` knew stay introduced (their values
        were vouched for by fresh signed messages); their windows start afresh, as nothing
        was ever sealed under the new key."""
        for peer in old._peers.values():
            mine = self._peer(peer.identity, introduced=peer.introduced)
            mine.floor = max(mine.floor, peer.floor)
            for value, sess in peer.sessions.items():
                if value not in mine.sessions and len(mine.sessions) < MAX_SESSIONS:
                    fresh = self._new_session(peer.identity, value)
                    fresh.intro_time = sess.intro_time
                    mine.sessions[value] = fresh
            if mine.voice is None and peer.voice in mine.sessions:
                mine.voice = peer.voice

    def _drop_oldest(self, peer: _Peer) -> None:
        value, oldest = min(peer.sessions.items(), key=lambda item: item[1].intro_time)
        del peer.sessions[value]
        peer.floor = max(peer.floor, oldest.intro_time)
        if peer.voice == value:
            peer.voice = None

    def _introduce(self, peer: _Peer, value: bytes, session: _Session, at: float, now: float):
        """Admit a new session introduced by a signed message of time ``at`` (module doc)."""
        if not now - INTRO_FRESH <= at <= now + INTRO_FRESH:
            raise PacketError("stale_session", "session introduced too long ago (a recording?)")
        if at <= peer.floor:
            raise PacketError("stale_session", "session older than one this sender replaced")
        if len(peer.sessions) >= MAX_SESSIONS:
            if min(s.intro_time for s in peer.sessions.values()) >= at:
                raise PacketError("stale_session", "session older than every one kept")
            self._drop_oldest(peer)
        session.intro_time = at
        peer.sessions[value] = session
        # Voice is opened only under a session someone vouched for (the moderator's grant or
        # beacon, or the caller): an introduction alone costs no trial decryption of voice.

    def _bound(self, session: _Session) -> int:
        """The highest counter an unsigned packet of ``session`` may carry."""
        if self._ahead is None:
            return wire.COUNTER_LIMIT
        return max(session.anchor + self._ahead, session.vouched)

    @staticmethod
    def _refresh(session: _Session, at: float, now: float) -> None:
        if now - INTRO_FRESH <= at <= now + INTRO_FRESH:
            session.intro_time = max(session.intro_time, at)

    def receive(self, packet: bytes, now: float) -> Event:
        try:
            return self._receive(packet, now)
        except PacketError as exc:
            self.rejected[exc.reason] += 1
            return Rejected(exc.reason, str(exc), now)

    def _receive(self, packet: bytes, now: float) -> Event:
        header, associated, sealed = wire.split(packet)
        if header.ptype == wire.PacketType.HELLO:
            return self._hello(header, associated, sealed, now)
        peers = self._by_short.get(header.sender)
        if not peers:
            raise PacketError("unknown_sender", f"no member has short id {header.sender:04x}")
        voice = header.ptype in wire.VOICE_TYPES
        clear = wire.session_of(associated)
        verdict = "unknown_session"
        for peer in peers:
            value = b"" if voice else wire.xor(clear, peer.mask)
            if voice:
                session = peer.sessions.get(peer.voice) if peer.voice is not None else None
            else:
                session = peer.sessions.get(value)
            fresh = session is None
            if fresh:
                if voice or self.gate is None or peer.identity not in self.introducers:
                    continue  # nothing but a signed, timed message may introduce a session
                session = self._new_session(peer.identity, value)
            problem = session.window.check(header.counter)
            if problem:
                verdict = problem
                continue
            try:
                plaintext = session.cipher.open(associated, header.counter, sealed)
            except PacketError:
                if verdict == "unknown_session":
                    verdict = "auth"
                continue
            event = self._event(session, header, associated, plaintext, now)  # or PacketError
            answer = self.gate(event) if self.gate is not None else None
            if isinstance(answer, str):
                raise PacketError(answer, f"refused by the room ({answer})")
            signed = isinstance(answer, Signed)
            if not signed and header.counter > self._bound(session):
                raise PacketError("ahead", "unsigned packet too far ahead of its sender")
            if fresh:
                at = answer.issued_at if isinstance(answer, Signed) else None
                if at is None:
                    raise PacketError("unknown_session", "no signed time introduces the session")
                self._introduce(peer, value, session, at, now)
            elif isinstance(answer, Signed) and answer.issued_at is not None:
                self._refresh(session, answer.issued_at, now)
            self._commit(session, header, event, signed)
            if peer.introduced:
                self._introduced.move_to_end(peer.identity)
            self.accepted += 1
            if header.hint not in self._keys.hints_near(now, self._tolerance):
                self.hint_skew += 1
            return event
        messages = {
            "replay": "duplicate packet (replay)",
            "stale": "packet older than window",
            "unknown_session": "no session of this sender is known here",
        }
        raise PacketError(verdict, messages.get(verdict, "authentication failed"))

    def _hello(self, header: wire.Header, associated: bytes, sealed: bytes, now: float) -> Event:
        n = wire.HELLO_NONCE_LEN
        fixed = 2 * KEY_LEN + wire.SESSION_LEN + 4 + 1
        if len(sealed) < n + wire.TAG_LEN + fixed + SIGNATURE_LEN:
            raise PacketError("malformed", "hello packet is too short")
        try:
            plaintext = self._keys.announce.decrypt(sealed[:n], sealed[n:], associated)
        except (InvalidTag, ValueError):
            raise PacketError("auth", "authentication failed") from None
        signed, signature = plaintext[:-SIGNATURE_LEN], plaintext[-SIGNATURE_LEN:]
        public = PublicIdentity(signed[:KEY_LEN], signed[KEY_LEN : 2 * KEY_LEN])
        at = 2 * KEY_LEN
        value = bytes(signed[at : at + wire.SESSION_LEN])
        at += wire.SESSION_LEN
        issued_at = int.from_bytes(signed[at : at + 4], "big")
        kind, body = signed[at + 4], signed[at + 5 :]
        # Cheap checks first (short id, a known session's window, freshness, the rates); the
        # Ed25519 and X25519 checks are the CPU a flood buys, so they come last.
        if self._keys.short_id(public.identity) != header.sender:
            raise PacketError("forged", "hello short id does not match its identity")
        known = self._peers.get(public.identity)
        if known is not None:
            kept = known.sessions.get(value)
            problem = kept.window.check(header.counter) if kept is not None else None
            if problem:
                raise PacketError(problem, "duplicate packet (replay)")
            if not self._known_hellos.take(public.identity, now):
                raise PacketError("hello_rate", "too many hellos in this member's name")
        elif not now - INTRO_FRESH <= issued_at <= now + INTRO_FRESH:
            raise PacketError("stale_session", "session introduced too long ago (a recording?)")
        elif not self._newcomers.take(now):
            raise PacketError("hello_rate", "too many hellos from unknown members")
        message = signed_message(self._keys.key_id, public.identity, associated, kind, signed)
        if not public.verify(signature, message):
            raise PacketError("forged", "hello signature does not verify")
        if not valid_agreement_key(public.agreement_key):
            raise PacketError("malformed", "hello carries an unusable X25519 key")
        event = Hello(public, kind, bytes(body), header.counter, now, value, issued_at)
        answer = self.gate(event) if self.gate is not None else None
        if isinstance(answer, str):
            raise PacketError(answer, f"refused by the room ({answer})")
        ident = public.identity
        peer = self._peers.get(ident) or _Peer(ident, header.sender, self._keys.session_mask(ident))
        session = peer.sessions.get(value)
        fresh = session is None
        if session is None:
            session = self._new_session(ident, value)
        problem = session.window.check(header.counter)
        if problem:
            raise PacketError(problem, "duplicate packet (replay)")
        if fresh:
            self._introduce(peer, value, session, issued_at, now)
        else:
            self._refresh(session, issued_at, now)
        if ident not in self._peers:
            self._admit(peer, introduced=True)
        elif peer.introduced:
            self._introduced.move_to_end(ident)
        self._commit(session, header, event, signed=True)
        self.accepted += 1
        return event

    def reopen(self, packet: bytes, now: float) -> Event | None:
        """Open a packet the replay window refused, changing no state (no window, no
        position history): the event it carries if it is authentic, else None.

        A second authentic packet under a counter already used is never an honest resend
        (those are byte-identical): the rooms layer uses this to see what it says."""
        try:
            header, associated, sealed = wire.split(packet)
            if header.ptype == wire.PacketType.HELLO:
                return None
            voice = header.ptype in wire.VOICE_TYPES
            clear = wire.session_of(associated)
            for peer in self._by_short.get(header.sender, ()):
                value = peer.voice if voice else wire.xor(clear, peer.mask)
                session = peer.sessions.get(value) if value is not None else None
                if session is None:
                    continue
                try:
                    plaintext = session.cipher.open(associated, header.counter, sealed)
                except PacketError:
                    continue
                return self._event(session, header, associated, plaintext, now)
        except PacketError:
            return None
        return None

    def carry_position(
        self, identity: bytes, session: bytes, last_position: int | None, now: float
    ) -> None:
        """The sender's over, heard under another key, stands at frame ``last_position``
        (None: that over ended; forget what was carried here).

        At the hourly ratchet a speaker keeps its over's key for a grace, then moves to the
        new one, whose counters restart. Positions are 8 bits on the wire, unwrapped from the
        session's history under this key; without one, the first packet here would be placed
        back near 0, onto words already said. So the next voice of ``session`` here follows
        ``last_position``, whatever its counter, until it has a history of its own."""
        peer = self._peers.get(identity)
        state = peer.sessions.get(session) if peer is not None else None
        if state is None:
            return
        if last_position is None:
            if state.last_counter is None:
                state.last_position, state.last_counter = None, 0
            return
        if (
            state.last_position is not None
            and state.last_counter is not None
            and now - state.last_time <= STREAM_GAP
        ):
            return  # voice of that session placed under this key already
        state.last_position, state.last_counter, state.last_time = last_position, None, now

    def forget_sender(self, identity: bytes) -> None:
        """Stop accepting a member's packets (removed from the room, or evicted)."""
        peer = self._peers.pop(identity, None)
        if peer is not None:
            self._by_short[peer.short_id].remove(peer)
            if not self._by_short[peer.short_id]:
                del self._by_short[peer.short_id]
            self._introduced.pop(identity, None)

    def _event(
        self,
        session: _Session,
        header: wire.Header,
        associated: bytes,
        plaintext: bytes,
        now: float,
    ) -> Event:
        """The event a decrypted packet carries; changes no state."""
        ident = session.cipher.identity
        value = session.cipher.session
        if header.ptype in wire.VOICE_TYPES:
            mode = wire.voice_mode(header)
            body: wire.VoiceBody | wire.VoiceFecBody
            voice, live_mac, live_link = live.split_trailer(plaintext)
            if header.ptype == wire.PacketType.VOICE_FEC:
                body = wire.VoiceFecBody.parse(voice, mode)
                redundant, red_mode = body.redundant, wire.fec_mode(mode)
            else:
                body = wire.VoiceBody.parse(voice, mode)
                redundant, red_mode = (), None
            position = self._unwrap(session, header.counter, len(body.frames), body.position, now)
            if position < 0:
                # Positions count from the over's start; a negative estimate means the
                # counter history is off (e.g. a packet injected far ahead): trust the low bits.
                position = body.position
            if position < len(redundant):  # copies of frames before the over began
                redundant = redundant[len(redundant) - position :]
            return VoiceFrames(
                ident,
                mode,
                position,
                body.frames,
                header.counter,
                now,
                redundant,
                red_mode,
                value,
                live_mac,
                live_link,
            )
        if header.ptype == wire.PacketType.CLIP:
            if not plaintext:
                raise PacketError("malformed", "clip packet with an empty payload")
            return ClipData(ident, bytes(plaintext), header.counter, now, value)
        body = wire.ControlBody.parse(plaintext)
        return ControlMessage(
            ident, body.kind, body.payload, header.counter, now, bytes(associated), value
        )

    @staticmethod
    def _commit(session: _Session, header: wire.Header, event: Event, signed: bool) -> None:
        session.window.accept(header.counter)
        if signed:
            session.anchor = max(session.anchor, header.counter)
        if isinstance(event, VoiceFrames):
            last = event.position + len(event.frames) - 1
            if session.last_position is None or last > session.last_position:
                session.last_position, session.last_counter = last, header.counter
            session.last_time = event.time
        elif isinstance(event, ControlMessage) and event.kind == wire.ControlKind.OVER_END:
            session.last_position = None

    @staticmethod
    def _unwrap(session: _Session, counter: int, n: int, low: int, now: float) -> int:
        if session.last_position is None or now - session.last_time > STREAM_GAP:
            return low
        if session.last_counter is None:  # carried over from another key: follows it
            return wire.unwrap_position(low, session.last_position + 1, session.last_position + 1)
        expected = session.last_position + 1 + (counter - session.last_counter - 1) * n
        # The estimate above assumes no DTX pause among the packets between, so it may be off
        # by a pause or two. A later counter starts after the last packet (floor), an earlier
        # one ends before it (ceiling): a pause cannot unwrap a packet 256 frames onto other
        # words.
        if counter > session.last_counter:
            return wire.unwrap_position(low, expected, floor=session.last_position + 1)
        return wire.unwrap_position(low, expected, ceiling=session.last_position - 1)
