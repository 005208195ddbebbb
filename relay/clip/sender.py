"""The sending side of one voice message: rounds of pieces, selective repeat by acks.

Sans-I/O: the caller asks :meth:`ClipSender.next_payload` for the next payload whenever its
link is free and its airtime budget allows, tells :meth:`transmitted` when that payload has
left the air, and hands in every ACK it hears with :meth:`on_ack`. Time is an argument.

Why rounds: LoRa is half duplex and a receiver that transmitted while the sender is sending
would destroy a piece at every other receiver. So the sender sends a burst (the offer when
someone lacks it, then every piece not yet held by every known receiver, inside the window
one ACK can describe), marks its last packet POLL and stays quiet for an ack window in
which receivers answer in random slots. The next round resends exactly what the acks say
is missing. A round that draws no ack at all is followed by a probe (the offer alone, which
receivers always answer), backing off, instead of resending pieces blindly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from relay.clip.wire import WINDOW, Ack, Offer, Piece
from relay.errors import UsageError

MAX_BACKOFF = 8.0
LATE_DECAY = 0.9  # how fast the memory of a late ack fades, per ack
PATIENCE = 4  # silent probes at the plain pace before backing off (nobody has answered yet)
STALE_ROUNDS = 4  # a receiver silent this many rounds no longer holds the transfer up


@dataclass
class ReceiverView:
    """What one receiver last told us."""

    held: set[int] = field(default_factory=set)
    have_offer: bool = False
    complete: bool = False
    last_ack: float = float("-inf")
    last_round: int = 0


@dataclass(frozen=True, slots=True)
class Progress:
    pieces: int
    acked: int  # pieces every known receiver holds
    receivers: int  # receivers that acknowledged anything
    complete: int  # receivers holding the whole, verified message
    sent: int  # payloads handed out (pieces, offers, probes)
    rounds: int


class ClipSender:
    """Delivers one message (``offer`` + ``data``) to the receivers that acknowledge it.

    ``expect`` is how many receivers must hold the whole message before the transfer is
    done (at least one: a sender cannot know who listens until they answer). ``ack_wait``
    is the quiet time after a POLL; it grows with the measured ack delay (a repeater in
    between doubles it) and backs off while nobody answers.
    """

    def __init__(
        self,
        offer: Offer,
        data: bytes,
        *,
        ack_wait: float,
        expect: int = 1,
        burst: int = WINDOW,
        restored: dict[bytes, Ack] | None = None,
    ) -> None:
        if len(data) != offer.total:
            raise UsageError("a clip's data must match its offer's size")
        if expect < 1 or burst < 1 or not ack_wait > 0:
            raise UsageError("expect and burst must be >= 1 and ack_wait > 0")
        self.offer = offer
        self.data = data
        self.expect = expect
        self.burst = min(burst, WINDOW)
        self.base_wait = ack_wait
        self.receivers: dict[bytes, ReceiverView] = {}
        self._queue: list[bytes] = []
        self._awaiting_until: float | None = None
        self._acks_this_round: set[bytes] = set()
        self._poll_end: float | None = None
        self._late: float | None = None  # the latest ack seen after a poll (decaying)
        self._silent_rounds = 0
        self._first_round = True
        self._last_poll: bytes | None = None
        self.sent = 0
        self.rounds = 0
        self.probes = 0  # offers sent alone (the runtime introduces us before some)
        for ident, ack in (restored or {}).items():
            self._apply(ident, ack, float("-inf"))

    # ------------------------------------------------------------------ state
    @property
    def pieces(self) -> int:
        return self.offer.pieces

    @property
    def done(self) -> bool:
        """``expect`` receivers hold the whole message, and every other receiver that is
        still answering does too (one that went quiet for STALE_ROUNDS rounds, e.g. it
        left or its radio died, does not hold the transfer up forever)."""
        views = self.receivers.values()
        complete = sum(1 for v in views if v.complete)
        return complete >= self.expect and all(
            v.complete or self.rounds - v.last_round >= STALE_ROUNDS for v in views
        )

    def needed(self) -> list[int]:
        """Pieces some known receiver lacks (all of them while nobody has answered)."""
        views = [
            v
            for v in self.receivers.values()
            if not v.complete and self.rounds - v.last_round < STALE_ROUNDS
        ]
        if not self.receivers:
            return list(range(self.pieces))
        missing: set[int] = set()
        for v in views:
            missing.update(i for i in range(self.pieces) if i not in v.held)
        return sorted(missing)

    def progress(self) -> Progress:
        views = list(self.receivers.values())
        acked = min(self.pieces if v.complete else len(v.held) for v in views) if views else 0
        return Progress(
            pieces=self.pieces,
            acked=acked,
            receivers=len(views),
            complete=sum(1 for v in views if v.complete),
            sent=self.sent,
            rounds=self.rounds,
        )

    def acks(self) -> dict[bytes, Ack]:
        """Each receiver's state as an Ack (what the outbox persists)."""
        return {
            ident: Ack.of(
                self.offer.msg_id, frozenset(v.held), have_offer=v.have_offer, complete=v.complete
            )
            for ident, v in self.receivers.items()
        }

    def ack_wait(self) -> float:
        wait = self.base_wait
        if self._late is not None:
            # The base wait covers every slot of a direct link; only a slower path (a
            # repeater in between) needs more. Acks land anywhere in the slots, so the
            # latest one seen, not the mean, says how long the window must be.
            wait = max(wait, 1.25 * self._late)
        # Back off only while nobody has ever answered (nobody may be listening), and only
        # after PATIENCE silent probes: on a lossy link a receiver that is there often takes
        # a few probes to be heard (its introduction and ack, and ours, must all get
        # through). Once a receiver is known, a silent round is a lost poll or ack: waiting
        # longer would not bring it back, so the next round starts at the usual pace (the
        # measured ack delay above already covers slow paths such as a repeater).
        if self.receivers:
            return wait
        silent = max(0, self._silent_rounds - PATIENCE)
        return wait * min(MAX_BACKOFF, 2.0**silent)

    # ------------------------------------------------------------------ sending
    def next_payload(self, now: float) -> bytes | None:
        """The next payload to send now, or None (see :meth:`wakeup`)."""
        if not self._queue:
            if self.done or (self._awaiting_until is not None and now < self._awaiting_until):
                return None
            self._start_round()
        if not self._queue:
            return None
        self.sent += 1
        return self._queue.pop(0)

    def transmitted(self, now: float) -> None:
        """The last payload handed out has left the air; after a POLL the ack window opens."""
        if not self._queue and self._awaiting_until is None and not self.done:
            self._poll_end = now
            self._awaiting_until = now + self.ack_wait()

    def wakeup(self, now: float) -> float | None:
        """When :meth:`next_payload` may next return something (None: done)."""
        if self.done:
            return None
        if self._queue:
            return now
        if self._awaiting_until is None:
            return now
        return max(now, self._awaiting_until)

    @property
    def introduce_now(self) -> bool:
        """Whether the probe about to go out should follow a fresh introduction: every one
        until somebody answers (unknown to them, we cannot be read at all), then every other
        one while the receivers we know are silent (a restarted peer forgot us)."""
        return self.probes <= 1 or not self.receivers or self._silent_rounds % 2 == 0

    def _start_round(self) -> None:
        if self._awaiting_until is not None and not self._acks_this_round:
            self._silent_rounds += 1
        elif self._acks_this_round:
            self._silent_rounds = 0
        silent = self._awaiting_until is not None and not self._acks_this_round
        probe = self._first_round or silent
        self._first_round = False
        self._awaiting_until = None
        self._acks_this_round = set()
        self.rounds += 1
        offer = dataclasses.replace(self.offer, poll=False).pack()
        if silent and self._silent_rounds == 1 and self._last_poll is not None:
            self._queue = [self._last_poll]  # the burst's tail (and its poll) was lost?
            return
        if probe:
            self._queue = [self.offer.pack()]  # nobody answered: ask, do not resend blindly
            self.probes += 1
            return
        needed = self.needed()
        if needed:
            low = needed[0]
            needed = [i for i in needed if i < low + WINDOW][: self.burst]
        lacks_offer = any(not v.have_offer for v in self.receivers.values() if not v.complete)
        if not needed:
            self._queue = [self.offer.pack()]  # ask who is still incomplete
            self.probes += 1
            return
        queue = [offer] if lacks_offer else []
        for n, i in enumerate(needed):
            start = i * self.offer.piece_size
            chunk = self.data[start : start + self.offer.piece_len(i)]
            queue.append(Piece(self.offer.msg_id, i, chunk, poll=n == len(needed) - 1).pack())
        self._queue = queue
        self._last_poll = queue[-1]

    # ------------------------------------------------------------------ hearing
    def on_ack(self, receiver: bytes, ack: Ack, now: float) -> bool:
        """Take one receiver's ack (for our message or not); True if it was ours."""
        if ack.msg_id != self.offer.msg_id:
            return False
        self._apply(receiver, ack, now)
        if self._poll_end is not None and receiver not in self._acks_this_round:
            delay = now - self._poll_end
            if delay >= 0:
                late = self._late
                self._late = delay if late is None else max(delay, LATE_DECAY * late)
        self._acks_this_round.add(receiver)
        views = self.receivers
        if self._awaiting_until is not None and (
            self.done or len(self._acks_this_round) >= max(self.expect, len(views))
        ):
            self._awaiting_until = now  # everyone we know answered: no need to wait
        return True

    def _apply(self, receiver: bytes, ack: Ack, now: float) -> None:
        view = self.receivers.setdefault(receiver, ReceiverView())
        view.held = ack.held(self.pieces)
        view.have_offer = ack.have_offer
        view.complete = ack.complete
        if ack.complete:
            view.held = set(range(self.pieces))
        view.last_ack = now
        view.last_round = self.rounds
