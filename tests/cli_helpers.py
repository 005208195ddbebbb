"""What the CLI tests share: invoking `relay` in-process or as a process, and a set of homes
with one room (a moderator, members ana and ben enrolled --for)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from relay.cli.main import cli

ENV = {
    **{k: v for k, v in os.environ.items() if k != "RELAY_HOME"},
    "PYTHONUNBUFFERED": "1",
}


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), env={"RELAY_HOME": None})


def ok(*args: str):
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def refused(*args: str, match: str, code: int = 2) -> None:
    """One line on stderr naming the problem, the right exit code, no traceback."""
    result = invoke(*args)
    assert result.exit_code == code, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relay: "), result.stderr
    assert match in lines[0], lines[0]


def make_homes(base: Path, room: str, preset: str = "SHORT_TURBO") -> dict[str, str]:
    """Homes for mod, ana and ben; mod creates ``room``, ana and ben join by invites made --for
    them. Also ``ana_fp`` and ``ben_fp``: their fingerprints."""
    people = {name: str(base / name) for name in ("mod", "ana", "ben")}
    for home in people.values():
        ok("id", "init", "--home", home)
    ok("room", "create", room, "--preset", preset, "--home", people["mod"])
    for name in ("ana", "ben"):
        public = json.loads(ok("id", "show", "--home", people[name], "--json").stdout)
        invite = ok(
            "room", "invite", room, "--for", public["public_id"], "--home", people["mod"]
        ).stdout.split()[-1]
        ok("room", "join", invite, "--home", people[name])
        people[f"{name}_fp"] = public["fingerprint"]
    return people


def relay_proc(*args: str, out: Path) -> subprocess.Popen:
    """`relay ARGS` as a process, its stdout and stderr in OUT.out and OUT.err."""
    return subprocess.Popen(
        [sys.executable, "-m", "relay", *args],
        stdout=open(out.with_suffix(".out"), "w"),
        stderr=open(out.with_suffix(".err"), "w"),
        env=ENV,
    )


def start_ether(*extra: str) -> tuple[subprocess.Popen, str]:
    """`relay ether --port 0 EXTRA` as a process, and the sim:// URL its nodes join with."""
    ether = subprocess.Popen(
        [sys.executable, "-m", "relay", "ether", "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    line = ether.stdout.readline()  # type: ignore[union-attr]
    match = re.search(r"(sim://127\.0\.0\.1:\d+)", line)
    assert match, line
    return ether, match.group(1)
