"""Progress of long steps: count, rate and ETA, to the log (and so to the rule's log file)."""

from __future__ import annotations

import logging
import time


class Progress:
    """Callable ``progress(done, total)`` that logs rate and ETA at most every ``every`` s.

    The first call, and the call with ``done == total``, always log.
    """

    def __init__(self, what: str, logger: logging.Logger | None = None, every: float = 5.0,
                 unit: str = "items"):
        self.what, self.unit, self.every = what, unit, every
        self.log = logger or logging.getLogger("specbridge.progress")
        self.t0 = time.monotonic()
        self.last = -float("inf")

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every and done < total:
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else float("inf")
        self.log.info("%s: %d/%d %s (%.1f%%), %.1f %s/s, elapsed %.0f s, ETA %.0f s",
                      self.what, done, total, self.unit, 100.0 * done / max(total, 1), rate,
                      self.unit, elapsed, eta)
