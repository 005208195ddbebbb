"""Sending and receiving sessions for one room: bytes and time in, bytes and events out.

No sockets, no clocks, no threads: ``now`` is passed in (seconds on the room's shared clock,
UNIX time in real use), so tests drive hours of radio time in milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag

from relay.core import wire
from relay.core.crypto import RoomKeys, SenderCipher, hint_epoch
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
# Bounds on what members who merely introduced themselves (HELLO) cost a receiver: a holder
# of the room key can mint identities by the thousand. Enrolled members, moderators and the
# floor holder (added by the room, "protected") are never counted here and never evicted.
MAX_INTRODUCED = 256  # introduced peers kept; the least recently heard goes first
MAX_INTRODUCED_PER_SHORT = 2  # introduced peers sharing one short id (trial decryptions)
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
    """Seals this member's packets for one room."""

    def __init__(
        self,
        keys: RoomKeys,
        identity: bytes,
        counters: CounterSource,
        *,
        block: int = COUNTER_BLOCK,
    ) -> None:
        self._keys = keys
        self._cipher: SenderCipher = keys.sender(identity)
        self._counters = counters
        self._block = block
        self.counter_name = f"{keys.key_id}:{hashlib.sha256(identity).hexdigest()[:32]}"
        self._lock = threading.Lock()
        self._next = 0
        self._limit = 0  # nothing reserved yet: the first packet reserves a block

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

    def _seal(self, ptype: int, sub: int, plaintext: bytes, now: float) -> bytes:
        header = self._header(ptype, sub, now)
        associated = header.pack()
        return associated + self._cipher.seal(associated, header.counter, plaintext)

    def voice(
        self,
        mode: CodecMode,
        position: int,
        frames: Sequence[bytes],
        now: float,
        redundant: Sequence[bytes] | None = None,
    ) -> bytes:
        """One sealed voice packet carrying ``frames``, the first at index ``position``.

        With ``redundant`` (lower-rate copies of the ``len(frames)`` frames before
        ``position``, in the mode :data:`wire.FEC_PAIRS` names) it is a VOICE_FEC packet.
        """
        if position < 0:
            raise UsageError("frame position must not be negative")
        low = position % wire.POSITION_MODULUS
        if redundant is None:
            body = wire.VoiceBody(low, tuple(frames)).pack(mode)
            return self._seal(wire.PacketType.VOICE, mode.wire_index, body, now)
        if position < len(frames):
            raise UsageError("redundant frames need as many frames before the packet")
        body = wire.VoiceFecBody(low, tuple(frames), tuple(redundant)).pack(mode)
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
        """A control packet whose body the member signs (room state changes)."""
        self._check_signer(signer)
        header = self._header(wire.PacketType.CONTROL, 0, now)
        associated = header.pack()
        signature = signer.sign(
            signed_message(self._keys.key_id, self.identity, associated, kind, body)
        )
        plaintext = wire.ControlBody(kind, body + signature).pack()
        return associated + self._cipher.seal(associated, header.counter, plaintext)

    def hello(self, kind: int, body: bytes, signer: Identity, now: float) -> bytes:
        """An introduction: who this member is, readable by every holder of the room key.

        Sealed under the shared announce key with a random nonce (members do not know our
        identity yet, so they cannot derive our own key), signed by the identity it names.
        """
        self._check_signer(signer)
        header = self._header(wire.PacketType.HELLO, 0, now)
        associated = header.pack()
        pub = signer.public
        signed = pub.signing_key + pub.agreement_key + bytes((kind,)) + body
        signature = signer.sign(
            signed_message(self._keys.key_id, self.identity, associated, kind, signed)
        )
        nonce = os.urandom(wire.HELLO_NONCE_LEN)
        sealed = self._keys.announce.encrypt(nonce, signed + signature, associated)
        packet = associated + nonce + sealed
        if len(packet) > wire.MAX_PACKET_LEN:
            raise UsageError(f"a packet may not exceed {wire.MAX_PACKET_LEN} bytes")
        return packet

    def over_end(self, frames_sent: int, now: float) -> bytes:
        """The control packet that tells listeners an over is complete."""
        if not 0 <= frames_sent < 1 << 32:
            raise UsageError("an over's frame count must fit in 32 bits")
        return self.control(wire.ControlKind.OVER_END, frames_sent.to_bytes(4, "big"), now)


@dataclass
class _Peer:
    cipher: SenderCipher
    window: ReplayWindow
    last_position: int | None = None  # absolute index of the last frame received
    last_counter: int = 0
    last_time: float = 0.0
    introduced: bool = False  # known only from its own HELLO: bounded, evictable


