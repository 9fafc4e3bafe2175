"""Whether this node can serve: etcd reachable, start-up steps done. The gate of the API.

A node serves HTTP before etcd answers: an orchestrator sees it alive (`/healthz` 200)
and not ready (`/readyz` 503), while the node keeps trying etcd with a capped exponential
backoff and logs each attempt in one line. Once a quorum answers, it runs its start-up
steps (loading the API keys, ...) and becomes ready. Every API request meanwhile gets
a prompt 503 `service_unavailable` saying why, instead of a traceback, a crash loop, or
a request hanging on etcd's deadlines.

A node serving several regions on their own etcd clusters has one gate per cluster
(`gateway.context.Cluster`): a request is judged by the gate of its region's cluster,
so one region's outage answers 503 on its paths only.

A step may find the node must not serve at all (etcd holds a newer schema, a restore is
unfinished): it raises one of the `fatal` errors, the node stays unavailable and
`failure` says why; `ipam serve` then exits with that message.

The same after a total etcd outage while running. Once started the node sends a quorum
probe (a linearizable read) every `PROBE_INTERVAL` and lets each run up to `PROBE_DEADLINE`,
overlapping the next ones; the gate closes when no probe has been answered for `SILENCE`
seconds, and opens again at the first answer. API requests are then answered 503 at once
until a probe is answered again (the node recovers by itself). Requests already in flight
are answered the same 503 then, instead of keeping their own deadlines: a booking retries
etcd for up to 30 s (`retry.BOOKING`), and a node cut off from every member held its
requests until the heal (measured: 10 s, with /readyz already 503;
tests/devcluster/test_partitions.py). The 503 says the outcome is unknown, which it is:
the client retries with its Idempotency-Key.

Why silence and not slowness: the gate used to close after two probes in a row went
unanswered for 1 s each. With the leader's links 200 ms each way, a linearizable read
crosses the slow links several times (to the leader, its heartbeat round to confirm it
leads, back): the probes failed while the cluster kept committing (bookings answered in
1.3 to 2.2 s at the median), the gate closed, and the node answered 503 to everything
for seconds (tests/devcluster/test_slow_members.py: windows of 6 s without a booking). A
probe answered late is evidence that a quorum answers; only none answered at all is
evidence it does not. So is any other answer that took a quorum (a booking committed, a
linearizable read: `IPAM.quorum_answered_at`): on a saturated machine (load 20 on 2
cores, the booking bench under CPU hogs) every probe of a 2 s window went unanswered
while bookings were still being committed, and the gate answered 503 to 252 requests in
flight; now it stays open while anything is answered. Probes are sent every second
whatever the previous one does, so a cluster that answers reads within `PROBE_DEADLINE`
keeps the gate open however slow it is, while a node cut off from every member hears
nothing: its last answer came before the cut, and the first tick `SILENCE` after it
closes the gate, so a request on a node cut off is answered within SILENCE +
PROBE_INTERVAL (3 s) of the cut (measured: 2.75 s). A probe that fails fast (every
member refusing connections) gives its error as the reason, but closes the gate no
sooner: one refused read is not yet an outage. Start-up gives its read the same
`PROBE_DEADLINE`: a slow cluster must be able to start a node too.

    STARTING --quorum + steps--> AVAILABLE --SILENCE, nothing answered--> UNAVAILABLE
    UNAVAILABLE --a probe answered--> AVAILABLE
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from allocator.contract import IPAM

from .errors import ApiError
from .models.errors import ServiceUnavailable

log = logging.getLogger("ipam")

PROBE_INTERVAL = 1.0  # seconds between quorum probes once started
PROBE_DEADLINE = 3.0  # a probe read unanswered this long is given up (etcd's deadline)
SILENCE = 2.0  # seconds without a probe answered before the node says etcd is unavailable
FIRST_RETRY, MAX_RETRY = 0.5, 10.0  # the start-up backoff: doubling, capped
# Paths answered whatever etcd does: the probes, and what describes the API.
UNGATED = frozenset({"/healthz", "/readyz", "/openapi.json", "/metrics"})
UNGATED_PREFIXES = ("/docs",)

Step = Callable[[], Awaitable[object]]


class State(enum.Enum):
    STARTING = "starting"
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"


class Availability:
    """The node's state, kept by one background task (see the module docstring)."""

    def __init__(self, ipam: IPAM, steps: Sequence[Step] = (), *,
                 fatal: tuple[type[Exception], ...] = (),
                 first_retry: float = FIRST_RETRY, max_retry: float = MAX_RETRY,
                 probe_interval: float = PROBE_INTERVAL, silence: float = SILENCE,
                 name: str | None = None) -> None:
        self.ipam = ipam
        # The regions of its cluster, when a node has several: messages name them.
        self.etcd = f"etcd of {name}" if name else "etcd"
        self.steps = list(steps)
        self.fatal = fatal
        self.failure: Exception | None = None  # a fatal error of a step: the node stops
        self.first_retry, self.max_retry = first_retry, max_retry
        self.probe_interval, self.silence = probe_interval, silence
        self.answered_at = 0.0  # time.monotonic() of the latest probe answered
        self.probes_answered = 0  # since the start: each one kept the gate open
        self._problem: str | None = None  # why the latest probe failed, if after that answer
        self.state = State.STARTING
        self.attempts = 0  # start-up attempts so far
        self.reason = "etcd not asked yet"
        self.since = time.monotonic()
        self._ready = asyncio.Event()
        self._failed = asyncio.Event()
        self._changed = asyncio.Event()  # replaced at each change of state
        self._task: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[None]] = set()  # probes not answered yet
        self._serving: set[asyncio.Task[object]] = set()  # tasks running a gated request
        self._refused: set[asyncio.Task[object]] = set()  # those cancelled to answer 503

    @property
    def available(self) -> bool:
        return self.state is State.AVAILABLE

    @property
    def in_flight(self) -> int:
        """Gated requests being served now."""
        return len(self._serving)

    def start(self) -> None:
        """Begin (in the background): connect, run the steps, then watch the quorum."""
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._probes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_ready(self, timeout: float | None) -> bool:
        """Wait (at most `timeout` s; None: as long as it takes) until the node first
        became available."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_failed(self) -> Exception:
        """Wait until a start-up step failed for good; its error."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    async def changed(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) for the next change of state; whether one came."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def refusal(self) -> ApiError:
        """The 503 an API request gets while the node is not available."""
        if self.failure is not None:
            message = f"the node cannot serve: {self.failure}"
        elif self.state is State.STARTING:
            message = (f"the node is starting: {self.etcd} not reachable yet (attempt "
                       f"{self.attempts}: {self.reason})")
        else:
            message = (f"{self.etcd} has been unreachable for "
                       f"{time.monotonic() - self.since:.0f}s "
                       f"({self.reason}); retry later")
        return ApiError(503, ServiceUnavailable(message=message), {"Retry-After": "1"})

    async def serve(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                    request: web.Request) -> web.StreamResponse:
        """Run `handler` for a gated request; if the node becomes unavailable meanwhile,
        stop it there and answer the 503 (`refusal`) at once."""
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            if task not in self._refused or task.cancelling() > 1:
                raise  # cancelled by someone else too (the client went away, shutdown)
            task.uncancel()
            raise self.refusal() from None
        finally:
            self._serving.discard(task)
            self._refused.discard(task)

    def _refuse_in_flight(self) -> None:
        # Each task is suspended inside `serve`'s handler (this runs in another task), so
        # the cancellation lands there and `serve` turns it into the 503.
        for task in self._serving - self._refused:
            self._refused.add(task)
            task.cancel()

    # -- the background task ------------------------------------------------------------

    async def _run(self) -> None:
        await self._start_up()
        if self.failure is not None:
            return
        while True:  # ends with the node (cancelled by close)
            await asyncio.sleep(self.probe_interval)
            self._judge()
            # Not awaited: a slow answer must not hold back the next probe (see above).
            probe = asyncio.ensure_future(self._probe())
            self._probes.add(probe)
            probe.add_done_callback(self._probes.discard)

    async def _start_up(self) -> None:
        delay = self.first_retry
        done = 0  # steps that succeeded: a retry resumes at the one that failed
        while True:  # ends when etcd answers and every step succeeded; retried forever
            self.attempts += 1
            try:
                problem = await self.ipam.quorum_problem(PROBE_DEADLINE)
                if problem is None:
                    for step in self.steps[done:]:
                        await step()
                        done += 1
            except self.fatal as err:
                self.failure, self.reason = err, str(err)
                log.error("cannot serve: %s", err)
                self._failed.set()
                return
            except Exception as err:  # noqa: BLE001 - any other failure is retried, and logged
                problem = f"{type(err).__name__}: {err}"
            if problem is None:
                self.answered_at = time.monotonic()  # the steps' reads were answers too
                self._become(State.AVAILABLE, "a quorum answers")
                log.info("%s reachable after %d attempt(s): serving", self.etcd,
                         self.attempts)
                self._ready.set()
                return
            self.reason = problem
            log.warning("%s not reachable (attempt %d): %s; next try in %.1fs",
                        self.etcd, self.attempts, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_retry)

    async def _probe(self) -> None:
        try:
            problem = await self.ipam.quorum_problem(PROBE_DEADLINE)
        except Exception as err:  # noqa: BLE001 - a task of its own: nobody else would see it
            problem = f"{type(err).__name__}: {err}"
        if problem is not None:
            self._problem = problem
            if self.state is State.UNAVAILABLE:
                self.reason = problem  # what the 503s say: the latest word
            self._judge()
            return
        self.answered_at, self._problem = time.monotonic(), None
        self.probes_answered += 1
        if self.state is State.UNAVAILABLE:
            log.info("%s reachable again after %.1fs: serving", self.etcd,
                     time.monotonic() - self.since)
            self._become(State.AVAILABLE, "a quorum answers")

    def _judge(self) -> None:
        """Close the gate if etcd answered nothing that took a quorum, probe or other
        call, for `silence` seconds."""
        silent = time.monotonic() - max(self.answered_at, self.ipam.quorum_answered_at)
        if self.state is not State.AVAILABLE or silent < self.silence:
            return
        reason = self._problem or f"no answer to a quorum read for {silent:.1f}s"
        log.error("%s unreachable (%s): answering 503 until it is back, %d request(s) "
                  "in flight included", self.etcd, reason, self.in_flight)
        self._become(State.UNAVAILABLE, reason)
        self._refuse_in_flight()

    def _become(self, state: State, reason: str) -> None:
        self.state, self.reason, self.since = state, reason, time.monotonic()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


AVAILABILITY = web.AppKey("availability", Availability)
# The gate of the request's cluster, set before this middleware runs
# (`gateway.context.cluster_middleware`).
REQUEST_GATE = web.RequestKey("gate", Availability)


def is_gated(path: str) -> bool:
    return path not in UNGATED and not path.startswith(UNGATED_PREFIXES)


@web.middleware
async def availability_middleware(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Answer API requests 503 at once while the node is starting or etcd is down, and
    those in flight when etcd goes."""
    if not is_gated(request.path):
        return await handler(request)
    # The gate of the request's region's cluster: another region's outage leaves it open.
    availability = request[REQUEST_GATE]
    if not availability.available:
        raise availability.refusal()
    return await availability.serve(handler, request)
