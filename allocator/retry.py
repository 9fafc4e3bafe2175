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
    NETWORK_CREATES  a Private Network's create lost to another create of its project on
                     another node (each loss is another create committed): more tries
    BOOKING          one booking's candidates: losers pick again; also bounds the wait
                     for in-flight candidates and the exhaustion counts
    READ_BACK        after an unknown outcome, read back the token until etcd answers
    RELOAD           a source's cache whose watch died, loaded again with backoff
    WATCH_RESUME     a broken watch stream, re-created on another endpoint
"""

from __future__ import annotations

import asyncio
import time
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

    def attempts(self) -> _Attempts:
        """Yield 0, 1, 2, ... once per try, sleeping between tries, until the policy runs out."""
        return _Attempts(self)


class _Attempts:
    """The tries of one loop under a policy.

    A plain async iterator, not an async generator: a loop that returns early leaves
    nothing for the event loop to finalize (a generator would cost a task each time).
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.n = 0
        self.delay = policy.delay
        self.started = time.monotonic()

    def __aiter__(self) -> _Attempts:
        return self

    async def __anext__(self) -> int:
        p = self.policy
        n = self.n
        if p.max_attempts is not None and n >= p.max_attempts:
            raise StopAsyncIteration
        if n:
            if self.delay:
                await asyncio.sleep(self.delay)
                self.delay = min(self.delay * p.factor, p.max_delay or self.delay * p.factor)
            if p.deadline is not None and time.monotonic() - self.started > p.deadline:
                raise StopAsyncIteration
        self.n = n + 1
        return n


RACES = RetryPolicy("races", max_attempts=16)
NETWORK_RACES = RetryPolicy("network_races", max_attempts=8)
# One node's creates of a project take turns, so only the other nodes' (one each at a
# time) race it: lost 32 times running to two other nodes is (2/3)**32, about 2e-6.
NETWORK_CREATES = RetryPolicy("network_creates", max_attempts=32)
BOOKING = RetryPolicy("booking", max_attempts=200, deadline=30.0)
READ_BACK = RetryPolicy("read_back", max_attempts=5, delay=0.2, factor=2.5, max_delay=2.0)
RELOAD = RetryPolicy("reload", max_attempts=None, delay=0.05, factor=2.0, max_delay=2.0)
WATCH_RESUME = RetryPolicy("watch_resume", max_attempts=None, delay=0.05, factor=2.0,
                           max_delay=1.0)
