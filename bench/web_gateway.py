"""Browsers per gateway: CPU and latency of `relay web` fanning one over out to N pages.

One process runs the gateway (the moderator's home) and a radio speaker on a simulated
SHORT_TURBO channel who talks without pause (the bundled samples, looped); a second process
holds N page connections (WebSocket clients speaking the page's protocol, each with its own
one-time link and identity, as N phones would) and timestamps every speech message it gets.
Latency is from the gateway handing a chunk of decoded speech to its sockets to a client
reading it; the gateway's CPU is its process time over the run, less the same run with no
page open (the speaker's encoder and the gateway's one decoder).
Run: python -m bench.web_gateway [--listeners 10,50,100] [--seconds 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLIENT = r"""
import asyncio, json, struct, sys, time
from aiohttp import ClientSession, CookieJar, WSMsgType

async def page(base, token, seconds, lat, counts):
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/join/{token}") as r:
            assert r.status == 200, r.status
        async with http.ws_connect(base + "/ws", headers={"Origin": base}) as ws:
            end = time.time() + seconds
            while time.time() < end:
                try:
                    msg = await ws.receive(timeout=max(0.1, end - time.time()))
                except asyncio.TimeoutError:
                    break
                if msg.type == WSMsgType.BINARY and msg.data[0] == 1:
                    (sent,) = struct.unpack(">d", msg.data[1:9])
                    lat.append(time.time() - sent)
                    counts["speech"] += len(msg.data) - 9
                elif msg.type == WSMsgType.TEXT:
                    counts["state"] += 1
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                    counts["closed"] += 1
                    break

async def main():
    job = json.loads(sys.stdin.read())
    lat, counts = [], {"speech": 0, "state": 0, "closed": 0}
    base, seconds = job["base"], job["seconds"]
    await asyncio.gather(*(page(base, t, seconds, lat, counts) for t in job["tokens"]))
    print(json.dumps({"latency": lat, **counts}))

asyncio.run(main())
"""


def _homes(base: Path) -> tuple[str, str]:
    from relay.cli.main import cli

    def run(*args: str) -> str:
        from click.testing import CliRunner

        result = CliRunner().invoke(cli, list(args), env={"RELAY_HOME": None})
        assert result.exit_code == 0, result.output
        return result.stdout

    mod, ana = str(base / "mod"), str(base / "ana")
    for home in (mod, ana):
        run("id", "init", "--home", home)
    run("room", "create", "market", "--preset", "SHORT_TURBO", "--home", mod)
    public = json.loads(run("id", "show", "--home", ana, "--json"))["public_id"]
    invite = run("room", "invite", "market", "--for", public, "--home", mod).split()[-1]
    run("room", "join", invite, "--home", ana)
    return mod, ana


async def _run(mod: str, ana: str, n: int, seconds: float, channel: str) -> dict:
    from aiohttp import web

    from relay.app.audio import file_source
    from relay.app.session import open_session
    from relay.demo.voice import bundled_sample
    from relay.store.home import Home
    from relay.voice.audio import read_audio
    from relay.web.gateway import Gateway, make_app
    from relay.web.people import add_person

    speech = np.concatenate(
        [read_audio(bundled_sample(f)) for f in ("hts1.wav", "hts2.wav", "morig.wav")] * 20
    )
    url = f"sim://{channel}?preset=SHORT_TURBO"
    gateway = Gateway(Home(mod), "market", url)
    await gateway.start()
    runner = web.AppRunner(make_app(gateway), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    tokens = [add_person(Home(mod), "market", f"p{channel}-{i}").token for i in range(n)]
    loop = asyncio.get_running_loop()
    async with open_session(
        Home(ana), "market", url, source=file_source(speech), grant_seconds=3600
    ) as speaker:
        await speaker.raise_hand()
        while not gateway.main.room.hands:
            await asyncio.sleep(0.05)
        await gateway.main.grant(seconds=3600)
        while not speaker.snapshot().floor.mine:
            await asyncio.sleep(0.05)
        await speaker.ptt_start()
        await asyncio.sleep(1.5)  # speech is flowing before anything is measured
        clients = None
        if n:
            clients = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CLIENT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert clients.stdin is not None
            clients.stdin.write(
                json.dumps({"base": base, "tokens": tokens, "seconds": seconds}).encode()
            )
            await clients.stdin.drain()
            clients.stdin.close()
            await asyncio.sleep(1.0)  # pages connected
        cpu0, wall0 = time.process_time(), loop.time()
        sent0 = gateway.stats["speech_messages"]
        await asyncio.sleep(seconds - 2.0 if n else seconds)
        cpu = (time.process_time() - cpu0) / (loop.time() - wall0)
        messages = gateway.stats["speech_messages"] - sent0
        report: dict = {"listeners": n, "gateway_cpu": cpu, "speech_messages": messages}
        if clients is not None:
            out, _ = await clients.communicate()
            got = json.loads(out)
            lat = sorted(got["latency"])
            report |= {
                "latency_ms_p50": 1000 * statistics.median(lat) if lat else None,
                "latency_ms_p99": 1000 * lat[int(0.99 * (len(lat) - 1))] if lat else None,
                "speech_bytes_per_page_s": got["speech"] / n / seconds,
                "pages_closed": got["closed"],
                "pages_cut_off": gateway.stats["cut_off"],
            }
        await speaker.ptt_stop()
    await runner.cleanup()
    await gateway.close()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listeners", default="10,50,100")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    counts = [int(x) for x in args.listeners.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mod, ana = _homes(Path(tmp))
        for i, n in enumerate([0, *counts]):
            rows.append(asyncio.run(_run(mod, ana, n, args.seconds, f"bench{i}")))
            print(f"listeners {n}: done", file=sys.stderr)
    idle = rows[0]["gateway_cpu"]
    for row in rows:
        row["gateway_cpu_for_pages"] = row["gateway_cpu"] - idle
        row["cpu_ms_per_page_s"] = (
            1000 * row["gateway_cpu_for_pages"] / row["listeners"] if row["listeners"] else None
        )
    if args.json:
        print(json.dumps({"cores": os.cpu_count(), "rows": rows}))
        return
    print(
        "| pages | gateway CPU | CPU for pages | CPU per page | latency p50 | latency p99 | "
        "speech B/s per page | pages cut off |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if not r["listeners"]:
            print(f"| 0 | {r['gateway_cpu']:.0%} | – | – | – | – | – | – |")
            continue
        print(
            f"| {r['listeners']} | {r['gateway_cpu']:.0%} | {r['gateway_cpu_for_pages']:.0%} | "
            f"{r['cpu_ms_per_page_s']:.2f} ms/s | {r['latency_ms_p50']:.1f} ms | "
            f"{r['latency_ms_p99']:.1f} ms | {r['speech_bytes_per_page_s']:.0f} | "
            f"{r['pages_cut_off']} |"
        )


if __name__ == "__main__":
    main()
