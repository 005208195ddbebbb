"""Amateur-band mode: packets signed, never encrypted, each carrying the operator's callsign.

On amateur bands encryption is forbidden (messages may not be obscured) and the station must
identify itself by callsign. Signing is allowed: it hides nothing and proves who spoke. So a
ham-mode packet is readable by anyone, carries the callsign in clear, and is signed with the
operator's Ed25519 identity; nobody can inject words under someone else's key.

Sans-I/O: bytes and ``now`` in, events out. Layout (packet type 6, :data:`PacketType.HAM`)::

    7     the relay header: version | type 6 | sub (codec mode for voice, else 0),
          hint (the ham room's hint, public), short id (from the public key), counter
    1     kind: 1 intro, 2 voice, 3 end of over
    1+n   callsign: length n (3..10), ASCII upper case, digits, '/' and '-'
    ...   body: intro = Ed25519 public key (32); voice = position byte + Codec2 frames;
          end = frame count (2 bytes)
    64    Ed25519 signature over HAM_DOMAIN + everything above

**Cost.** A voice packet carries 7 + 1 + 1 + n + 1 + 64 bytes around its frames: 80 bytes
for a 6-character callsign, against 18 for an encrypted packet. The 16-byte goal does not
apply here: the signature is what replaces the AEAD tag, and Ed25519's is 64 bytes. It is
amortised by carrying more frames per packet (Codec2 1600 at 10 frames per packet: 80 bytes
of codec and 80 of overhead per 400 ms); an intro (callsign + public key, 138 bytes) opens
each over. Signing every packet is deliberate: each one verifies on its own, so a lost
packet never leaves the others unverifiable (signing one digest per over would save 60
bytes a packet and lose exactly that).

**Never mixed.** A ham receiver refuses every packet that is not ham (counted
``encrypted``); an encrypted room refuses ham packets (``relay.core.room``, counted
``ham_refused``). **Callsigns** are bound to keys on first use (an intro binds them; a key
that later claims another callsign, or a callsign heard from another key, is refused,
counted ``callsign_changed``). Nothing proves a callsign is the holder's licence: the band's
rules ask that it be sent, and this sends it.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass

from relay.core import wire
from relay.core.identity import Identity, verify
from relay.core.replay import ReplayWindow
from relay.core.session import CounterSource
from relay.errors import PacketError, UsageError
from relay.voice.modes import CodecMode

HAM_DOMAIN = b"relay/ham/v1\x00"
SIGNATURE_LEN = 64
KEY_LEN = 32
COUNTER_BLOCK = 256
MAX_STATIONS = 256  # callsigns a listener binds; intros beyond are refused (a flood of keys)
_CALLSIGN = re.compile(r"[A-Z0-9/-]{3,10}")


class HamKind(enum.IntEnum):
    INTRO = 1
    VOICE = 2
    END = 3


def check_callsign(callsign: str) -> str:
    """A callsign as sent: upper case letters, digits, '/' and '-', 3..10 characters."""
    if not isinstance(callsign, str):
        raise UsageError("a callsign is text, e.g. N0CALL or VK2ABC-7")
    value = callsign.strip().upper()
    if not _CALLSIGN.fullmatch(value) or not any(c.isdigit() for c in value):
        raise UsageError(
            f"{callsign!r} is not a callsign (3..10 letters and digits, '/' or '-', at least "
            "one digit), e.g. N0CALL or VK2ABC-7"
        )
    return value


def ham_hint(room: str) -> int:
    """The public room hint of a ham room: from its name, since nothing is secret."""
    return hashlib.sha256(b"relay/ham-room/v1" + room.encode("utf-8")).digest()[0]


def ham_short_id(signing_key: bytes) -> int:
    return int.from_bytes(hashlib.sha256(b"relay/ham-id/v1" + signing_key).digest()[:2], "big")


def is_ham(packet: bytes) -> bool:
    """Whether byte 0 names a ham packet (cheap: for refusing before parsing)."""
    return (
        len(packet) > 0
        and (packet[0] >> 3) & 0x07 == wire.PacketType.HAM
        and packet[0] >> 6 == wire.VERSION
    )


def voice_overhead(callsign: str) -> int:
    """Bytes a ham voice packet carries besides its Codec2 frames."""
    return wire.HEADER_LEN + 1 + 1 + len(check_callsign(callsign)) + 1 + SIGNATURE_LEN


@dataclass(frozen=True, slots=True)
class HamIntro:
    callsign: str
    signing_key: bytes
    time: float


@dataclass(frozen=True, slots=True)
class HamVoice:
    callsign: str
    signing_key: bytes
    mode: CodecMode
    position: int
    frames: list[bytes]
    counter: int
    time: float


@dataclass(frozen=True, slots=True)
class HamEnd:
    callsign: str
    signing_key: bytes
    frames: int
    time: float


@dataclass(frozen=True, slots=True)
class HamRejected:
    reason: str
    detail: str
    time: float


HamEvent = HamIntro | HamVoice | HamEnd | HamRejected


class HamSender:
    """Signs this operator's packets for one ham room. Counters come from a durable source
    (as for encrypted packets): receivers' replay windows must never see one twice."""

    def __init__(
        self, identity: Identity, callsign: str, room: str, counters: CounterSource
    ) -> None:
        self.identity = identity
        self.callsign = check_callsign(callsign)
        self.hint = ham_hint(room)
        self.short_id = ham_short_id(identity.identity)
        self._counters = counters
        self.counter_name = f"ham:{hashlib.sha256(room.encode()).hexdigest()[:16]}"
        self._next = 0
        self._limit = 0

    def _counter(self) -> int:
        if self._next >= self._limit:
            start = self._counters.reserve(self.counter_name, COUNTER_BLOCK, wire.COUNTER_LIMIT)
            self._next, self._limit = start, start + COUNTER_BLOCK
        counter = self._next
        self._next += 1
        return counter

    def _packet(self, kind: HamKind, body: bytes, sub: int = 0) -> bytes:
        header = wire.Header(wire.PacketType.HAM, sub, self.hint, self.short_id, self._counter())
        call = self.callsign.encode("ascii")
        signed = header.pack() + bytes([kind, len(call)]) + call + body
        return signed + self.identity.sign(HAM_DOMAIN + signed)

    def intro(self) -> bytes:
        """Callsign and public key: sent at the start of every over (and when asked)."""
        return self._packet(HamKind.INTRO, self.identity.identity)

    def voice(self, mode: CodecMode, position: int, frames: list[bytes]) -> bytes:
        if any(len(f) != mode.bytes_per_frame for f in frames) or not frames:
            raise UsageError(f"ham voice wants whole {mode.name} frames")
        body = bytes([position % wire.POSITION_MODULUS]) + b"".join(frames)
        return self._packet(HamKind.VOICE, body, sub=mode.wire_index)

    def end(self, frames: int) -> bytes:
        return self._packet(HamKind.END, min(frames, 0xFFFF).to_bytes(2, "big"))


