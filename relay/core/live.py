"""Live checks: words injected in the floor holder's name are flagged within about a second.

Every room member holds the room key, so the AEAD says only "a member sent this". The
speaker's Ed25519 signature on the seal settles the over at its end; during the over a
signature every couple of seconds would cost more airtime than the voice it covers (64 B a
signature against 6 B a packet). Instead the speaker uses delayed key disclosure (TESLA,
Perrig et al. 2002; Galileo's OSNMA authenticates its navigation messages the same way):

* Before its over the speaker draws a one-way chain ``L_n .. L_0`` (8-byte links, each the
  truncated SHA-256 of the next, bound to its identity, session and index) and puts the
  *anchor* ``L_0`` in its signed hand raise; the moderator repeats it in the grant and
  beacons, so every listener learns it under a signature.
* Voice packets are grouped ``per_interval`` counters at a time, counted from the grant's
  first counter. Each packet of interval ``i`` carries a 15-bit HMAC under ``L_(i+1)``,
  which nobody else knows yet.
* The first voice packet of interval ``i`` reveals ``L_i``: the key of the interval before.
  A listener checks a revealed link by hashing it down to one it trusts, then checks every
  packet it kept for that interval: a wrong MAC is a packet the speaker did not send.

A key holder who learns ``L_(i+1)`` can make valid MACs for interval ``i`` from then on, so
a listener counts a packet *verified* only if it had seen no packet of a later interval
(hence no revealed key) when it arrived. The speaker's packets of one interval are sent
before any packet that reveals their key, and counters only grow, so the speaker's own
packets pass whenever they arrive in order. What this does not give is said in THREATS.md
("Live speech").

Cost on the air: a 2-byte trailer (flag bit + MAC) on every voice packet, 8 bytes on one
packet an interval, and the 9-byte anchor in the hand raise, the grant and beacons.

Pure and sans-I/O: bytes and counters in, verdicts out.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from relay.errors import PacketError, UsageError

LINK_LEN = 8  # a chain link: the key of one interval, revealed one interval later
TRAILER_LEN = 2  # flag bit (a link precedes the trailer) + 15-bit MAC
MAC_MASK = 0x7FFF
KEY_FLAG = 0x8000
ANCHOR_LEN = 1 + LINK_LEN  # packets per interval, L_0
NO_ANCHOR = bytes(ANCHOR_LEN)  # "this over has no live checks" (a beacon with no floor)
CHAIN_LEN = 1024  # intervals one chain covers (4096 packets at 4 an interval: 11 minutes)
MAX_PER_INTERVAL = 16
# Packets a listener keeps waiting for their interval's key: what a key holder injecting
# inside the grant's counter range can make it hold.
MAX_PENDING = 1024

T = TypeVar("T")


def _step(speaker: bytes, session: bytes, index: int, link: bytes) -> bytes:
    """Link ``index`` from link ``index + 1``. Identity, session and index in the input: a
    table built for one chain (or one position of every chain) is no use for another."""
    h = hashlib.sha256(b"relay/v1 live chain")
    h.update(speaker + session + index.to_bytes(2, "big") + link)
    return h.digest()[:LINK_LEN]


def mac(link: bytes, fields: bytes) -> int:
    """The 15-bit MAC of one voice packet's ``fields`` under an interval's key."""
    digest = hmac.new(link, b"relay/v1 live mac" + fields, hashlib.sha256).digest()
    return int.from_bytes(digest[:2], "big") & MAC_MASK


def voice_fields(
    key_id: str,
    speaker: bytes,
    counter: int,
    mode_index: int,
    position: int,
    frames: Sequence[bytes],
    redundant_index: int | None = None,
    redundant: Sequence[bytes] = (),
) -> bytes:
    """What a voice packet's MAC covers: counter, codec mode, the low 8 bits of its position
    (a listener unwraps positions and may get them wrong; counters are exact), its frames and
    any FEC copies. Every field has a fixed or stated length: no two packets read alike."""
    red = 0xFF if redundant_index is None else redundant_index
    out = bytearray(bytes.fromhex(key_id) + speaker + counter.to_bytes(3, "big"))
    out += bytes((mode_index, position % 256, len(frames), red, len(redundant)))
    for frame in (*frames, *redundant):
        out += len(frame).to_bytes(1, "big") + frame
    return bytes(out)


def pack_trailer(mac_value: int, link: bytes | None) -> bytes:
    """The bytes a voice plaintext ends with: the revealed link, if any, then flag + MAC."""
    if not 0 <= mac_value <= MAC_MASK:
        raise UsageError("a live MAC is 15 bits")
    if link is not None and len(link) != LINK_LEN:
        raise UsageError(f"a chain link is {LINK_LEN} bytes")
    flag = KEY_FLAG if link is not None else 0
    return (link or b"") + (flag | mac_value).to_bytes(2, "big")


NO_TRAILER = pack_trailer(0, None)  # voice outside live checks (no chain, another key)


def split_trailer(plaintext: bytes) -> tuple[bytes, int, bytes | None]:
    """(voice body, MAC, revealed link or None) of a voice plaintext."""
    if len(plaintext) < TRAILER_LEN:
        raise PacketError("malformed", "voice packet without its live trailer")
    value = int.from_bytes(plaintext[-TRAILER_LEN:], "big")
    end = len(plaintext) - TRAILER_LEN
    if not value & KEY_FLAG:
        return bytes(plaintext[:end]), value & MAC_MASK, None
    if end < LINK_LEN:
        raise PacketError("malformed", "voice packet too short for the link it announces")
    return (
        bytes(plaintext[: end - LINK_LEN]),
        value & MAC_MASK,
        bytes(plaintext[end - LINK_LEN : end]),
    )


@dataclass(frozen=True, slots=True)
class Anchor:
    """What the signed hand raise (and the grant, and beacons) say of a speaker's chain."""

    per_interval: int
    link: bytes  # L_0

    def pack(self) -> bytes:
        if not 1 <= self.per_interval <= MAX_PER_INTERVAL:
            raise UsageError(f"an interval is 1..{MAX_PER_INTERVAL} packets")
        if len(self.link) != LINK_LEN:
            raise UsageError(f"a chain link is {LINK_LEN} bytes")
        return bytes((self.per_interval,)) + self.link

    @classmethod
    def parse(cls, data: bytes) -> Anchor | None:
        """None for :data:`NO_ANCHOR`; PacketError for anything else malformed."""
        if len(data) != ANCHOR_LEN:
            raise PacketError("malformed", f"live anchor of {len(data)} bytes")
        if bytes(data) == NO_ANCHOR:
            return None
        if not 1 <= data[0] <= MAX_PER_INTERVAL:
            raise PacketError("malformed", f"live interval of {data[0]} packets")
        return cls(data[0], bytes(data[1:]))