class Receiver:
    """Opens packets for one room; rejects and counts everything that is not right.

    Authentication here is room-level: it proves a packet was sealed with a key derived from
    the room key for that sender, which any holder of the room key can derive. Per-member
    proof comes from signatures over whole overs (the rooms layer).

    The room hint is a routing filter, not a security check (one byte: 5 in 256 random hints
    match); a hint outside the clock tolerance is counted as ``hint_skew`` and the packet is
    still tried, so members whose clocks drifted, and late store-and-forward packets, still get
    through. Replay protection is the per-sender window, persisted by the caller.

    State per stranger is bounded: peers known only from their own HELLO are at most
    :data:`MAX_INTRODUCED` (least recently heard evicted, ``on_forget`` told) and at most
    :data:`MAX_INTRODUCED_PER_SHORT` per short id; peers the caller added are tried first
    and never evicted. A HELLO costs a signature check only after the cheap checks (length,
    announce-key tag, short id, replay window) and within a rate: :data:`NEWCOMER_RATE` a
    second for identities we do not know, :data:`KNOWN_HELLO_RATE` per known identity.
    """

    def __init__(
        self, keys: RoomKeys, *, window: int = 64, hint_tolerance: int = HINT_TOLERANCE
    ) -> None:
        self._keys = keys
        self._window = window
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
        # it. The rooms layer uses it so that a member holding the room key cannot move
        # another member's replay window with packets the room would not accept anyway.
        self.gate: Callable[[Event], str | None] | None = None

    @property
    def keys(self) -> RoomKeys:
        return self._keys

    def knows(self, identity: bytes) -> bool:
        return identity in self._peers

    def add_sender(
        self, identity: bytes, highest_counter: int = -1, *, introduced: bool = False
    ) -> None:
        """Admit a member. ``highest_counter`` restores a persisted replay window.

        ``introduced``: known only from its own HELLO (or a mark saved for such a member):
        counted against the bounds above and evictable. Without it the member is protected
        (enrolled, a moderator, the floor holder), also if it was introduced before."""
        known = self._peers.get(identity)
        if known is not None:
            if highest_counter > known.window.highest:
                known.window = ReplayWindow(self._window, highest_counter)
            if known.introduced and not introduced:
                known.introduced = False
                self._introduced.pop(identity, None)
                group = self._by_short[known.cipher.short_id]
                group.remove(known)
                group.insert(0, known)
            elif known.introduced:
                self._introduced.move_to_end(identity)
            return
        cipher = self._keys.sender(identity)
        peer = _Peer(cipher, ReplayWindow(self._window, highest_counter), introduced=introduced)
        group = self._by_short.setdefault(cipher.short_id, [])
        if not introduced:
            group.insert(0, peer)
        else:
            strangers = [p for p in group if p.introduced]
            if len(strangers) >= MAX_INTRODUCED_PER_SHORT:
                self._evict(min(strangers, key=self._lru_rank).cipher.identity)
            if len(self._introduced) >= MAX_INTRODUCED:
                self._evict(next(iter(self._introduced)))
            group.append(peer)
            self._introduced[identity] = None
        self._peers[identity] = peer

    def _lru_rank(self, peer: _Peer) -> int:
        for rank, ident in enumerate(self._introduced):
            if ident == peer.cipher.identity:
                return rank
        return -1

    def _evict(self, identity: bytes) -> None:
        self.forget_sender(identity)
        self.evicted += 1
        if self.on_forget is not None:
            self.on_forget(identity)

    @property
    def introduced_count(self) -> int:
        """Peers known only from their own HELLO (at most :data:`MAX_INTRODUCED`)."""
        return len(self._introduced)

    def highest(self, identity: bytes) -> int:
        """One sender's replay mark (-1: unknown or nothing accepted yet)."""
        peer = self._peers.get(identity)
        return -1 if peer is None else peer.window.highest

    def highest_counters(self) -> dict[bytes, int]:
        """Per-sender replay marks, for persisting across restarts."""
        return {ident: p.window.highest for ident, p in self._peers.items()}

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
        verdict = "auth"
        for peer in peers:
            problem = peer.window.check(header.counter)
            if problem:
                verdict = problem
                continue
            try:
                plaintext = peer.cipher.open(associated, header.counter, sealed)
            except PacketError:
                continue
            event = self._event(peer, header, plaintext, now)  # PacketError if body is bad
            if self.gate is not None:
                reason = self.gate(event)
                if reason is not None:
                    raise PacketError(reason, f"refused by the room ({reason})")
            self._commit(peer, header, event)
            if peer.introduced:
                self._introduced.move_to_end(peer.cipher.identity)
            self.accepted += 1
            if header.hint not in self._keys.hints_near(now, self._tolerance):
                self.hint_skew += 1
            return event
        messages = {"replay": "duplicate packet (replay)", "stale": "packet older than window"}
        raise PacketError(verdict, messages.get(verdict, "authentication failed"))

    def _hello(self, header: wire.Header, associated: bytes, sealed: bytes, now: float) -> Event:
        # Cheap checks first (length, the announce key's tag, short id, replay window, rate);
        # the Ed25519 and X25519 checks are the CPU a flood buys, so they come last.
        n = wire.HELLO_NONCE_LEN
        if len(sealed) < n + wire.TAG_LEN + 2 * KEY_LEN + 1 + SIGNATURE_LEN:
            raise PacketError("malformed", "hello packet is too short")
        try:
            plaintext = self._keys.announce.decrypt(sealed[:n], sealed[n:], associated)
        except (InvalidTag, ValueError):
            raise PacketError("auth", "authentication failed") from None
        signed, signature = plaintext[:-SIGNATURE_LEN], plaintext[-SIGNATURE_LEN:]
        public = PublicIdentity(signed[:KEY_LEN], signed[KEY_LEN : 2 * KEY_LEN])
        kind, body = signed[2 * KEY_LEN], signed[2 * KEY_LEN + 1 :]
        if self._keys.short_id(public.identity) != header.sender:
            raise PacketError("forged", "hello short id does not match its identity")
        peer = self._peers.get(public.identity)
        if peer is not None:
            problem = peer.window.check(header.counter)
            if problem:
                raise PacketError(problem, "duplicate packet (replay)")
            if not self._known_hellos.take(public.identity, now):
                raise PacketError("hello_rate", "too many hellos in this member's name")
        elif not self._newcomers.take(now):
            raise PacketError("hello_rate", "too many hellos from unknown members")
        message = signed_message(self._keys.key_id, public.identity, associated, kind, signed)
        if not public.verify(signature, message):
            raise PacketError("forged", "hello signature does not verify")
        if not valid_agreement_key(public.agreement_key):
            raise PacketError("malformed", "hello carries an unusable X25519 key")
        if peer is None:
            self.add_sender(public.identity, introduced=True)
            peer = self._peers[public.identity]
        elif peer.introduced:
            self._introduced.move_to_end(public.identity)
        problem = peer.window.check(header.counter)
        if problem:
            raise PacketError(problem, "duplicate packet (replay)")
        peer.window.accept(header.counter)
        self.accepted += 1
        return Hello(public, kind, bytes(body), header.counter, now)

    def forget_sender(self, identity: bytes) -> None:
        """Stop accepting a member's packets (removed from the room, or evicted)."""
        peer = self._peers.pop(identity, None)
        if peer is not None:
            self._by_short[peer.cipher.short_id].remove(peer)
            if not self._by_short[peer.cipher.short_id]:
                del self._by_short[peer.cipher.short_id]
            self._introduced.pop(identity, None)

    def _event(self, peer: _Peer, header: wire.Header, plaintext: bytes, now: float) -> Event:
        """The event a decrypted packet carries; changes no state."""
        ident = peer.cipher.identity
        if header.ptype in wire.VOICE_TYPES:
            mode = wire.voice_mode(header)
            body: wire.VoiceBody | wire.VoiceFecBody
            if header.ptype == wire.PacketType.VOICE_FEC:
                body = wire.VoiceFecBody.parse(plaintext, mode)
                redundant, red_mode = body.redundant, wire.fec_mode(mode)
            else:
                body = wire.VoiceBody.parse(plaintext, mode)
                redundant, red_mode = (), None
            position = self._unwrap(peer, header.counter, len(body.frames), body.position, now)
            if position < 0:
                # Positions count from the over's start; a negative estimate means the
                # counter history is off (e.g. a packet injected far ahead): trust the low bits.
                position = body.position
            if position < len(redundant):  # copies of frames before the over began
                redundant = redundant[len(redundant) - position :]
            return VoiceFrames(
                ident, mode, position, body.frames, header.counter, now, redundant, red_mode
            )
        if header.ptype == wire.PacketType.CLIP:
            if not plaintext:
                raise PacketError("malformed", "clip packet with an empty payload")
            return ClipData(ident, bytes(plaintext), header.counter, now)
        body = wire.ControlBody.parse(plaintext)
        return ControlMessage(ident, body.kind, body.payload, header.counter, now, header.pack())

    @staticmethod
    def _commit(peer: _Peer, header: wire.Header, event: Event) -> None:
        peer.window.accept(header.counter)
        if isinstance(event, VoiceFrames):
            last = event.position + len(event.frames) - 1
            if peer.last_position is None or last > peer.last_position:
                peer.last_position, peer.last_counter = last, header.counter
            peer.last_time = event.time
        elif isinstance(event, ControlMessage) and event.kind == wire.ControlKind.OVER_END:
            peer.last_position = None

    @staticmethod
    def _unwrap(peer: _Peer, counter: int, n: int, low: int, now: float) -> int:
        if peer.last_position is None or now - peer.last_time > STREAM_GAP:
            return low
        expected = peer.last_position + 1 + (counter - peer.last_counter - 1) * n
        return wire.unwrap_position(low, expected)
