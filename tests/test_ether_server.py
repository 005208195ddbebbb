"""`relay ether`: one simulated channel shared over TCP, in real time (kept short)."""

import asyncio
import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from relay.errors import LinkError, UsageError
from relay.links.sim.channel import Ether, clear_registry, remote_address
from relay.links.sim.client import RemoteSimLink, open_remote
from relay.links.sim.codec import MAGIC, Data, Hello, encode
from relay.links.sim.server import EtherServer
from relay.links.url import open_link
from relay.radio.profiles import preset

TURBO = preset("SHORT_TURBO")
FAST = preset("SHORT_FAST")


@contextlib.asynccontextmanager
async def serving(ether: Ether) -> AsyncIterator[EtherServer]:
    server = EtherServer(ether, port=0)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def nodes(server: EtherServer, *names: str) -> list[RemoteSimLink]:
    return [await open_remote(f"{server.url}?node={n}") for n in names]


async def settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)


# Waits for what does happen are generous (a loaded machine is slow, not red); they cost
# nothing when it comes at once.
WAIT = 15.0


async def until(check, timeout: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


async def recv(link: RemoteSimLink, timeout: float = WAIT):
    return await asyncio.wait_for(link.recv(), timeout)


def drained(link: RemoteSimLink) -> list[bytes]:
    out = []
    while link.pending():
        out.append(link._inbox.get_nowait().data)
    return out


def test_delivery_to_all_others_with_airtime_delay() -> None:
    async def main() -> None:
        async with serving(Ether(FAST)) as server:
            a, b, c = await nodes(server, "alice", "bob", "carol")
            assert (a.mtu, a.name, b.name) == (FAST.mtu, "alice", "bob")
            assert a.airtime(40) == FAST.airtime(40)
            assert a.url == f"{server.url}?node=alice"
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await a.send(b"x" * 40)
            got_b, got_c = await asyncio.gather(b.recv(), c.recv())
            assert got_b.data == got_c.data == b"x" * 40
            # arrival = send + airtime (+ localhost hops and, on a loaded machine, scheduling)
            for got in (got_b, got_c):
                assert FAST.airtime(40) - 0.002 <= got.time - t0 <= FAST.airtime(40) + 0.5
            await c.send(b"from carol")
            assert (await recv(a)).data == (await recv(b)).data == b"from carol"
            await settle()
            assert not a.pending() and not c.pending()  # nobody hears itself
            assert a.stats.sent == 1 and a.stats.airtime_s == pytest.approx(FAST.airtime(40))
            assert server.ether.stats.delivered == 4
            assert server.stats.active == 3
            for link in (a, b, c):
                await link.close()
            await until(lambda: server.stats.active == 0 and not server.ether.nodes)

    asyncio.run(main())


def test_mtu_refused_locally_and_link_still_works() -> None:
    async def main() -> None:
        async with serving(Ether(TURBO)) as server:
            a, b = await nodes(server, "a", "b")
            with pytest.raises(UsageError, match="MTU of 233"):
                await a.send(b"x" * 234)
            assert a.stats.refused == 1
            await a.send(b"x" * 233)
            assert (await recv(b)).data == b"x" * 233

    asyncio.run(main())


def test_back_pressure_and_drain() -> None:
    async def main() -> None:
        async with serving(Ether(TURBO, queue_size=2)) as server:
            a, b = await nodes(server, "a", "b")
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for i in range(5):  # 1 on air + 2 queued: the 4th and 5th send must wait
                await a.send(bytes([i]) * 10)
            waited = loop.time() - t0
            assert waited >= 2 * TURBO.airtime(10) - 0.005
            await a.drain()
            assert loop.time() - t0 >= 5 * TURBO.airtime(10) - 0.005
            got = [(await recv(b)).data[0] for _ in range(5)]
            assert got == [0, 1, 2, 3, 4]

    asyncio.run(main())


async def _remote_losses(ether: Ether, sends: int) -> tuple[list[int], list[int]]:
    """Which of ``sends`` datagrams from a reach b and c over the ether server."""
    async with serving(ether) as server:
        a, b, c = await nodes(server, "a", "b", "c")
        for i in range(sends):
            await a.send(bytes([i]) * 8)
        await a.drain()
        await settle()
        return [d[0] for d in drained(b)], [d[0] for d in drained(c)]


def test_loss_is_seeded_and_matches_the_in_process_channel() -> None:
    from relay.runtime.clock import run

    remote_b, remote_c = asyncio.run(_remote_losses(Ether(TURBO, loss=0.4, seed=3), 16))
    assert 0 < len(remote_b) < 16 and 0 < len(remote_c) < 16
    assert remote_b != remote_c  # each receiver draws its own losses
    # the same seed and sends on an in-process channel (virtual time) lose the same datagrams
    ether = Ether(TURBO, loss=0.4, seed=3)

    async def local() -> tuple[list[int], list[int]]:
        a, b, c = ether.attach("a"), ether.attach("b"), ether.attach("c")
        for i in range(16):
            await a.send(bytes([i]) * 8)
        await a.drain()
        return (
            [(await recv(b)).data[0] for _ in range(b.pending())],
            [(await recv(c)).data[0] for _ in range(c.pending())],
        )

    assert run(local()) == (remote_b, remote_c)


def test_garbage_client_is_dropped_and_others_carry_on(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(Ether(TURBO)) as server:
            a, b = await nodes(server, "a", "b")
            # a stranger speaking HTTP, and a node that goes bad after joining
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), WAIT) != b"x"  # closed on us
            bad = await open_remote(f"{server.url}?node=bad")
            assert bad._writer is not None
            bad._writer.write(b"\x00\x03\x63zz")  # unknown frame type
            with pytest.raises(LinkError, match="protocol error"):
                await asyncio.wait_for(bad.recv(), WAIT)
            await a.send(b"still here")
            assert (await recv(b)).data == b"still here"
            assert server.stats.garbage == 2
            assert "bad" not in server.ether.nodes

    with caplog.at_level(logging.WARNING, logger="relay.ether"):
        asyncio.run(main())
    assert sum("protocol error" in r.getMessage() for r in caplog.records) == 2


