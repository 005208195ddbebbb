"""The simulated LoRa channel: ``sim://NAME`` in one process, ``sim://HOST:PORT`` across processes.

``channel`` is the channel model (airtime, half duplex, collisions, loss, duty cycle) and its
in-process links; ``codec`` is the ether protocol's bytes (no I/O); ``server`` hosts a channel
for other processes (``relay ether``) and ``client`` is a node attached to one; ``url`` opens
either from a sim:// URL.
"""
