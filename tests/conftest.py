"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mosquitto import MOSQUITTO, Broker


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
