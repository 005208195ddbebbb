"""Links: every radio and transport behind one interface, opened by URL.

Shared here: ``base`` (the Link interface, its datagrams and stats), ``url`` (opening a link
from a URL, like pyserial's ``serial_for_url``), ``stream`` (the reconnecting lifecycle of
stream links), ``threads`` (blocking driver libraries beside asyncio), ``devices`` (which
serial port is which radio) and ``mqtt`` (bridges over an MQTT broker). One folder per radio
family, its byte codecs (no I/O) apart from its drivers: ``kiss``, ``at``, ``meshtastic``,
``sim``.
"""
