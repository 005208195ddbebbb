"""The ether protocol: how radio nodes talk to a shared simulated channel over TCP (sans-I/O).

``relay ether`` hosts one simulated LoRa channel; every TCP connection to it is one radio
node. This module only turns messages into bytes and bytes into messages; it does no I/O, so
the server, the client and the tests drive it the same way.

Every frame on the stream is::

    u16 big-endian length L   1 <= L <= MAX_FRAME, counts the type byte and the payload
    u8  type                  one of FrameType
    L-1 bytes payload

Payloads:

=========  ==========  ======================================================================
type       direction   payload
=========  ==========  ======================================================================
HELLO      node→ether  ``b"RLYE"`` magic, u8 protocol version, u8 transmit queue size
                       (0: the ether's default), node name (UTF-8, 0..64 bytes; empty: the
                       ether picks one). Must be the first frame, and only once.
WELCOME    ether→node  one JSON object (UTF-8): protocol version, channel and node name, the
                       radio profile (preset name, LoRa sf/bw/cr/preamble/header/crc/ldro, MTU,
                       firmware overhead: enough to compute airtime locally), duty cycle and
                       policy, listen-before-talk, loss, burst, seed.
DATA       both        one datagram, 0..MAX_DATAGRAM bytes.
ACK        ether→node  empty: the DATA was queued on the channel (``Link.send`` returned).
NACK       ether→node  u8 kind (NackKind) + UTF-8 message: the DATA was refused.
DRAIN      node→ether  empty: answer when the node's transmit queue is empty.
DRAINED    ether→node  empty: the answer to DRAIN.
ERROR      ether→node  UTF-8 message; the ether closes the connection after sending it.
=========  ==========  ======================================================================

ACK/NACK/DRAINED answer DATA/DRAIN in order, one each. A node waits for the answer before
sending the next DATA: that is the link's back-pressure (the ether answers once the datagram
fits in the node's transmit queue). A node going away is just the end of the stream.

Anything that does not follow this raises :class:`relay.errors.FramingError` and nothing else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from relay.errors import FramingError, UsageError
from relay.radio.lora import MAX_PAYLOAD, LoRaParams
from relay.radio.profiles import RadioProfile

PROTOCOL_VERSION = 1
MAGIC = b"RLYE"
MAX_FRAME = 1024  # type byte + payload; a datagram is at most 255 bytes, a WELCOME well under
MAX_DATAGRAM = MAX_PAYLOAD
MAX_NAME = 64  # bytes of UTF-8 in a node or channel name
MAX_QUEUE = 255
_HEADER = 2


class FrameType(IntEnum):
    HELLO = 1
    WELCOME = 2
    DATA = 3
    ACK = 4
    NACK = 5
    DRAIN = 6
    DRAINED = 7
    ERROR = 8


class NackKind(IntEnum):
    """Why the ether refused a datagram; the node raises the matching exception."""

    USAGE = 1  # UsageError (e.g. larger than the MTU)
    DUTY_CYCLE = 2  # DutyCycleExceeded
    LINK = 3  # LinkError (e.g. the node's link is closed)


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """A node introduces itself."""

    version: int = PROTOCOL_VERSION
    name: str = ""  # empty: the ether names the node
    queue_size: int = 0  # 0: the ether's default

    def __post_init__(self) -> None:
        if not 0 <= self.version <= 255:
            raise UsageError(f"protocol version must be 0..255, got {self.version!r}")
        if not 0 <= self.queue_size <= MAX_QUEUE:
            raise UsageError(f"queue size must be 1..{MAX_QUEUE}, got {self.queue_size!r}")
        _check_name("node name", self.name)


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What the ether tells a node about the channel it joined."""

    profile: RadioProfile
    node: str
    channel: str = "ether"
    version: int = PROTOCOL_VERSION
    duty_cycle: float = 1.0
    duty_policy: str = "queue"
    duty_window: float = 3600.0
    loss: float = 0.0  # mean loss per receiver
    burst: float | None = None  # mean loss-run length (Gilbert-Elliott), None: independent
    seed: int | None = 0
    queue_size: int = 16
    lbt: bool = False  # listen before talk

    @property
    def mtu(self) -> int:
        return self.profile.mtu

    def airtime(self, nbytes: int) -> float:
        return self.profile.airtime(nbytes)


