"""Voice messages end to end: the sans-I/O state machines, then members on simulated radios
in virtual time (lossy LONG_FAST, several receivers, a repeater)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from clip_helpers import close_peers, make_peer, new_room, speech_frames

from relay.bridge.core import LinkKind
from relay.clip.message import build_offer, choose_mode, max_piece_size
from relay.clip.receiver import (
    AckHeard,
    ClipReceiver,
    MessageComplete,
    MessageReset,
    Refused,
)
from relay.clip.sender import ClipSender
from relay.clip.wire import POLL, Ack, Offer, Piece, parse
from relay.core.identity import Identity
from relay.errors import UsageError
from relay.links.sim.channel import Ether
from relay.radio.profiles import preset
from relay.runtime.bridge import Bridge, BridgeLink
from relay.runtime.clock import run
from relay.voice.modes import mode_by_name

MODE = mode_by_name("700C")
ROOM = b"R" * 8


def signed(ident: Identity, seconds: float = 5.0, piece: int = 50, **kw):
    return build_offer(
        ident, ROOM, MODE, speech_frames(seconds), piece, 1000.0, max_bytes=1 << 20, **kw
    )


def exchange(
    sender: ClipSender,
    receivers: dict[bytes, ClipReceiver],
    me: bytes,
    *,
    loss=0.0,
    seed=1,
    forge=None,
    steps=2000,
):
    """Drive one sender and its receivers on a perfect-timing bus; returns completions."""
    rng = random.Random(seed)
    now, done = 0.0, {r: [] for r in receivers}
    for _ in range(steps):
        if sender.done:
            break
        payload = sender.next_payload(now)
        if payload is not None:
            if forge is not None:
                payload = forge(payload)
            now += 1.0
            sender.transmitted(now)
            for ident, rx in receivers.items():
                if rng.random() >= loss:
                    for ev in rx.receive(me, payload, now):
                        if isinstance(ev, MessageComplete):
                            done[ident].append(ev)
            continue
        now = max(
            now + 0.1,
            min(
                t
                for t in [sender.wakeup(now) or now]
                + [rx.wakeup() or 1e9 for rx in receivers.values()]
            ),
        )
        for ident, rx in receivers.items():
            for ack in rx.acks_due(now):
                if rng.random() >= loss:
                    sender.on_ack(ident, parse(ack), now)
                for other, orx in receivers.items():
                    if other != ident and rng.random() >= loss:
                        orx.receive(ident, ack, now)
    return done


def receivers_for(sender_id: Identity, n: int, **kw) -> dict[bytes, ClipReceiver]:
    known = {sender_id.identity: sender_id.public}
    return {
        bytes([i]) * 32: ClipReceiver(ROOM, known.get, slot=0.5, rng=random.Random(i), **kw)
        for i in range(n)
    }


@pytest.mark.parametrize("loss", [0.0, 0.3])
def test_sans_io_transfer_delivers_exactly_once_to_every_receiver(loss: float) -> None:
    me = Identity.generate()
    offer, data = signed(me)
    rxs = receivers_for(me, 3)
    sender = ClipSender(offer, data, ack_wait=3.0, expect=3)
    done = exchange(sender, rxs, me.identity, loss=loss, seed=5)
    assert sender.done
    for got in done.values():
        assert len(got) == 1 and got[0].data == data and got[0].offer == offer


def test_a_forged_piece_never_plays_and_the_honest_copy_wins() -> None:
    """A room-key holder injects a piece under the sender's name: the whole fails its
    signature, is dropped, and the sender's retransmissions rebuild the real message."""
    me = Identity.generate()
    offer, data = signed(me)
    rx = ClipReceiver(ROOM, {me.identity: me.public}.get, slot=0.5)
    forged = Piece(offer.msg_id, 1, b"X" * offer.piece_len(1)).pack()
    assert rx.receive(me.identity, forged, 0.0)
    events = [rx.receive(me.identity, offer.pack(), 0.0)]
    for i in range(offer.pieces):
        chunk = data[i * offer.piece_size : (i + 1) * offer.piece_size]
        events.append(rx.receive(me.identity, Piece(offer.msg_id, i, chunk).pack(), 1.0))
    flat = [e for evs in events for e in evs]
    assert not [e for e in flat if isinstance(e, MessageComplete)]
    assert [e.reason for e in flat if isinstance(e, MessageReset)] == ["bad_signature"]
    # The ack now asks for everything again; the honest pieces complete it.
    sender = ClipSender(offer, data, ack_wait=3.0)
    done = exchange(sender, {b"r" * 32: rx}, me.identity)
    assert [c.data for c in done[b"r" * 32]] == [data]


