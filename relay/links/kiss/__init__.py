"""KISS TNCs (direwolf, RNode-style modems, hardware TNCs): ``kiss://`` and ``kiss+tcp://``.

Bytes only, no I/O: ``codec`` (KISS framing), ``ax25`` (UI frames for amateur bands),
``options`` (URL options), ``profile`` (TNC timings from ``firmware_profiles/kiss.toml``).
I/O: ``link`` (the Link over any byte stream), ``serial`` and ``tcp`` (the two streams).
"""