@dataclass(frozen=True, slots=True)
class Welcome:
    info: ChannelInfo


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes

    def __post_init__(self) -> None:
        if len(self.data) > MAX_DATAGRAM:
            raise UsageError(
                f"datagram of {len(self.data)} bytes exceeds the LoRa maximum of {MAX_DATAGRAM}"
            )


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class Nack:
    kind: NackKind
    message: str = ""


@dataclass(frozen=True, slots=True)
class Drain:
    pass


@dataclass(frozen=True, slots=True)
class Drained:
    pass


@dataclass(frozen=True, slots=True)
class Error:
    message: str


Message = Hello | Welcome | Data | Ack | Nack | Drain | Drained | Error

NODE_TO_ETHER: frozenset[FrameType] = frozenset({FrameType.HELLO, FrameType.DATA, FrameType.DRAIN})
ETHER_TO_NODE: frozenset[FrameType] = frozenset(
    {
        FrameType.WELCOME,
        FrameType.DATA,
        FrameType.ACK,
        FrameType.NACK,
        FrameType.DRAINED,
        FrameType.ERROR,
    }
)


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str):
        raise UsageError(f"{what} must be text, got {name!r}")
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_NAME or any(ord(c) < 32 or c in "&?#/=" for c in name):
        raise UsageError(
            f"{what} must be at most {MAX_NAME} bytes, without control characters or &?#/=, "
            f"got {name!r}"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} must be valid text, got {name!r}") from None


# --- encoding ------------------------------------------------------------------------------


def _frame(kind: FrameType, payload: bytes = b"") -> bytes:
    size = 1 + len(payload)
    if size > MAX_FRAME:
        raise UsageError(f"frame of {size} bytes exceeds the maximum of {MAX_FRAME}")
    return size.to_bytes(_HEADER, "big") + bytes((kind,)) + payload


def _profile_dict(p: RadioProfile) -> dict[str, Any]:
    return {
        "name": p.name,
        "sf": p.lora.sf,
        "bw_hz": p.lora.bw_hz,
        "cr": p.lora.cr,
        "preamble": p.lora.preamble,
        "explicit_header": p.lora.explicit_header,
        "crc": p.lora.crc,
        "ldro": p.lora.ldro,
        "mtu": p.mtu,
        "link_overhead_bytes": p.link_overhead_bytes,
        "duty_cycle": p.duty_cycle,
        "description": p.description,
    }


def _info_dict(info: ChannelInfo) -> dict[str, Any]:
    return {
        "version": info.version,
        "channel": info.channel,
        "node": info.node,
        "profile": _profile_dict(info.profile),
        "duty_cycle": info.duty_cycle,
        "duty_policy": info.duty_policy,
        "duty_window": info.duty_window,
        "loss": info.loss,
        "burst": info.burst,
        "seed": info.seed,
        "queue_size": info.queue_size,
        "lbt": info.lbt,
    }


def encode(msg: Message) -> bytes:
    """One frame, ready for the stream."""
    if isinstance(msg, Hello):
        payload = MAGIC + bytes((msg.version, msg.queue_size)) + msg.name.encode("utf-8")
        return _frame(FrameType.HELLO, payload)
    if isinstance(msg, Welcome):
        text = json.dumps(_info_dict(msg.info), separators=(",", ":"), allow_nan=False)
        return _frame(FrameType.WELCOME, text.encode("utf-8"))
    if isinstance(msg, Data):
        return _frame(FrameType.DATA, bytes(msg.data))
    if isinstance(msg, Ack):
        return _frame(FrameType.ACK)
    if isinstance(msg, Nack):
        return _frame(FrameType.NACK, bytes((int(msg.kind),)) + _text(msg.message))
    if isinstance(msg, Drain):
        return _frame(FrameType.DRAIN)
    if isinstance(msg, Drained):
        return _frame(FrameType.DRAINED)
    if isinstance(msg, Error):
        return _frame(FrameType.ERROR, _text(msg.message))
    raise UsageError(f"not an ether protocol message: {msg!r}")