def test_a_wrong_signer_or_unknown_sender_never_completes() -> None:
    me, other = Identity.generate(), Identity.generate()
    offer, data = signed(me)
    for lookup, reason in (
        ({me.identity: other.public}.get, "bad_signature"),
        ({}.get, "unknown_sender"),
    ):
        rx = ClipReceiver(ROOM, lookup, slot=0.5)
        evs = rx.receive(me.identity, offer.pack(), 0.0)
        for i in range(offer.pieces):
            chunk = data[i * offer.piece_size : (i + 1) * offer.piece_size]
            evs += rx.receive(me.identity, Piece(offer.msg_id, i, chunk).pack(), 1.0)
        assert not [e for e in evs if isinstance(e, MessageComplete)]
        assert [e.reason for e in evs if isinstance(e, MessageReset)] == [reason]


def test_duplicates_are_suppressed_and_a_stored_message_is_never_completed_twice() -> None:
    me = Identity.generate()
    offer, data = signed(me)
    rx = ClipReceiver(ROOM, {me.identity: me.public}.get, slot=0.5)
    pieces = [
        Piece(offer.msg_id, i, data[i * offer.piece_size : (i + 1) * offer.piece_size]).pack()
        for i in range(offer.pieces)
    ]
    evs = rx.receive(me.identity, offer.pack(), 0.0)
    for p in pieces + pieces:
        evs += rx.receive(me.identity, p, 1.0)
    assert len([e for e in evs if isinstance(e, MessageComplete)]) == 1
    assert rx.stats.duplicates == len(pieces)
    # After a restart the inbox says it is complete: the sender is told so, nothing repeats.
    again = ClipReceiver(ROOM, {me.identity: me.public}.get, slot=0.5)
    again.restore_complete(me.identity, offer)
    evs = []
    for p in [*pieces, offer.pack()]:  # pieces, then a probe
        evs += again.receive(me.identity, p, 2.0)
    assert not [e for e in evs if isinstance(e, MessageComplete)]
    (ack,) = [parse(a) for a in again.acks_due(100.0)]
    assert isinstance(ack, Ack) and ack.complete


def test_an_overheard_ack_that_covers_ours_suppresses_it() -> None:
    me = Identity.generate()
    offer, data = signed(me)
    rx = ClipReceiver(ROOM, {me.identity: me.public}.get, slot=1.0, slots=1)
    rx.receive(me.identity, offer.pack(), 0.0)
    assert len(rx.acks_due(10.0)) == 1  # everyone answers once
    piece0 = Piece(offer.msg_id, 0, data[: offer.piece_size], poll=True).pack()
    rx.receive(me.identity, piece0, 11.0)
    # Another receiver says it holds nothing: the sender will resend all we lack. Quiet.
    other = Ack.of(offer.msg_id, set(), have_offer=True, complete=False).pack()
    assert isinstance(rx.receive(b"o" * 32, other, 11.01)[0], AckHeard)
    assert rx.acks_due(20.0) == [] and rx.stats.acks_suppressed == 1
    # ...but never twice in a row (our last ack may have been lost).
    rx.receive(me.identity, offer.pack(), 21.0)
    rx.receive(b"o" * 32, other, 21.01)
    assert len(rx.acks_due(30.0)) == 1


def test_oversized_messages_are_refused_clearly() -> None:
    me = Identity.generate()
    with pytest.raises(UsageError, match="exceeds the limit of 1000 B"):
        build_offer(me, ROOM, MODE, speech_frames(60), 200, 0.0, max_bytes=1000)
    offer, _ = signed(me, seconds=20)
    rx = ClipReceiver(ROOM, {me.identity: me.public}.get, slot=0.5, max_bytes=1000)
    (ev,) = rx.receive(me.identity, offer.pack(), 0.0)
    assert isinstance(ev, Refused) and ev.reason == "clip_too_big"