def per_interval_for(packet_seconds: float, target: float = 0.64) -> int:
    """Packets an interval spans so that it lasts about ``target`` seconds of speech: a key
    is revealed about one interval after the words it covers."""
    return max(1, min(MAX_PER_INTERVAL, round(target / max(packet_seconds, 1e-3))))


class Chain:
    """The speaker's side: one chain per hand raise, used for the over it is granted."""

    def __init__(
        self,
        speaker: bytes,
        session: bytes,
        per_interval: int,
        *,
        length: int = CHAIN_LEN,
        seed: bytes | None = None,
    ) -> None:
        self.speaker, self.session = speaker, session
        self.per_interval = per_interval
        link = hashlib.sha256(seed if seed is not None else os.urandom(32)).digest()[:LINK_LEN]
        links = [link]
        for index in range(length - 1, -1, -1):
            links.append(_step(speaker, session, index, links[-1]))
        self._links = links[::-1]  # _links[i] is L_i, i = 0 .. length
        self.anchor = Anchor(per_interval, self._links[0])
        self._revealed = 0  # highest link index put in a packet
        self._used = -1  # highest interval a packet was sent in

    @property
    def next_interval(self) -> int:
        """The first interval no packet has used yet (where a rebase starts counting)."""
        return self._used + 1

    def trailer(self, base: Base, counter: int, fields: bytes) -> bytes:
        """The live trailer of the voice packet sent under ``counter``: its MAC, and the
        link of the interval before if no earlier packet revealed it."""
        interval = base.interval_of(counter, self.per_interval)
        if interval is None or interval + 1 >= len(self._links):
            return NO_TRAILER  # past the chain: the seal still covers these
        self._used = max(self._used, interval)
        link = None
        if interval > self._revealed:
            link, self._revealed = self._links[interval], interval
        return pack_trailer(mac(self._links[interval + 1], fields), link)