def _text(message: str, limit: int = MAX_FRAME - 2) -> bytes:
    """A human message, cut to fit a frame (on a character boundary)."""
    raw = message.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


# --- decoding ------------------------------------------------------------------------------


def _utf8(what: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FramingError(f"{what} is not valid UTF-8") from None


def _get(obj: dict[str, Any], key: str, kinds: tuple[type, ...], *, optional: bool = False):
    if key not in obj:
        raise FramingError(f"WELCOME lacks {key!r}")
    value = obj[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise FramingError(f"WELCOME {key!r} has the wrong type")
    if not isinstance(value, kinds):
        raise FramingError(f"WELCOME {key!r} has the wrong type")
    if isinstance(value, float) and not math.isfinite(value):
        raise FramingError(f"WELCOME {key!r} is not finite")
    return value


def _decode_welcome(payload: bytes) -> Welcome:
    text = _utf8("WELCOME", payload)
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise FramingError("WELCOME is not valid JSON") from None
    if not isinstance(obj, dict):
        raise FramingError("WELCOME is not a JSON object")
    prof = _get(obj, "profile", (dict,))
    num = (int, float)
    try:
        lora = LoRaParams(
            sf=_get(prof, "sf", (int,)),
            bw_hz=_get(prof, "bw_hz", num),
            cr=_get(prof, "cr", (int,)),
            preamble=_get(prof, "preamble", (int,)),
            explicit_header=_get(prof, "explicit_header", (bool,)),
            crc=_get(prof, "crc", (bool,)),
            ldro=_get(prof, "ldro", (bool,), optional=True),
        )
        profile = RadioProfile(
            name=_get(prof, "name", (str,)),
            lora=lora,
            mtu=_get(prof, "mtu", (int,)),
            link_overhead_bytes=_get(prof, "link_overhead_bytes", (int,)),
            duty_cycle=_get(prof, "duty_cycle", num),
            description=_get(prof, "description", (str,)) if "description" in prof else "",
        )
        duty_cycle = _get(obj, "duty_cycle", num)
        if not 0 < duty_cycle <= 1:
            raise FramingError(f"WELCOME duty_cycle {duty_cycle!r} is not in (0, 1]")
        loss = _get(obj, "loss", num)
        if not 0 <= loss <= 1:
            raise FramingError(f"WELCOME loss {loss!r} is not in [0, 1]")
        burst = _get(obj, "burst", num, optional=True)
        if burst is not None and not burst >= 1:
            raise FramingError(f"WELCOME burst {burst!r} is not >= 1")
        window = _get(obj, "duty_window", num)
        if not window > 0:
            raise FramingError(f"WELCOME duty_window {window!r} is not > 0")
        queue = _get(obj, "queue_size", (int,))
        if not 1 <= queue <= MAX_QUEUE:
            raise FramingError(f"WELCOME queue_size {queue!r} is not 1..{MAX_QUEUE}")
        version = _get(obj, "version", (int,))
        if not 0 <= version <= 255:
            raise FramingError(f"WELCOME version {version!r} is not 0..255")
        info = ChannelInfo(
            profile=profile,
            node=_get(obj, "node", (str,)),
            channel=_get(obj, "channel", (str,)),
            version=version,
            duty_cycle=float(duty_cycle),
            duty_policy=_get(obj, "duty_policy", (str,)),
            duty_window=float(window),
            loss=float(loss),
            burst=None if burst is None else float(burst),
            seed=_get(obj, "seed", (int,), optional=True),
            queue_size=queue,
            lbt=_get(obj, "lbt", (bool,)) if "lbt" in obj else False,
        )
    except UsageError as exc:  # a profile the radio layer rejects: still the peer's fault
        raise FramingError(f"WELCOME describes an impossible radio: {exc}") from None
    return Welcome(info)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def decode_frame(body: bytes, accept: frozenset[FrameType] | None = None) -> Message:
    """One frame's body (type byte + payload, without the length) as a message."""
    if not body:
        raise FramingError("empty frame")
    try:
        kind = FrameType(body[0])
    except ValueError:
        raise FramingError(f"unknown frame type {body[0]}") from None
    if accept is not None and kind not in accept:
        raise FramingError(f"unexpected {kind.name} frame")
    payload = body[1:]
    if kind is FrameType.HELLO:
        if len(payload) < len(MAGIC) + 2 or payload[: len(MAGIC)] != MAGIC:
            raise FramingError("HELLO without the ether protocol magic")
        version, queue = payload[len(MAGIC)], payload[len(MAGIC) + 1]
        name = _utf8("node name", payload[len(MAGIC) + 2 :])
        try:
            return Hello(version=version, name=name, queue_size=queue)
        except UsageError as exc:
            raise FramingError(f"bad HELLO: {exc}") from None
    if kind is FrameType.WELCOME:
        return _decode_welcome(payload)
    if kind is FrameType.DATA:
        if len(payload) > MAX_DATAGRAM:
            raise FramingError(f"DATA of {len(payload)} bytes exceeds {MAX_DATAGRAM}")
        return Data(bytes(payload))
    if kind is FrameType.NACK:
        if not payload:
            raise FramingError("NACK without a reason")
        try:
            reason = NackKind(payload[0])
        except ValueError:
            raise FramingError(f"unknown NACK kind {payload[0]}") from None
        return Nack(reason, payload[1:].decode("utf-8", "replace"))
    if kind is FrameType.ERROR:
        return Error(payload.decode("utf-8", "replace"))
    if payload:
        raise FramingError(f"{kind.name} frame carries {len(payload)} unexpected bytes")
    return {FrameType.ACK: Ack, FrameType.DRAIN: Drain, FrameType.DRAINED: Drained}[kind]()


@dataclass
class Decoder:
    """Feed it stream bytes in any chunks; it hands back whole messages.

    ``accept`` limits the frame types this end may receive (:data:`NODE_TO_ETHER` on the
    ether, :data:`ETHER_TO_NODE` on a node). After a :class:`FramingError` the stream is
    unrecoverable: every later call raises again.
    """

    accept: frozenset[FrameType] | None = None
    _buf: bytearray = field(default_factory=bytearray, repr=False)
    _broken: str | None = field(default=None, repr=False)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        if self._broken is not None:
            raise FramingError(self._broken)
        self._buf += data
        out: list[Message] = []
        try:
            while len(self._buf) >= _HEADER:
                size = int.from_bytes(self._buf[:_HEADER], "big")
                if not 1 <= size <= MAX_FRAME:
                    raise FramingError(f"frame length {size} is outside 1..{MAX_FRAME}")
                if len(self._buf) < _HEADER + size:
                    break
                body = bytes(self._buf[_HEADER : _HEADER + size])
                del self._buf[: _HEADER + size]
                out.append(decode_frame(body, self.accept))
        except FramingError as exc:
            self._broken = str(exc)
            self._buf.clear()
            raise
        return out

    def eof(self) -> None:
        """The stream ended: raises FramingError if it stopped in the middle of a frame."""
        if self._broken is None and self._buf:
            self._broken = f"stream ended inside a frame ({len(self._buf)} bytes of it)"
            self._buf.clear()
            raise FramingError(self._broken)
