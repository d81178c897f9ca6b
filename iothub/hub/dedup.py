"""Per-device ``seq`` tracking: drop repeats (QoS 1 redelivery) and count gaps.

A sliding window of the last ``window`` seq numbers, kept as a bit mask (the anti-replay window of
IPsec, RFC 4303 3.4.3). Rules:

* ``seq`` above the highest seen: new; the numbers skipped over are counted as gaps.
* ``seq`` inside the window: new if its bit is clear (a late arrival; it fills one gap), else a repeat.
* ``seq`` 0, or older than the window: the device restarted its counter; start again from it.
"""

from __future__ import annotations


class SeqWindow:
    __slots__ = ("_full", "highest", "mask", "window")

    def __init__(self, window: int = 64, highest: int = -1) -> None:
        self.window = window
        self._full = (1 << window) - 1
        self.highest = highest
        self.mask = 1 if highest >= 0 else 0

    def accept(self, seq: int) -> tuple[bool, int]:
        """Return ``(is_new, gap_change)``; ``gap_change`` is added to the device's gap count."""
        if self.highest < 0 or seq == 0:
            self.highest, self.mask = seq, 1
            return True, 0
        if seq > self.highest:
            shift = seq - self.highest
            self.mask = 1 if shift >= self.window else ((self.mask << shift) | 1) & self._full
            self.highest = seq
            return True, shift - 1
        offset = self.highest - seq
        if offset >= self.window:
            self.highest, self.mask = seq, 1
            return True, 0
        bit = 1 << offset
        if self.mask & bit:
            return False, 0
        self.mask |= bit
        return True, -1
