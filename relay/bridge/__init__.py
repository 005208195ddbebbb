"""Bridges and repeaters: forward sealed relay packets between links they cannot read.

The decision logic is sans-I/O (bytes and times in, decisions out) so it can be tested
exhaustively without sockets or an event loop: :mod:`.dedup`, :mod:`.envelope`,
:mod:`.pacer` and :mod:`.core`.
"""
