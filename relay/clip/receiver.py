"""The receiving side: reassemble pieces, verify the whole message, acknowledge in slots.

Sans-I/O, for every message heard in one room: :meth:`ClipReceiver.receive` takes one clip
payload from a known member (the room already checked the packet's key, replay window and
the sender's standing) and returns events for the caller to persist or act on;
:meth:`acks_due` hands out the acks whose time has come.

Nothing partial is ever playable: a message is complete only when every piece is in and the
sender's Ed25519 signature verifies over the offer and SHA-256 of the whole stream. If it
does not verify (a room-key holder injected a piece or an offer), every piece is dropped and
the message starts over: the honest sender's retransmissions rebuild it.

Acks are answered to a POLL (the end of a burst) or an offer, after a guard time plus a
random slot, so several receivers rarely collide. A receiver that overhears another's ack
for the same message keeps quiet when that ack already asks for everything it needs and
the sender's picture of it (its own last ack) would make the sender resend nothing extra.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.clip.wire import Ack, Offer, Piece, digest, parse
from relay.core.identity import PublicIdentity
from relay.errors import PacketError, UsageError

MsgKey = tuple[bytes, bytes]  # (sender identity, message id)
DEFAULT_MAX_BYTES = 64 * 1024
MAX_PENDING = 64  # incomplete messages held at once (memory stays bounded)


@dataclass(frozen=True, slots=True)
class OfferReceived:
    sender: bytes
    offer: Offer


@dataclass(frozen=True, slots=True)
class PieceReceived:
    sender: bytes
    msg_id: bytes
    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class MessageComplete:
    """Every piece arrived and the sender's signature verified: playable."""

    sender: bytes
    offer: Offer
    data: bytes


@dataclass(frozen=True, slots=True)
class MessageReset:
    """The whole did not verify (or contradicted its offer): pieces dropped, starting over."""

    sender: bytes
    msg_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class AckHeard:
    """Somebody's ack: for the caller's own outgoing messages."""

    receiver: bytes
    ack: Ack


@dataclass(frozen=True, slots=True)
class Refused:
    sender: bytes
    reason: str
    detail: str


ReceiverEvent = OfferReceived | PieceReceived | MessageComplete | MessageReset | AckHeard | Refused


@dataclass
class _Message:
    offer: Offer | None = None
    pieces: dict[int, bytes] = field(default_factory=dict)
    complete: bool = False
    ack_at: float | None = None
    told: frozenset[int] | None = None  # what our last ack said we held (None: never acked)
    told_flags: tuple[bool, bool] = (False, False)  # (have offer, complete) in our last ack
    suppressed_last: bool = False


@dataclass(slots=True)
class ReceiverStats:
    pieces: int = 0
    duplicates: int = 0
    acks_sent: int = 0
    acks_suppressed: int = 0
    completed: int = 0
    resets: int = 0
    refused: dict[str, int] = field(default_factory=dict)