@dataclass(frozen=True, slots=True)
class Base:
    """Where intervals start counting under one room key: the grant's first counter is
    interval 0; after a key change mid-over (a removal, the hourly ratchet), where the
    speaker's signed rebase says (counters restart under every key). A rebase names the
    anchor of its over, so a recording of one from another over cannot move this one's."""

    counter: int
    interval: int = 0
    anchor: bytes = bytes(LINK_LEN)  # L_0 of the over's chain (in a rebase)

    def interval_of(self, counter: int, per_interval: int) -> int | None:
        if counter < self.counter:
            return None
        return self.interval + (counter - self.counter) // per_interval

    def first_of(self, interval: int, per_interval: int) -> int:
        """The first counter of ``interval``."""
        return self.counter + (interval - self.interval) * per_interval

    def pack(self) -> bytes:
        if not 0 <= self.counter < 1 << 24 or not 0 <= self.interval < 1 << 16:
            raise UsageError("a live rebase is a 24-bit counter and a 16-bit interval")
        if len(self.anchor) != LINK_LEN:
            raise UsageError(f"a chain link is {LINK_LEN} bytes")
        return self.counter.to_bytes(3, "big") + self.interval.to_bytes(2, "big") + self.anchor

    @classmethod
    def parse(cls, body: bytes) -> Base:
        if len(body) != BASE_LEN:
            raise PacketError("malformed", f"live rebase of {len(body)} bytes")
        return cls(
            int.from_bytes(body[:3], "big"), int.from_bytes(body[3:5], "big"), bytes(body[5:])
        )


BASE_LEN = 3 + 2 + LINK_LEN


@dataclass
class Verdicts(Generic[T]):
    """What one packet told a :class:`Checker`: items whose MAC the speaker's key confirmed
    (and that arrived before any key for them was out), items it contradicted, and how many
    matched but came too late to prove anything."""

    verified: list[T] = field(default_factory=list)
    forged: list[T] = field(default_factory=list)
    late: int = 0


@dataclass
class _Pending(Generic[T]):
    item: T
    fields: bytes
    mac: int
    interval: int
    # Counters of later intervals heard before this packet: if one of them turns out to be
    # the speaker's, this packet came after the speaker revealed its key (it proves nothing).
    after: tuple[int, ...]


