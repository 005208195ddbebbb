"""Meshtastic nodes through the real ``meshtastic`` library: ``meshtastic://``, ``meshtastic+tcp://``.

``url`` parses and checks URLs before anything connects; ``link`` is the driver.
"""