class ClipReceiver:
    """Every incoming voice message in one room.

    ``public_of(sender)`` gives a sender's public identity (None if unknown: its messages
    cannot be verified, so they are refused). ``slot`` is the airtime of one ack on this
    link; acks go out ``guard`` seconds after a poll plus one of ``slots`` random slots.
    """

    def __init__(
        self,
        room_id: bytes,
        public_of: Callable[[bytes], PublicIdentity | None],
        *,
        slot: float,
        guard: float = 0.05,
        slots: int = 4,
        max_bytes: int = DEFAULT_MAX_BYTES,
        rng: random.Random | None = None,
    ) -> None:
        if slot < 0 or guard < 0 or slots < 1 or max_bytes < 1:
            raise UsageError("slot and guard must be >= 0, slots and max_bytes >= 1")
        self.room_id = room_id
        self.public_of = public_of
        self.slot = slot
        self.guard = guard
        self.slots = slots
        self.max_bytes = max_bytes
        self.rng = rng or random.Random()
        self.stats = ReceiverStats()
        self._messages: dict[MsgKey, _Message] = {}

    # ------------------------------------------------------------------ restoring
    def restore(
        self, sender: bytes, msg_id: bytes, offer: Offer | None, pieces: dict[int, bytes]
    ) -> None:
        """Give back a partly received message after a restart."""
        self._messages[(sender, msg_id)] = _Message(offer=offer, pieces=dict(pieces))

    def restore_complete(self, sender: bytes, offer: Offer) -> None:
        """A message already in the inbox: answered as complete, never stored twice."""
        self._messages[(sender, offer.msg_id)] = _Message(offer=offer, complete=True)

    def state(self, sender: bytes, msg_id: bytes) -> tuple[Offer | None, int, bool] | None:
        """(offer, pieces held, complete) of one message, for progress displays."""
        m = self._messages.get((sender, msg_id))
        if m is None:
            return None
        held = m.offer.pieces if m.complete and m.offer else len(m.pieces)
        return m.offer, held, m.complete

    # ------------------------------------------------------------------ receiving
    def receive(self, sender: bytes, payload: bytes, now: float) -> list[ReceiverEvent]:
        try:
            item = parse(payload)
        except PacketError as exc:
            return [self._refuse(sender, exc.reason, str(exc))]
        if isinstance(item, Ack):
            self._overheard(item, now)
            return [AckHeard(sender, item)]
        key = (sender, item.msg_id)
        m = self._messages.get(key)
        if m is None:
            if len(self._messages) >= MAX_PENDING and not self._evict():
                return [self._refuse(sender, "clip_busy", "too many incomplete messages")]
            m = self._messages[key] = _Message()
        if isinstance(item, Offer):
            return self._on_offer(sender, m, item, now)
        return self._on_piece(sender, m, item, now)

    def _on_offer(self, sender: bytes, m: _Message, offer: Offer, now: float) -> list:
        self._poll_or_wait(m, offer.poll, now)
        if m.offer is not None:
            if m.offer != offer and not m.complete:
                # Two different offers under one id: one is forged; neither is trusted yet.
                return self._reset(sender, m, offer.msg_id, "offer_conflict")
            return []
        if offer.total > self.max_bytes:
            del self._messages[(sender, offer.msg_id)]
            return [
                self._refuse(
                    sender, "clip_too_big", f"{offer.total} B over the {self.max_bytes} B limit"
                )
            ]
        wrong = [
            i for i, d in m.pieces.items() if i >= offer.pieces or len(d) != offer.piece_len(i)
        ]
        for i in wrong:
            del m.pieces[i]
        m.offer = offer
        events: list[ReceiverEvent] = [OfferReceived(sender, offer)]
        return events + self._maybe_complete(sender, m)

    def _on_piece(self, sender: bytes, m: _Message, piece: Piece, now: float) -> list:
        self._poll_or_wait(m, piece.poll, now)
        if m.complete:
            self.stats.duplicates += 1
            return []
        offer = m.offer
        if offer is not None and (
            piece.index >= offer.pieces or len(piece.data) != offer.piece_len(piece.index)
        ):
            return [self._refuse(sender, "clip_malformed", "piece does not match its offer")]
        if offer is None and (piece.index + 1) * len(piece.data) > self.max_bytes * 2:
            return [self._refuse(sender, "clip_too_big", "piece beyond the size limit")]
        held = m.pieces.get(piece.index)
        if held is not None:
            self.stats.duplicates += 1
            return []
        m.pieces[piece.index] = piece.data
        self.stats.pieces += 1
        events: list[ReceiverEvent] = [PieceReceived(sender, piece.msg_id, piece.index, piece.data)]
        return events + self._maybe_complete(sender, m)

    def _maybe_complete(self, sender: bytes, m: _Message) -> list[ReceiverEvent]:
        offer = m.offer
        if offer is None or len(m.pieces) < offer.pieces:
            return []
        data = b"".join(m.pieces[i] for i in range(offer.pieces))
        public = self.public_of(sender)
        if public is None:
            return self._reset(sender, m, offer.msg_id, "unknown_sender")
        message = offer.signed_message(self.room_id, sender, digest(data))
        if not public.verify(offer.signature, message):
            return self._reset(sender, m, offer.msg_id, "bad_signature")
        m.complete = True
        m.pieces = {}
        self.stats.completed += 1
        return [MessageComplete(sender, offer, data)]

    def _reset(self, sender: bytes, m: _Message, msg_id: bytes, reason: str) -> list:
        m.offer = None
        m.pieces = {}
        self.stats.resets += 1
        return [MessageReset(sender, msg_id, reason)]

    def _refuse(self, sender: bytes, reason: str, detail: str) -> Refused:
        self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1
        return Refused(sender, reason, detail)

    def _evict(self) -> bool:
        """Forget one complete message's memory to make room (the inbox keeps it)."""
        for key, m in self._messages.items():
            if m.complete and m.ack_at is None:
                del self._messages[key]
                return True
        return False

    # ------------------------------------------------------------------ acknowledging
    def _poll_or_wait(self, m: _Message, poll: bool, now: float) -> None:
        """Answer a poll in a random slot; anything else means the sender is mid-burst,
        so a pending ack waits for the burst's poll (sent now, it would collide)."""
        if not poll:
            m.ack_at = None
        elif m.ack_at is None:
            m.ack_at = now + self.guard + self.slot * self.rng.randrange(self.slots)

    def _held(self, m: _Message) -> frozenset[int]:
        if m.complete and m.offer is not None:
            return frozenset(range(m.offer.pieces))
        return frozenset(m.pieces)

    def _overheard(self, other: Ack, now: float) -> None:
        for (_, msg_id), m in self._messages.items():
            if msg_id != other.msg_id or m.ack_at is None or m.offer is None:
                continue
            pieces = m.offer.pieces
            theirs = frozenset(range(pieces)) if other.complete else frozenset(other.held(pieces))
            if m.told is None or m.suppressed_last:
                # Every receiver answers once (so the sender learns who listens), and never
                # keeps quiet twice in a row: our last ack may have been lost.
                continue
            if m.told_flags != (True, m.complete):
                continue  # the sender's picture of us lacks our offer or completion
            if theirs <= (self._held(m) & m.told):
                m.ack_at = None
                m.suppressed_last = True
                self.stats.acks_suppressed += 1

    def acks_due(self, now: float) -> list[bytes]:
        """Ack payloads whose slot has come (send them now)."""
        out = []
        for (_, msg_id), m in self._messages.items():
            if m.ack_at is None or m.ack_at > now:
                continue
            m.ack_at = None
            held = self._held(m)
            m.told = held
            m.told_flags = (m.offer is not None, m.complete)
            m.suppressed_last = False
            ack = Ack.of(msg_id, held, have_offer=m.offer is not None, complete=m.complete)
            out.append(ack.pack())
            self.stats.acks_sent += 1
        return out

    def wakeup(self) -> float | None:
        """When :meth:`acks_due` next has something (None: nothing scheduled)."""
        times = [m.ack_at for m in self._messages.values() if m.ack_at is not None]
        return min(times) if times else None