class Checker(Generic[T]):
    """A listener's side, for one speaker's over (one anchor, one grant, one key)."""

    def __init__(
        self,
        speaker: bytes,
        session: bytes,
        anchor: Anchor,
        base: Base,
        known: tuple[int, bytes] | None = None,
    ) -> None:
        """``known``: the highest link a checker of the same over, under the key before,
        had come to trust (a rebase carries the chain on)."""
        self.speaker, self.session = speaker, session
        self.anchor = anchor
        self.per_interval = anchor.per_interval
        self.base = base
        self._known = known or (0, anchor.link)  # the highest link we trust: (index, link)
        self._pending: dict[int, _Pending[T]] = {}  # waiting for their interval's key
        self._deferred: dict[int, _Pending[T]] = {}  # MAC right, waiting on their `after`
        self._arrived: list[int] = []  # counters heard, sorted (the latest MAX_PENDING)
        self._genuine: set[int] = set()  # counters whose MAC the speaker's key confirmed
        self._fake: set[int] = set()  # counters whose MAC or link it contradicted
        # Packets kept under the key before a rebase (other counters): checked by MAC when
        # their key comes; verified only if nothing of the next interval came before them.
        self._carried: list[_Pending[T]] = []

    def adopt(self, old: Checker[T]) -> None:
        """Take over what the checker of the same over under the key before still kept."""
        self._carried += [*old._carried, *old._pending.values(), *old._deferred.values()]
        del self._carried[: max(0, len(self._carried) - MAX_PENDING)]

    @property
    def known(self) -> tuple[int, bytes]:
        return self._known

    def interval(self, counter: int) -> int | None:
        interval = self.base.interval_of(counter, self.per_interval)
        if interval is None or interval + 1 > CHAIN_LEN:
            return None
        return interval

    def _walk(self, top: int, link: bytes, lowest: int) -> dict[int, bytes]:
        """Links ``lowest .. top`` by hashing down from L_top = ``link``."""
        links = {top: link}
        for i in range(top - 1, lowest - 1, -1):
            link = _step(self.speaker, self.session, i, link)
            links[i] = link
        return links

    def _derive(self, index: int) -> bytes:
        """Link ``index`` (at most the highest known) by hashing down from the known one."""
        return self._walk(*self._known, index)[index]

    def _learn(self, index: int, link: bytes) -> bool:
        """Trust ``link`` as L_index if it hashes down to the link we trust (True)."""
        known, trusted = self._known
        if index <= known:
            return link == self._derive(index)
        if self._walk(index, link, known)[known] != trusted:
            return False
        self._known = (index, link)
        return True

    def receive(
        self, counter: int, fields: bytes, mac_value: int, link: bytes | None, item: T
    ) -> Verdicts[T]:
        """One voice packet of the over, in arrival order."""
        out: Verdicts[T] = Verdicts()
        interval = self.interval(counter)
        if interval is None:
            return out  # outside the chain: only the seal can speak for it
        # The packets of the next interval heard before this one: the speaker revealed this
        # packet's key in the first of them. (Later intervals do not count: a key holder
        # could take a counter far ahead to make every real packet look late.)
        start = self.base.first_of(interval + 1, self.per_interval)
        lo = bisect.bisect_left(self._arrived, start)
        hi = bisect.bisect_left(self._arrived, start + self.per_interval)
        after = tuple(self._arrived[lo:hi])
        bisect.insort(self._arrived, counter)
        if len(self._arrived) > MAX_PENDING:
            del self._arrived[0]
        if link is not None:
            # The speaker reveals L_i in interval i only, and i >= 1; a false link is a
            # packet the speaker did not send (its MAC is not even worth checking).
            if interval == 0 or not self._learn(interval, link):
                self._mark(self._fake, counter)
                out.forged.append(item)
                return out
            self._settle(out)
        known, _ = self._known
        pending = _Pending(item, fields, mac_value, interval, after)
        if interval + 1 <= known:
            # Its key was out before it came: a wrong MAC is still a forgery, a right one
            # proves nothing.
            if mac(self._derive(interval + 1), fields) != mac_value:
                self._mark(self._fake, counter)
                out.forged.append(item)
            else:
                out.late += 1
        else:
            self._pending[counter] = pending
            while len(self._pending) > MAX_PENDING:
                del self._pending[min(self._pending)]
        return out

    def _settle(self, out: Verdicts[T]) -> None:
        """Check every kept packet whose interval's key is now known (one walk down the
        chain, at most CHAIN_LEN hashes, however many packets were kept)."""
        known, _ = self._known
        ready = [c for c, p in self._pending.items() if p.interval + 1 <= known]
        needed = [self._pending[c].interval + 1 for c in ready]
        needed += [p.interval + 1 for p in self._carried if p.interval + 1 <= known]
        links = self._walk(*self._known, min(needed, default=known))
        for counter in sorted(ready):
            pending = self._pending.pop(counter)
            if mac(links[pending.interval + 1], pending.fields) != pending.mac:
                self._mark(self._fake, counter)
                out.forged.append(pending.item)
            else:
                self._deferred[counter] = pending
        carried, self._carried = self._carried, []
        for pending in carried:
            if pending.interval + 1 > known:
                self._carried.append(pending)
            elif mac(links[pending.interval + 1], pending.fields) != pending.mac:
                out.forged.append(pending.item)
            elif pending.after:
                out.late += 1  # its evidence is under the old key's counters: no verdict
            else:
                out.verified.append(pending.item)
        self._resolve(out)

    def _resolve(self, out: Verdicts[T]) -> None:
        """Packets whose MAC was right: verified once nothing the speaker sent after
        revealing their key is known to have come before them; late if something was."""
        changed = True
        while changed:
            changed = False
            for counter in sorted(self._deferred):
                after = self._deferred[counter].after
                if any(c in self._genuine for c in after):
                    del self._deferred[counter]
                    out.late += 1
                elif all(c in self._fake for c in after):
                    out.verified.append(self._deferred.pop(counter).item)
                    self._mark(self._genuine, counter)
                    changed = True
        while len(self._deferred) > MAX_PENDING:
            del self._deferred[min(self._deferred)]

    @staticmethod
    def _mark(table: set[int], counter: int) -> None:
        table.add(counter)
        if len(table) > MAX_PENDING:
            table.discard(min(table))

    def pending_items(self) -> list[tuple[int, T]]:
        """(counter, item) of the packets not verified yet (nor found forged or late)."""
        waiting = [*self._pending.items(), *self._deferred.items()]
        return [(c, p.item) for c, p in waiting]

    def carried_items(self) -> list[T]:
        """Packets kept from under the key before a rebase, not verified yet."""
        return [p.item for p in self._carried]

    def drop(self, counter: int) -> None:
        self._pending.pop(counter, None)
        self._deferred.pop(counter, None)
