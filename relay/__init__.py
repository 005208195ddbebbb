"""relay: encrypted Codec2 voice rooms over the radios people have."""

__version__ = "0.1.0"