def test_the_planner_picks_the_mode_and_pieces_fill_the_mtu() -> None:
    assert choose_mode(preset("SHORT_FAST")).name == "1600"
    assert choose_mode(preset("LONG_FAST")).name == "700C"
    assert choose_mode(preset("SHORT_FAST").with_duty_cycle(0.01)).name == "700C"
    assert max_piece_size(233) == 233 - 23 - 7  # header, session, tag; piece header
    with pytest.raises(UsageError):
        max_piece_size(20)


# --- members on simulated radios, virtual time -----------------------------------------


def test_30_s_message_over_long_fast_with_20_percent_loss_arrives_intact(tmp_path: Path) -> None:
    async def main() -> None:
        ether = Ether(preset("LONG_FAST"), loss=0.2, seed=11)
        room_id, key, (mod, a, b, c) = new_room(4)
        peers = [
            make_peer(room_id, key, mod, ident, ether.attach(name), tmp_path / name, seed=i)
            for i, (name, ident) in enumerate((("a", a), ("b", b), ("c", c)))
        ]
        tx = peers[0]
        mode = choose_mode(ether.profile)
        frames = speech_frames(30.0, mode.bytes_per_frame, mode.frame_seconds)
        clip, resumed = tx.clips.prepare(frames, mode, identity=a)
        assert not resumed
        result = await tx.clips.deliver(clip, expect=2, timeout=3600)
        assert result.delivered and result.complete == 2
        for rx in peers[1:]:
            assert [g.data for g in rx.got] == [b"".join(frames)]
            assert [g.id for g in rx.store.inbox(room_id)] == [clip.offer.msg_id.hex()]
        assert tx.store.pending(room_id) == []
        await close_peers(peers)

    run(main())


def test_a_message_crosses_a_repeater(tmp_path: Path) -> None:
    async def main() -> None:
        near = Ether(preset("MEDIUM_FAST"), loss=0.05, seed=2, name="near")
        far = Ether(preset("SHORT_FAST"), loss=0.05, seed=3, name="far")
        rep = Bridge(
            [
                BridgeLink("near", near.attach("rep"), LinkKind.RADIO),
                BridgeLink("far", far.attach("rep"), LinkKind.RADIO),
            ]
        )
        await rep.start()
        room_id, key, (mod, a, b) = new_room(3)
        tx = make_peer(room_id, key, mod, a, near.attach("a"), tmp_path / "a", seed=1)
        rx = make_peer(room_id, key, mod, b, far.attach("b"), tmp_path / "b", seed=2)
        frames = speech_frames(20.0, MODE.bytes_per_frame, MODE.frame_seconds)
        clip, _ = tx.clips.prepare(frames, MODE, identity=a)
        result = await tx.clips.deliver(clip, timeout=1800)
        assert result.delivered
        assert [g.data for g in rx.got] == [b"".join(frames)]
        await rep.stop()
        await close_peers([tx, rx])

    run(main())


def test_a_message_is_not_heard_in_another_room(tmp_path: Path) -> None:
    async def main() -> None:
        ether = Ether(preset("SHORT_FAST"), seed=1)
        room_id, key, (mod, a, b) = new_room(3)
        other_id, other_key, _ = new_room(0)
        tx = make_peer(room_id, key, mod, a, ether.attach("a"), tmp_path / "a")
        rx = make_peer(other_id, other_key, mod, b, ether.attach("b"), tmp_path / "b")
        clip, _ = tx.clips.prepare(speech_frames(3.0), MODE, identity=a)
        result = await tx.clips.deliver(clip, timeout=60)
        assert not result.delivered and result.receivers == 0
        assert rx.got == [] and rx.store.inbox() == []
        assert tx.store.pending(room_id)  # still in the outbox, to resume later
        await close_peers([tx, rx])

    run(main())


def test_offer_fields_are_bound_by_the_signature() -> None:
    me = Identity.generate()
    offer, data = signed(me)
    rx = ClipReceiver(ROOM, {me.identity: me.public}.get, slot=0.5)
    tampered = Offer(
        offer.msg_id, 5, offer.frames, offer.total, offer.piece_size, offer.created, offer.signature
    )
    evs = rx.receive(me.identity, tampered.pack(), 0.0)
    for i in range(offer.pieces):
        chunk = data[i * offer.piece_size : (i + 1) * offer.piece_size]
        evs += rx.receive(me.identity, Piece(offer.msg_id, i, chunk).pack(), 1.0)
    assert [e.reason for e in evs if isinstance(e, MessageReset)] == ["bad_signature"]


