"""Every retry of the allocator, as one named policy each: how often, how long, how far apart.

A loop that retries reads its policy by name instead of writing its own:

    async for _ in RACES.attempts():
        ...            # read, decide, commit guarded
        if committed:
            return result
    raise Conflict("...")  # the policy ran out

Policies are bounded in count and, where they sleep, in time. What each one is for:

    RACES            a guarded write lost to a concurrent change: read again, at once
    NETWORK_RACES    the same for VPCs, Private Networks and zonal pools (rare writers)
    BOOKING          one booking's candidates: losers pick again; also bounds the wait
                     for in-flight candidates and the exhaustion counts
    READ_BACK        after an unknown outcome, read back the token until etcd answers
    RELOAD           a source's cache whose watch died, loaded again with backoff
    WATCH_RESUME     a broken watch stream, re-created on another endpoint
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """At most `max_attempts` tries within `deadline` seconds, `delay` apart, growing by
    `factor` up to `max_delay`.

    The first try never waits. `max_attempts=None` is for loops that must go on for as long
    as their owner lives (a watch); they are still paced by the delay.
    """

    name: str
    max_attempts: int | None
    delay: float = 0.0
    factor: float = 1.0
    max_delay: float = 0.0
    deadline: float | None = None

    async def attempts(self) -> AsyncIterator[int]:
        """Yield 0, 1, 2, ... once per try, sleeping between tries, until the policy runs out."""
        started = time.monotonic()
        delay = self.delay
        n = 0
        while self.max_attempts is None or n < self.max_attempts:
            if n and delay:
                await asyncio.sleep(delay)
                delay = min(delay * self.factor, self.max_delay) if self.max_delay else delay
            if n and self.deadline is not None and time.monotonic() - started > self.deadline:
                return
            yield n
            n += 1


RACES = RetryPolicy("races", max_attempts=16)
NETWORK_RACES = RetryPolicy("network_races", max_attempts=8)
BOOKING = RetryPolicy("booking", max_attempts=200, deadline=30.0)
READ_BACK = RetryPolicy("read_back", max_attempts=5, delay=0.2, factor=2.5, max_delay=2.0)
RELOAD = RetryPolicy("reload", max_attempts=None, delay=0.05, factor=2.0, max_delay=2.0)
WATCH_RESUME = RetryPolicy("watch_resume", max_attempts=None, delay=0.05, factor=2.0,
                           max_delay=1.0)
