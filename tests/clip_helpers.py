"""Shared set-up for the voice-message tests: a room of members on simulated links."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from relay.core.identity import Identity
from relay.core.room import Room
from relay.links.base import Link
from relay.runtime.clip import ClipNode
from relay.runtime.room import RoomNode
from relay.store.clips import ClipStore, InboxClip
from relay.store.counters import CounterStore

CLOCK_START = 1_750_000_000.0


def speech_frames(seconds: float, bytes_per_frame: int = 4, frame_s: float = 0.04) -> list[bytes]:
    """Deterministic stand-in codec frames (the transfer does not care what they say)."""
    n = round(seconds / frame_s)
    return [bytes((i * 7 + j * 13) & 0xFF for j in range(bytes_per_frame)) for i in range(n)]


@dataclass
class Peer:
    ident: Identity
    room: Room
    node: RoomNode
    clips: ClipNode
    store: ClipStore
    counters: CounterStore
    got: list[InboxClip] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


def make_peer(
    room_id: bytes,
    key: bytes,
    mod: Identity,
    ident: Identity,
    link: Link,
    state: Path,
    *,
    seed: int = 0,
    **kw: object,
) -> Peer:
    """One member (room, receiving node, clip node) with its own state directory."""
    state.mkdir(parents=True, exist_ok=True)
    counters = CounterStore(state / "counters.db")
    store = ClipStore(state / "clips.db")
    room = Room(room_id, key, 0, [mod.public], ident, counters, mtu=link.mtu)
    loop = asyncio.get_running_loop()
    peer: Peer
    clips = ClipNode(
        room,
        link,
        store,
        clock=lambda: CLOCK_START + loop.time(),
        seed=seed,
        on_complete=lambda c: peer.got.append(c),
        **kw,  # type: ignore[arg-type]
    )
    node = RoomNode(room, link, lambda: CLOCK_START + loop.time(), on_event=clips.on_event)
    peer = Peer(ident, room, node, clips, store, counters)
    peer.task = asyncio.create_task(node.run())
    clips.start()
    return peer


def new_room(n: int) -> tuple[bytes, bytes, list[Identity]]:
    return os.urandom(8), os.urandom(32), [Identity.generate() for _ in range(n)]


async def close_peers(peers: Sequence[Peer]) -> None:
    for p in peers:
        await p.clips.close()
        await p.node.link.close()
    await asyncio.gather(*(p.task for p in peers if p.task), return_exceptions=True)
    for p in peers:
        p.store.close()
        p.counters.close()
