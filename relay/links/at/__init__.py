"""UART LoRa modules driven by AT commands (REYAX, RAK3172, Wio-E5, EBYTE): ``at://``.

Bytes only, no I/O: ``codec`` (reply lines, payload encodings, transparent framing),
``profile`` (command sets from ``firmware_profiles/at.toml``). I/O: ``link`` (the serial driver).
"""