@dataclass
class _Peer:
    signing_key: bytes
    callsign: str
    window: ReplayWindow


class HamReceiver:
    """Verifies ham packets of one room. Refuses and counts everything else, encrypted
    packets first of all."""

    def __init__(self, room: str, *, mode_of: Callable[[int], CodecMode | None] | None = None):
        from relay.voice.modes import mode_by_index

        self.hint = ham_hint(room)
        self.rejected: Tally[str] = Tally()
        self.accepted = 0
        self._mode_of = mode_of or mode_by_index
        self._by_key: dict[bytes, _Peer] = {}
        self._by_call: dict[str, bytes] = {}

    @property
    def stations(self) -> dict[str, bytes]:
        """Callsign -> public key, as bound on first use."""
        return dict(self._by_call)

    def receive(self, packet: bytes, now: float) -> HamEvent:
        try:
            return self._receive(bytes(packet), now)
        except PacketError as exc:
            self.rejected[exc.reason] += 1
            return HamRejected(exc.reason, str(exc), now)

    def _receive(self, packet: bytes, now: float) -> HamEvent:
        if not is_ham(packet):
            raise PacketError("encrypted", "not an amateur-band packet: this room is ham mode")
        header = wire.Header.parse(packet)
        if header.hint != self.hint:
            raise PacketError("other_room", "a ham packet of another room")
        if len(packet) < wire.HEADER_LEN + 2 + 3 + SIGNATURE_LEN:
            raise PacketError("malformed", "ham packet is too short")
        signed, signature = packet[:-SIGNATURE_LEN], packet[-SIGNATURE_LEN:]
        kind, n = signed[wire.HEADER_LEN], signed[wire.HEADER_LEN + 1]
        start = wire.HEADER_LEN + 2
        if len(signed) < start + n:
            raise PacketError("malformed", "ham packet is cut in its callsign")
        try:
            callsign = check_callsign(signed[start : start + n].decode("ascii"))
        except (UnicodeDecodeError, UsageError):
            raise PacketError("malformed", "ham packet carries no valid callsign") from None
        if callsign.encode() != signed[start : start + n]:
            raise PacketError("malformed", "ham packet callsign is not in its sent form")
        body = signed[start + n :]
        if kind not in HamKind._value2member_map_:
            raise PacketError("malformed", f"unknown ham packet kind {kind}")
        if kind != HamKind.VOICE and header.sub != 0:
            raise PacketError("malformed", "ham control packet with a nonzero sub field")
        if kind == HamKind.INTRO:
            if len(body) != KEY_LEN:
                raise PacketError("malformed", "ham intro does not carry one public key")
            key = body
            if ham_short_id(key) != header.sender:
                raise PacketError("forged", "ham intro short id does not match its key")
            peer = self._check(key, callsign, header, signed, signature)
            self._commit(peer, header.counter)
            return HamIntro(callsign, key, now)
        key = self._by_call.get(callsign)
        if key is None:
            raise PacketError("unknown_sender", f"{callsign} has not introduced itself yet")
        known = self._check(key, callsign, header, signed, signature)
        if kind == HamKind.VOICE:
            mode = self._mode_of(header.sub)
            if mode is None or not body or (len(body) - 1) % mode.bytes_per_frame:
                raise PacketError("malformed", "ham voice packet does not hold whole frames")
            frames = [
                body[i : i + mode.bytes_per_frame]
                for i in range(1, len(body), mode.bytes_per_frame)
            ]
            self._commit(known, header.counter)
            return HamVoice(callsign, known.signing_key, mode, body[0], frames, header.counter, now)
        if len(body) != 2:
            raise PacketError("malformed", "ham end of over carries a 2-byte frame count")
        self._commit(known, header.counter)
        return HamEnd(callsign, known.signing_key, int.from_bytes(body, "big"), now)

    def _check(
        self, key: bytes, callsign: str, header: wire.Header, signed: bytes, signature: bytes
    ) -> _Peer:
        """Signature, callsign binding and replay window; nothing is changed before all
        three pass (a forged packet never moves a window or binds a callsign)."""
        if ham_short_id(key) != header.sender:
            raise PacketError("forged", "ham packet short id does not match the key")
        bound = self._by_call.get(callsign)
        if bound is not None and bound != key:
            raise PacketError("callsign_changed", f"{callsign} is bound to another key here")
        peer = self._by_key.get(key)
        if peer is not None and peer.callsign != callsign:
            raise PacketError("callsign_changed", "a known key claims another callsign")
        if peer is not None:
            problem = peer.window.check(header.counter)
            if problem:
                raise PacketError(problem, f"ham packet {problem}")
        if not verify(key, signature, HAM_DOMAIN + signed):
            raise PacketError("forged", "ham packet signature does not verify")
        if peer is None:
            if len(self._by_key) >= MAX_STATIONS:
                raise PacketError("too_many_stations", "no room for another station here")
            peer = _Peer(key, callsign, ReplayWindow())
        return peer

    def _commit(self, peer: _Peer, counter: int) -> None:
        self._by_key[peer.signing_key] = peer
        self._by_call[peer.callsign] = peer.signing_key
        peer.window.accept(counter)
        self.accepted += 1
