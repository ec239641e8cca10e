# SPDX-License-Identifier: Apache-2.0
"""Stop strings matched on decoded text, so they may span token boundaries.

Text is fed in deltas (what a streaming detokeniser produces). Anything that could still be the
beginning of a stop string is held back until the next delta decides it, so a consumer that
shows only what `push` returns never shows (part of) a stop string. The stop string itself is
never emitted, as in the OpenAI API and vLLM.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class StopHit:
    """A completed stop string: which one, and where it starts in the full generated text."""

    stop: str
    position: int


class StopStrings:
    """Incremental multi-string matcher.

        ss = StopStrings(["\\nUser:", "</s>"])
        for delta in deltas:
            out = ss.push(delta)   # text safe to show now (may be '')
            show(out)
            if ss.hit: break       # ss.hit.stop / ss.hit.position
        show(ss.flush())           # at the end of generation: the held-back tail (if no hit)

    Invariant: the held-back buffer is the longest suffix of the unshown text that is a proper
    prefix of some stop string. A stop string that completes later must therefore start inside
    that buffer, so matching only the buffer plus the new delta finds every occurrence, and the
    earliest-starting one wins (ties: the longer string, which contains the shorter's start).
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self._max = max((len(s) for s in self.stops), default=0)
        self._held = ""
        self.emitted = 0  # characters handed out so far
        self.hit: StopHit | None = None

    def __bool__(self) -> bool:
        return bool(self.stops)

    @property
    def held(self) -> str:
        """Text received but not yet released (could start a stop string)."""
        return self._held

    def push(self, delta: str) -> str:
        """Feed new text; return the part now safe to emit. After a hit, returns '' forever."""
        if self.hit is not None:
            return ""
        buf = self._held + delta
        if not self.stops:
            self.emitted += len(buf)
            self._held = ""
            return buf
        best: tuple[int, int, str] | None = None  # (start, -len, stop)
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (best is None or (i, -len(s)) < best[:2]):
                best = (i, -len(s), s)
        if best is not None:
            start, _, s = best
            out = buf[:start]
            self.hit = StopHit(s, self.emitted + start)
            self.emitted += len(out)
            self._held = ""
            return out
        keep = self._partial_suffix(buf)
        out = buf[: len(buf) - keep]
        self._held = buf[len(buf) - keep:]
        self.emitted += len(out)
        return out

    def flush(self) -> str:
        """Generation ended without a hit: release what was held back."""
        if self.hit is not None:
            return ""
        out, self._held = self._held, ""
        self.emitted += len(out)
        return out

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of a stop string."""
        for n in range(min(len(buf), self._max - 1), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0


def truncate_at_stop(text: str, stops: Iterable[str]) -> tuple[str, str | None]:
    """Cut a finished text before the earliest stop string: (text, matched stop or None)."""
    ss = StopStrings(stops)
    out = ss.push(text)
    if ss.hit is None:
        out += ss.flush()
    return out, (ss.hit.stop if ss.hit else None)
