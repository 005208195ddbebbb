"""Shared fixtures."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from mosquitto import MOSQUITTO, Broker

from relay.links.sim.channel import clear_registry

# `relay id init` locks the keys under a passphrase and, with no terminal to ask on, wants one
# from a script: every test home is locked with this one (so every test runs the locked path).
TEST_PASSPHRASE = "correct horse battery staple (tests only)"
os.environ.setdefault("RELAY_PASSPHRASE", TEST_PASSPHRASE)
# A command run without --home uses the platform's data directory: point it at a fresh one
# for this run, so such a test never shares state with another test run (or the user's own
# home). Set before the test modules import cli_helpers, whose ENV the processes inherit.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="relay-tests-data-")


@pytest.fixture
def mosquitto(tmp_path) -> Iterator[Broker]:
    """A real mosquitto on a free 127.0.0.1 port: ``.host``, ``.port``, ``.url``, ``.restart()``."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    broker = Broker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(autouse=True)
def _fresh_sim_channels() -> Iterator[None]:
    """Every test starts with no in-process sim:// channel open: two tests naming the same
    channel (sim://x, sim://room...) never share one, whatever ran before or failed."""
    clear_registry()
    yield
    clear_registry()
