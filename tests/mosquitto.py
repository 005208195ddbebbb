"""A real mosquitto broker for tests: a plain process on a free 127.0.0.1 port.

``Broker`` writes a temporary config (``listener PORT 127.0.0.1``, ``allow_anonymous true``,
no persistence), starts ``mosquitto -c``, waits until the port accepts connections, and can
be stopped and restarted on the same port (fault tests). The ``mosquitto`` fixture in
``conftest.py`` yields one; it skips only when the mosquitto binary is not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


class Broker:
    """``users`` (name -> password): logins only, made with ``mosquitto_passwd`` the way
    the README's example makes them."""

    def __init__(
        self, workdir: Path, port: int | None = None, users: dict[str, str] | None = None
    ) -> None:
        assert MOSQUITTO is not None
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.config = workdir / "mosquitto.conf"
        access = "allow_anonymous true\n"
        if users:
            assert MOSQUITTO_PASSWD is not None
            passwd = workdir / "passwd"
            for i, (name, password) in enumerate(users.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run(
                    [MOSQUITTO_PASSWD, *create, "-b", str(passwd), name, password], check=True
                )
            access = f"allow_anonymous false\npassword_file {passwd}\n"
            if os.geteuid() == 0:  # as root, mosquitto would drop to its own user, which
                access += "user root\n"  # cannot read a file in a private temp dir
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n{access}persistence false\nset_tcp_nodelay true\n"
        )
        self.logfile = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:  # a poll: generous for a loaded machine
        assert self.proc is None
        deadline = time.monotonic() + timeout
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.logfile.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self, down: float = 0.0) -> None:
        """Stop, stay down ``down`` seconds, start again on the same port."""
        self.stop()
        if down:
            time.sleep(down)
        self.start()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


async def mqtt_bridges(url: str, radios: list) -> list:
    """One running bridge per (gateway id, radio link), each with an mqtt link to ``url``,
    connected (subscribed) before it returns: islands that meet on one broker."""
    from relay.bridge.core import LinkKind
    from relay.links.url import open_link
    from relay.runtime.bridge import Bridge, BridgeLink

    bridges = [
        Bridge(
            [
                BridgeLink("radio", radio, LinkKind.RADIO),
                BridgeLink("mqtt", open_link(url), LinkKind.MQTT),
            ],
            gateway_id=gw,
        )
        for gw, radio in radios
    ]
    for bridge in bridges:
        await bridge.start()
    for bridge in bridges:
        await bridge.links["mqtt"].link.connect()
    return bridges
