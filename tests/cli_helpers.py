"""What the CLI tests share: invoking `relay` in-process or as a process, and a set of homes
with one room (a moderator, members ana and ben enrolled --for).

Process tests run on a loaded 2-core machine (CI, other agents): they wait for what a
process prints (its readiness line), never a fixed time; the --duration and timeouts given
to processes are safety nets, far beyond what a run needs, since the test ends them itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
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
    with open(out.with_suffix(".out"), "w") as stdout, open(out.with_suffix(".err"), "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "relay", *args], stdout=stdout, stderr=err, env=ENV
        )


def wait_until(check: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Poll ``check`` until it is true; generous, as a loaded machine is slow, not red."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def wait_for_text(path: Path, pattern: str, timeout: float = 60.0) -> str:
    """The text of PATH (a process's output) once ``pattern`` appears in it."""
    text = ""

    def found() -> bool:
        nonlocal text
        text = path.read_text() if path.exists() else ""
        return re.search(pattern, text) is not None

    try:
        wait_until(found, f"{pattern!r} in {path}", timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}: {text!r}") from None
    return text


def start_ether(*extra: str, log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`relay ether --port 0 EXTRA` as a process, and the sim:// URL its nodes join with.

    Its output goes to LOG (a fresh temporary file if None), never to a pipe nobody reads: a
    full pipe would stop the whole channel. It runs --verbose, so LOG says who joined and
    the channel's totals (collisions, losses) at the end: what a failing test wants to see.
    Tests that assert a loss-free over pass --lbt: without it, when two processes transmit
    at once depends on how the OS schedules them, and a beacon a busy machine sent 0.1 s
    late collides with the first voice packet."""
    if log is None:
        fd, name = tempfile.mkstemp(prefix="relay-ether-", suffix=".log")
        os.close(fd)
        log = Path(name)
    with open(log, "w") as out:
        ether = subprocess.Popen(
            [sys.executable, "-m", "relay", "ether", "--port", "0", "--verbose",
             "--stats-every", "3600", *extra],
            stdout=out, stderr=subprocess.STDOUT, env=ENV,
        )  # fmt: skip
    try:
        wait_until(
            lambda: ether.poll() is not None or "nodes join with" in log.read_text(),
            "relay ether to listen",
        )
        match = re.search(r"nodes join with (sim://127\.0\.0\.1:\d+)", log.read_text())
        assert match, log.read_text()
    except BaseException:
        stop_processes([], ether)
        raise
    return ether, match.group(1)


def stop_processes(procs: Iterable[subprocess.Popen], ether: subprocess.Popen | None) -> None:
    """Kill what a test left running, then stop the ether (a test's ``finally``)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if ether is not None:
        ether.terminate()
        try:
            ether.wait(timeout=10)
        except subprocess.TimeoutExpired:
            ether.kill()
            ether.wait()