def test_client_vanishing_mid_frame_and_mid_transmission_hurts_nobody() -> None:
    async def main() -> None:
        async with serving(Ether(FAST)) as server:
            a, b = await nodes(server, "a", "b")
            # joins, starts a 200-byte transmission, then vanishes mid-air and mid-frame
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(encode(Hello(name="ghost")))
            await reader.read(2048)  # WELCOME
            writer.write(encode(Data(b"g" * 200)))
            await writer.drain()
            await asyncio.sleep(0.01)  # on air now
            writer.write(b"\x00\x50\x03half a frame")
            writer.transport.abort()
            # what was on air still lands (a second sender now would have collided with it)
            assert (await recv(b)).data == b"g" * 200
            await a.send(b"after the ghost")
            assert (await recv(b)).data == b"after the ghost"
            assert server.stats.cut_off == 1 and server.stats.garbage == 0
            assert "ghost" not in server.ether.nodes

    asyncio.run(main())


def test_server_shutdown_gives_clients_link_error() -> None:
    async def main() -> None:
        server = EtherServer(Ether(TURBO), port=0)
        await server.start()
        a, b = await nodes(server, "a", "b")
        pending = asyncio.ensure_future(a.recv())
        await settle(0.01)
        await server.close()
        with pytest.raises(LinkError, match="shutting down"):
            await asyncio.wait_for(pending, WAIT)
        with pytest.raises(LinkError, match="shutting down"):
            await b.send(b"anyone?")
        await a.close()
        await b.close()
        with pytest.raises(LinkError, match="closed"):
            await a.recv()

    asyncio.run(main())


def test_handshake_errors() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hint = rf"no ether at 127.0.0.1:{port} — start one with `relay ether --port {port}`"
    with pytest.raises(LinkError, match=hint):
        open_link(f"sim://127.0.0.1:{port}")

    async def main() -> None:
        with pytest.raises(LinkError, match="no ether at"):
            await open_remote(f"sim://127.0.0.1:{port}")
        async with serving(Ether(TURBO, loss=0.1, burst=3, seed=5)) as server:
            ok = await open_remote(f"{server.url}?preset=short_turbo&loss=0.1&burst=3&seed=5")
            await ok.close()
            for query, what in [
                ("preset=SHORT_FAST", "radio SHORT_FAST"),
                ("loss=0.2", "loss"),
                ("seed=6", "seed=6"),
                ("sf=7&bw=500&cr=6", "radio"),
            ]:
                with pytest.raises(UsageError, match=what):
                    await open_remote(f"{server.url}?{query}")
            dup = await open_remote(f"{server.url}?node=dup")
            with pytest.raises(UsageError, match="already on"):
                await open_remote(f"{server.url}?node=dup")
            await dup.close()
            # a client from the future
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"\x00\x07\x01" + MAGIC + b"\x09\x00")
            assert b"protocol version 9" in await asyncio.wait_for(reader.read(), WAIT)
            writer.close()
            assert server.stats.refused == 2

    asyncio.run(main())


def test_url_grammar() -> None:
    assert remote_address("sim://127.0.0.1:7300?node=a") == ("127.0.0.1", 7300)
    assert remote_address("sim://localhost:9") == ("localhost", 9)
    assert remote_address("sim://[::1]:7300") == ("::1", 7300)
    assert remote_address("sim://room") is None
    assert remote_address("sim://?preset=SHORT_FAST") is None
    with pytest.raises(UsageError, match="port"):
        remote_address("sim://127.0.0.1:99999")
    # a typo for an ether is an error, never a silent empty channel in this process
    for typo in ("sim://127.0.0.1:notaport", "sim://localhost:", "sim://room:7300x"):
        with pytest.raises(UsageError, match="port"):
            remote_address(typo)
        with pytest.raises(UsageError, match="port"):
            open_link(typo)
    clear_registry()
    link = open_link("sim://room?node=a")  # no port: still the in-process channel
    assert type(link).__name__ == "SimLink"
    clear_registry()


def test_relay_ether_as_a_real_process() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "ether", "--port", "0", "--preset", "SHORT_TURBO"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        match = re.search(r"nodes join with (sim://127\.0\.0\.1:(\d+))", line)
        assert match, line
        url = match.group(1)
        a = open_link(f"{url}?node=alice")  # the blocking open path
        b = open_link(f"{url}?node=bob")
        assert a.mtu == TURBO.mtu

        async def talk() -> bytes:
            await a.send(b"over the process boundary")
            got = await asyncio.wait_for(b.recv(), WAIT)
            await a.close()
            await b.close()
            return got.data

        assert asyncio.run(talk()) == b"over the process boundary"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    assert "stopped" in err


def test_cli_mistakes_are_one_line_and_exit_2() -> None:
    from click.testing import CliRunner

    from relay.cli.main import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["ether", "--port", "0", "--loss", "2"])
    assert result.exit_code == 2 and "loss must be a probability" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(cli, ["ether", "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output
    assert len(result.output.strip().splitlines()) == 1