def test_a_restored_sender_resends_only_what_its_receivers_lack() -> None:
    me = Identity.generate()
    offer, data = signed(me)
    held = Ack.of(offer.msg_id, set(range(offer.pieces)) - {2, 4}, have_offer=True,
                  complete=False)  # fmt: skip
    sender = ClipSender(offer, data, ack_wait=3.0, restored={b"r" * 32: held})
    assert sender.needed() == [2, 4]
    probe = sender.next_payload(0.0)  # a restarted sender first asks who is there
    assert isinstance(parse(probe), Offer) and parse(probe).poll
    sender.transmitted(1.0)
    sender.on_ack(b"r" * 32, held, 2.0)
    burst = [parse(sender.next_payload(2.0))]
    while not burst[-1].poll:
        burst.append(parse(sender.next_payload(2.0)))
    sender.transmitted(3.0)
    assert sender.next_payload(3.0) is None  # quiet: the ack window is open
    assert [(x.index, x.poll) for x in burst] == [(2, False), (4, True)]


def test_silent_rounds_wait_no_longer_than_the_ack_slots_need() -> None:
    """Nobody answering yet: a few probes at the plain pace (each with our introduction),
    then backing off. A known receiver whose acks are lost: every round at the plain pace,
    since waiting longer would not bring a lost ack back."""
    me = Identity.generate()
    offer, data = signed(me)
    sender = ClipSender(offer, data, ack_wait=3.0)

    def silent_round(now: float) -> tuple[float, bool]:
        payload = sender.next_payload(now)
        assert payload is not None
        is_probe = isinstance(parse(payload), Offer)
        intro = is_probe and sender.introduce_now
        while not payload[0] & POLL:  # the round's last payload polls
            payload = sender.next_payload(now)
            assert payload is not None
        sender.transmitted(now + 1.0)
        wake = sender.wakeup(now + 1.0)
        assert wake is not None
        return wake - (now + 1.0), intro

    now, waits, intros = 0.0, [], []
    for _ in range(9):
        wait, intro = silent_round(now)
        waits.append(wait)
        intros.append(intro)
        now += 1.0 + wait
    assert waits == [3.0] * 5 + [6.0, 12.0, 24.0, 24.0]
    assert all(intros)
    assert isinstance(parse(sender.next_payload(now)), Offer)
    sender.transmitted(now + 1.0)
    ack = Ack.of(offer.msg_id, set(), have_offer=True, complete=False)
    sender.on_ack(b"r" * 32, ack, now + 2.0)  # at last: a receiver answers
    now += 2.0
    for _ in range(6):  # then every poll or ack is lost
        wait, _ = silent_round(now)
        assert wait == 3.0
        now += 1.0 + wait


def test_a_receiver_that_goes_quiet_does_not_hold_the_transfer_up() -> None:
    me = Identity.generate()
    offer, data = signed(me)
    rxs = receivers_for(me, 2)
    gone, stays = list(rxs)
    sender = ClipSender(offer, data, ack_wait=3.0, expect=1)
    sender.on_ack(gone, Ack.of(offer.msg_id, set(), have_offer=True, complete=False), 0.0)
    done = exchange(sender, {stays: rxs[stays]}, me.identity)
    assert sender.done and len(done[stays]) == 1
    assert sender.rounds >= 4  # it kept offering to the quiet one for a while first


def test_send_clip_on_an_open_member_and_detach(tmp_path: Path) -> None:
    """The library call `relay talk` can fall back to: a member opened from a home sends a
    voice message; the clip node unhooks itself from the member afterwards."""
    import asyncio

    from click.testing import CliRunner

    from relay.cli.main import cli
    from relay.runtime.clip import send_clip
    from relay.runtime.member import open_member
    from relay.store.home import Home

    home = str(tmp_path / "h")
    for args in (["id", "init"], ["room", "create", "solo", "--preset", "SHORT_TURBO"]):
        assert CliRunner().invoke(cli, [*args, "--home", home]).exit_code == 0

    async def main() -> None:
        async with open_member(Home(home), "solo", "sim://solo?preset=SHORT_TURBO") as m:
            before = m.on_event
            result = await send_clip(m, frames=speech_frames(2.0), mode=MODE, timeout=2)
            assert not result.delivered and result.receivers == 0  # nobody listens
            assert m.on_event is before

    asyncio.run(asyncio.wait_for(main(), 20))  # real time: open_member runs on the wall clock
