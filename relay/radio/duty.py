"""A sliding-window airtime budget (regulatory duty cycle), shared by the simulated radio and
the bridge's pacer.

Each transmission counts against the window until its end leaves it. A running total keeps
``used`` O(1) amortised: a long-running bridge sends thousands of packets an hour, and
re-summing them per packet made its cost grow the longer it ran.
"""

from __future__ import annotations

from collections import deque

_EPS = 1e-9


class AirtimeWindow:
    def __init__(self, window: float) -> None:
        self.window = window
        self._log: deque[tuple[float, float]] = deque()  # (end, airtime) per transmission
        self._total = 0.0

    def add(self, end: float, airtime: float) -> None:
        self._log.append((end, airtime))
        self._total += airtime

    def used(self, now: float) -> float:
        """Airtime counted against the budget in the window ending at ``now``."""
        horizon = now - self.window + 1e-6
        log = self._log
        while log and log[0][0] <= horizon:
            self._total -= log.popleft()[1]
        if not log:
            self._total = 0.0  # no float drift survives an empty window
        return max(0.0, self._total)

    def fits_at(self, now: float, airtime: float, budget: float) -> float:
        """Earliest time >= ``now`` at which ``airtime`` more fits the budget
        (``inf`` if it never can: more than the whole budget)."""
        used = self.used(now)
        if used + airtime <= budget + _EPS:
            return now
        for end, spent in self._log:
            used -= spent
            if used + airtime <= budget + _EPS:
                return end + self.window
        return float("inf")

    def clear(self) -> None:
        self._log.clear()
        self._total = 0.0
