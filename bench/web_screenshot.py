"""A picture of the room page for the README: a moderator's browser while a radio speaker
holds the floor and another member's hand is up (Debian's chromium, headless).
Run: python -m bench.web_screenshot [--out bench/web.png]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

from bench.web_gateway import _homes


async def _shoot(mod: str, ana: str, ben: str, out: Path) -> None:
    from aiohttp import web
    from playwright.async_api import async_playwright

    from relay.app.audio import file_source
    from relay.app.session import open_session
    from relay.demo.voice import bundled_sample
    from relay.store.home import Home
    from relay.voice.audio import read_audio
    from relay.web.gateway import Gateway, make_app
    from relay.web.people import add_person

    url = "sim://shot?preset=SHORT_TURBO"
    gateway = Gateway(Home(mod), "market", url)
    await gateway.start()
    runner = web.AppRunner(make_app(gateway), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    token = add_person(Home(mod), "market", "Moderator", as_me=True).token
    speech = read_audio(bundled_sample("hts1.wav"))
    async with (
        open_session(Home(ana), "market", url, source=file_source(speech)) as speaker,
        open_session(Home(ben), "market", url) as other,
        async_playwright() as p,
    ):
        browser = await p.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox"]
        )
        page = await browser.new_page(viewport={"width": 1000, "height": 760})
        await page.goto(f"{base}/join/{token}")
        await speaker.raise_hand()
        await other.raise_hand()
        while len(gateway.main.room.hands) < 2:
            await asyncio.sleep(0.05)
        await gateway.main.grant(speaker.me.hex())
        while not speaker.snapshot().floor.mine:
            await asyncio.sleep(0.05)
        await speaker.ptt_start()
        await asyncio.sleep(3.0)
        await page.screenshot(path=str(out))
        await browser.close()
        await speaker.ptt_stop()
    await runner.cleanup()
    await gateway.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/web.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mod, ana = _homes(Path(tmp))
        ben = _member(Path(tmp), mod)
        from relay.store.contacts import Contacts
        from relay.store.home import Home

        contacts = Contacts(Home(mod))
        for name, home in (("Ana", ana), ("Ben", ben)):
            contacts.add(name, Home(home).identity().public.encode())
        asyncio.run(_shoot(mod, ana, ben, Path(args.out)))
    print(args.out)


def _member(base: Path, mod: str) -> str:
    import json

    from click.testing import CliRunner

    from relay.cli.main import cli

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args), env={"RELAY_HOME": None})
        assert result.exit_code == 0, result.output
        return result.stdout

    ben = str(base / "ben")
    run("id", "init", "--home", ben)
    public = json.loads(run("id", "show", "--home", ben, "--json"))["public_id"]
    run(
        "room",
        "join",
        run("room", "invite", "market", "--for", public, "--home", mod).split()[-1],
        "--home",
        ben,
    )
    return ben


if __name__ == "__main__":
    main()
