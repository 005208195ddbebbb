"""The floor survives losing every copy of its grant (issue 12, item 6).

A moderator, a speaker and a listener on one simulated SHORT_FAST channel, in virtual time.
The moment the moderator grants the floor, a fade blacks the channel out for everyone: a
short one (as long as the grant and its two copies back to back) and a long one (longer than
the spread copies too). The speaker still gets the floor within that first grant (no second
grant is needed) and the listener hears a verified over.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest

from relay.core.identity import Identity
from relay.core.room import Room
from relay.demo.voice import bundled_sample
from relay.links.sim.channel import Ether, LossModel
from relay.radio.profiles import preset
from relay.runtime.clock import run
from relay.runtime.room import RoomNode
from relay.store.counters import CounterStore
from relay.voice.audio import read_audio
from relay.voice.codec import Encoder
from relay.voice.modes import mode_by_name

MODE = mode_by_name("1600")
GRANT = 30


class Blackout(LossModel):
    """Every receiver loses everything that ends inside [start, start + length)."""

    def __init__(self, length: float) -> None:
        self.length = length
        self.start: float | None = None
        self.clock = None

    def lost(self, rng: random.Random) -> bool:
        if self.start is None or self.clock is None:
            return False
        return self.start <= self.clock() < self.start + self.length

    @property
    def mean_loss(self) -> float:
        return 0.0

    def fresh(self) -> LossModel:
        return self  # one fade for the whole channel


async def scenario(state: Path, blackout: Blackout) -> dict:
    loop = asyncio.get_running_loop()
    epoch0 = time.time() - loop.time()

    def clock() -> float:
        return epoch0 + loop.time()

    blackout.clock = loop.time
    ether = Ether(preset("SHORT_FAST"), loss=blackout, seed=3, lbt=True)
    counters = CounterStore(state / "counters.db")
    room_id, key = os.urandom(8), os.urandom(32)
    mod_id, sp_id, li_id = (Identity.generate() for _ in range(3))

    def node(ident: Identity, roster=()) -> RoomNode:
        room = Room(room_id, key, 0, [mod_id.public], ident, counters, roster=roster)
        return RoomNode(room, ether.attach(), clock, seed=5)

    mod = node(mod_id, roster=[sp_id.public, li_id.public])
    speaker, listener = node(sp_id), node(li_id)
    grants: list[float] = []
    real_grant = mod.room.grant

    def grant(member: bytes, seconds: int, now: float) -> bytes:
        if not grants:
            blackout.start = loop.time()  # the fade begins as the grant goes on air
        grants.append(loop.time())
        return real_grant(member, seconds, now)

    mod.room.grant = grant  # type: ignore[method-assign]
    nodes = [mod, speaker, listener]
    tasks = [asyncio.create_task(n.run()) for n in nodes]
    stop = asyncio.Event()
    moderating = asyncio.create_task(mod.moderate(auto_grant=GRANT, stop=stop))
    frames = Encoder(MODE).encode(read_audio(bundled_sample("forig.wav")))[:150]  # 3 s
    got = await speaker.wait_for_floor(timeout=120.0)
    floor_at = loop.time()
    if got:
        await speaker.speak(MODE, frames, 4)
        await speaker.link.drain()
        await asyncio.sleep(3.0)
    stop.set()
    await moderating
    for n in nodes:
        await n.link.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    counters.close()
    return {
        "got": got,
        "grants": grants,
        "floor_after": floor_at - grants[0] if grants else None,
        "overs": [o.verdict for o in listener.log.overs],
        "lost": ether.stats.lost,
    }


@pytest.mark.parametrize(
    "length, within",
    [
        (0.6, 3.0),  # the grant and two copies back to back: the spread copies survive it
        (3.0, GRANT),  # longer than the spread: the in-grant beacon or the answered hand
    ],
)
def test_the_floor_survives_every_copy_of_its_grant_lost(
    tmp_path: Path, length: float, within: float
) -> None:
    out = run(scenario(tmp_path, Blackout(length)))
    assert out["lost"] > 0, out  # the fade did take packets
    assert out["got"], out
    assert len(out["grants"]) == 1, out  # the first grant was enough: the floor never died
    assert out["floor_after"] < within, out
    assert out["overs"] == ["verified"], out


def test_a_repeated_hand_from_the_floor_holder_asks_for_the_grant_again() -> None:
    """Sans-I/O: the holder's hand raised again is not queued (it would be granted twice);
    the moderator's room says the grant was not heard (its node answers with a beacon)."""
    from relay.core.room import GrantAsked, HandRaised
    from relay.store.counters import MemoryCounters

    room_id, key, now = os.urandom(8), os.urandom(32), 1_750_000_000.0
    mod_id, sp_id, li_id = (Identity.generate() for _ in range(3))

    def room(ident: Identity) -> Room:
        return Room(room_id, key, 0, [mod_id.public], ident, MemoryCounters())

    mod, sp, li = room(mod_id), room(sp_id), room(li_id)
    for r in (mod, li):
        assert any(isinstance(e, HandRaised) for e in r.receive(sp.raise_hand(now), now))
    grant = mod.grant(sp_id.identity, GRANT, now)
    li.receive(grant, now)  # the speaker lost it
    again = sp.raise_hand(now + 8)
    assert [type(e) for e in mod.receive(again, now + 8)] == [GrantAsked]
    assert li.receive(again, now + 8) == [] and li.hands == []
    assert mod.hands == [] and mod.next_hand() is None
    beacon = mod.beacon(now + 8)
    sp.receive(beacon, now + 8)
    assert sp.holds_floor(now + 8)
