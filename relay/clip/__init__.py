"""Voice messages: store-and-forward speech for links too slow for live voice.

Sans-I/O, like :mod:`relay.core`: :mod:`relay.clip.wire` (payload formats),
:mod:`relay.clip.message` (encoding and signing a message), :mod:`relay.clip.sender` and
:mod:`relay.clip.receiver` (the transfer state machines). Storage is
:mod:`relay.store.clips`; the asyncio driver is :mod:`relay.runtime.clip`.
"""

from relay.clip.message import build_offer, choose_mode, max_piece_size
from relay.clip.receiver import (
    AckHeard,
    ClipReceiver,
    MessageComplete,
    MessageReset,
    OfferReceived,
    PieceReceived,
    Refused,
)
from relay.clip.sender import ClipSender, Progress
from relay.clip.wire import Ack, Offer, Piece, parse

__all__ = [
    "Ack",
    "AckHeard",
    "ClipReceiver",
    "ClipSender",
    "MessageComplete",
    "MessageReset",
    "Offer",
    "OfferReceived",
    "Piece",
    "PieceReceived",
    "Progress",
    "Refused",
    "build_offer",
    "choose_mode",
    "max_piece_size",
    "parse",
]
