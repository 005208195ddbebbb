"""LoRa modulation parameters and time on air.

Airtime is the budget everything else is planned against (codec mode, frames per packet,
relaying, duty cycle), so it is computed exactly, by the formula in Semtech's SX127x
datasheet / application note AN1200.13. SF5 and SF6 are accepted (SX126x radios have them)
but timed with the same formula, which the SX126x datasheet refines slightly for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from relay.errors import UsageError

MAX_PAYLOAD = 255  # the LoRa PHY length field is one byte
LDRO_SYMBOL_TIME = 0.016  # Semtech: low-data-rate optimisation is mandated at >= 16 ms/symbol
MIN_BW_HZ = 7_800
MAX_BW_HZ = 1_625_000  # SX128x 2.4 GHz radios go this wide


@dataclass(frozen=True, slots=True)
class LoRaParams:
    """One LoRa modulation setting.

    ``cr`` is the coding-rate denominator: 5..8 means 4/5..4/8. ``ldro`` None means "auto":
    on when a symbol lasts 16 ms or more, as the radios' drivers do.
    """

    sf: int
    bw_hz: float
    cr: int = 5
    preamble: int = 8
    explicit_header: bool = True
    crc: bool = True
    ldro: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sf, bool) or not isinstance(self.sf, int) or not 5 <= self.sf <= 12:
            raise UsageError(f"LoRa spreading factor must be an integer 5..12, got {self.sf!r}")
        if (
            isinstance(self.bw_hz, bool)
            or not isinstance(self.bw_hz, int | float)
            or not MIN_BW_HZ <= self.bw_hz <= MAX_BW_HZ
        ):
            raise UsageError(
                f"LoRa bandwidth must be {MIN_BW_HZ}..{MAX_BW_HZ} Hz (e.g. 125000), "
                f"got {self.bw_hz!r}"
            )
        if isinstance(self.cr, bool) or not isinstance(self.cr, int) or not 5 <= self.cr <= 8:
            raise UsageError(f"LoRa coding rate must be 5..8 (meaning 4/5..4/8), got {self.cr!r}")
        if (
            isinstance(self.preamble, bool)
            or not isinstance(self.preamble, int)
            or not 6 <= self.preamble <= 65535
        ):
            raise UsageError(f"LoRa preamble must be 6..65535 symbols, got {self.preamble!r}")

    @property
    def symbol_time(self) -> float:
        """Seconds per LoRa symbol: 2^SF / BW."""
        return (1 << self.sf) / self.bw_hz

    @property
    def low_data_rate_optimize(self) -> bool:
        """Whether LDRO is in effect (explicit setting, or auto by symbol time)."""
        if self.ldro is not None:
            return self.ldro
        return self.symbol_time >= LDRO_SYMBOL_TIME

    @property
    def coding_rate(self) -> str:
        """The coding rate the way radio people write it, e.g. "4/5"."""
        return f"4/{self.cr}"

    def payload_symbols(self, payload_bytes: int) -> int:
        """Symbols after the preamble for ``payload_bytes`` of PHY payload (AN1200.13)."""
        if (
            isinstance(payload_bytes, bool)
            or not isinstance(payload_bytes, int)
            or not 0 <= payload_bytes <= MAX_PAYLOAD
        ):
            raise UsageError(f"LoRa payload must be 0..{MAX_PAYLOAD} bytes, got {payload_bytes!r}")
        de = 1 if self.low_data_rate_optimize else 0
        ih = 0 if self.explicit_header else 1
        numerator = 8 * payload_bytes - 4 * self.sf + 28 + 16 * int(self.crc) - 20 * ih
        blocks = max(math.ceil(numerator / (4 * (self.sf - 2 * de))), 0)
        return 8 + blocks * self.cr

    def time_on_air(self, payload_bytes: int) -> float:
        """Seconds one packet of ``payload_bytes`` PHY payload occupies the channel."""
        t_sym = self.symbol_time
        preamble = (self.preamble + 4.25) * t_sym
        return preamble + self.payload_symbols(payload_bytes) * t_sym
