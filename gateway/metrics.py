"""Prometheus metrics of one gateway node, `GET /metrics` (text format, prometheus_client).

Each application has its own registry (no process globals: two nodes in one test process
do not mix their figures). What is counted where it happens: HTTP requests (by route
template, method and status) and the etcd requests of the group committer (an observer
the allocator calls, `allocator.contract.CommitObserver`). What is read at scrape time:
the allocator's booking counters, the free and held addresses of the sources this node
books in, etcd's endpoints, the node's availability, and etcd's database size against its
quota (`gateway.storage_guard`: a scrape waits for it at most `SCRAPE_WAIT`, and shares
the guard's answer, kept a few seconds).

    ipam_http_requests_total{route,method,status}      counter
    ipam_http_request_duration_seconds{route,method}   histogram
    ipam_bookings_total, ipam_booking_retries_total,   counters (this node, all sources)
    ipam_bookings_exhausted_total, ipam_unknown_outcomes_total
    ipam_commit_batch_size                             histogram: bookings/changes per request
    ipam_etcd_txn_duration_seconds                     histogram: one committer request
    ipam_etcd_txn_failures_total                       counter
    ipam_source_free{source,kind}, ipam_source_held{source,kind}
        gauges, the MAX_SOURCE_SERIES fullest sources by name, the rest summed in
        source="_other" (bounded cardinality with thousands of Private Networks)
    ipam_etcd_endpoint_up{endpoint}                    1 unless the node put it out of use
    ipam_etcd_available                                1 while a quorum answers this node
    ipam_etcd_db_size_bytes{endpoint},                 each answering member's backend file,
    ipam_etcd_db_size_in_use_bytes{endpoint}           and the bytes of it holding data
    ipam_etcd_quota_backend_bytes                      --etcd-quota-backend-bytes
    ipam_etcd_db_quota_used_ratio{endpoint}            db size / quota (NOSPACE near 1.0)
    ipam_etcd_alarm{endpoint,alarm}                    1 while the alarm is raised, else 0
    ipam_compactor_leader, ipam_compactions_total,     the elected compactor of etcd's history
    ipam_compaction_errors_total, ipam_compacted_revision
    ipam_expirer_leader, ipam_expired_ips_total,       the elected releaser of expired IPs
    ipam_expiry_kept_total, ipam_expiry_errors_total,
    ipam_expiry_lag_seconds
    ipam_build_info{version}                           1
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from importlib import metadata

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from allocator.contract import IPAM, Compactor, Expirer

from .availability import AVAILABILITY
from .logs import route_of
from .storage_guard import KNOWN_ALARMS, SCRAPE_WAIT, STORAGE_GUARD, StorageGuard
from .wire import Raw, endpoint

MAX_SOURCE_SERIES = 50
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _version() -> str:
    try:
        return metadata.version("ipam")
    except metadata.PackageNotFoundError:
        return "unknown"


class GatewayMetrics:
    """The node's registry and the metrics updated as things happen."""

    def __init__(self, ipam: IPAM) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ipam_http_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("ipam_http_request_duration_seconds",
                                 "Time to answer an HTTP request", ["route", "method"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("ipam_commit_batch_size",
                               "Transactions (bookings, changes) carried by one etcd request",
                               buckets=_BATCH_BUCKETS, registry=r)
        self.txn_latency = Histogram("ipam_etcd_txn_duration_seconds",
                                     "Time of one etcd request of the group committer",
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.txn_failures = Counter("ipam_etcd_txn_failures",
                                    "etcd requests of the committer that failed", registry=r)
        self.app: web.Application | None = None
        r.register(_AllocatorCollector(ipam, self))
        ipam.observe_commits(self)

    def committed(self, transactions: int, seconds: float, failed: bool) -> None:
        """`allocator.contract.CommitObserver`: one committer request went out."""
        self.batch.observe(transactions)
        self.txn_latency.observe(seconds)
        if failed:
            self.txn_failures.inc()

    def scrape(self) -> bytes:
        return generate_latest(self.registry)


class _AllocatorCollector(Collector):
    """What is read at scrape time (see the module docstring)."""

    def __init__(self, ipam: IPAM, metrics: GatewayMetrics) -> None:
        self.ipam, self.metrics = ipam, metrics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = list(self.ipam.engine_stats().values())
        for name, attr, doc in (
                ("ipam_bookings", "bookings", "IPs booked by this node"),
                ("ipam_booking_retries", "retries",
                 "bookings tried again after losing a race for an address"),
                ("ipam_bookings_exhausted", "exhausted",
                 "bookings answered that the source is full"),
                ("ipam_unknown_outcomes", "unknown_outcomes",
                 "commits whose outcome was read back from etcd")):
            yield CounterMetricFamily(name, doc, value=sum(getattr(s, attr) for s in stats))
        free = GaugeMetricFamily("ipam_source_free", "Free addresses of a source",
                                 labels=["source", "kind"])
        held = GaugeMetricFamily("ipam_source_held", "Booked addresses of a source",
                                 labels=["source", "kind"])
        usage = sorted(self.ipam.source_usage(),
                       key=lambda u: (u.bookable - u.free) / max(u.bookable, 1), reverse=True)
        for u in usage[:MAX_SOURCE_SERIES]:
            free.add_metric([u.source_id, u.kind], u.free)
            held.add_metric([u.source_id, u.kind], u.bookable - u.free)
        if len(usage) > MAX_SOURCE_SERIES:
            rest = usage[MAX_SOURCE_SERIES:]
            free.add_metric(["_other", "mixed"], sum(u.free for u in rest))
            held.add_metric(["_other", "mixed"], sum(u.bookable - u.free for u in rest))
        yield free
        yield held
        up = GaugeMetricFamily("ipam_etcd_endpoint_up",
                               "1 unless this node put the etcd endpoint out of use",
                               labels=["endpoint"])
        for endpoint, in_use in self.ipam.endpoints_in_use():
            up.add_metric([endpoint], 1.0 if in_use else 0.0)
        yield up
        app = self.metrics.app
        if app is not None:
            yield GaugeMetricFamily("ipam_etcd_available",
                                    "1 while a quorum of etcd answers this node",
                                    value=1.0 if app[AVAILABILITY].available else 0.0)
            compactor = app.get(COMPACTOR)
            if compactor is not None:
                yield GaugeMetricFamily("ipam_compactor_leader",
                                        "1 while this node is the one compacting etcd",
                                        value=1.0 if compactor.leader else 0.0)
                yield CounterMetricFamily("ipam_compactions", "compactions done by this node",
                                          value=compactor.compactions)
                yield CounterMetricFamily("ipam_compaction_errors",
                                          "compactions that failed on this node",
                                          value=compactor.errors)
                yield GaugeMetricFamily("ipam_compacted_revision",
                                        "the revision this node last compacted etcd to",
                                        value=compactor.compacted_revision)
            expirer = app.get(EXPIRER)
            if expirer is not None:
                yield GaugeMetricFamily("ipam_expirer_leader",
                                        "1 while this node is the one releasing expired IPs",
                                        value=1.0 if expirer.leader else 0.0)
                yield CounterMetricFamily("ipam_expired_ips",
                                          "IPs this node released when they expired",
                                          value=expirer.expired)
                yield CounterMetricFamily("ipam_expiry_kept",
                                          "due IPs kept: attached, given another expiry or "
                                          "released before their expiry's release committed",
                                          value=expirer.kept)
                yield CounterMetricFamily("ipam_expiry_errors",
                                          "looks for expired IPs, and releases of them, that "
                                          "failed on this node", value=expirer.errors)
                yield GaugeMetricFamily("ipam_expiry_lag_seconds",
                                        "from the expiry of the last IP this node released "
                                        "to its release", value=expirer.last_lag)
            guard = app.get(STORAGE_GUARD)
            if guard is not None:
                yield from _storage_families(guard)
        info = GaugeMetricFamily("ipam_build_info", "The running version", labels=["version"])
        info.add_metric([_version()], 1.0)
        yield info


def _storage_families(guard: StorageGuard) -> Iterator[GaugeMetricFamily]:
    """etcd's database size against its quota, as the guard last read it: a member that
    did not answer has no series (unknown, not zero)."""
    size = GaugeMetricFamily("ipam_etcd_db_size_bytes",
                             "Size of an etcd member's backend file: what etcd compares "
                             "with its quota", labels=["endpoint"])
    in_use = GaugeMetricFamily("ipam_etcd_db_size_in_use_bytes",
                               "Bytes of an etcd member's backend holding data; the rest "
                               "is free pages a defragmentation gives back",
                               labels=["endpoint"])
    ratio = GaugeMetricFamily("ipam_etcd_db_quota_used_ratio",
                              "An etcd member's backend size over the quota: changes are "
                              "refused (NOSPACE) near 1", labels=["endpoint"])
    alarm = GaugeMetricFamily("ipam_etcd_alarm", "1 while the etcd alarm is raised on the "
                              "member", labels=["endpoint", "alarm"])
    for u in guard.last:
        size.add_metric([u.endpoint], u.db_size)
        in_use.add_metric([u.endpoint], u.db_size_in_use)
        ratio.add_metric([u.endpoint], u.used)
        for name in sorted(set(KNOWN_ALARMS) | set(u.alarms)):
            alarm.add_metric([u.endpoint, name], 1.0 if name in u.alarms else 0.0)
    yield size
    yield in_use
    yield GaugeMetricFamily("ipam_etcd_quota_backend_bytes",
                            "The etcd backend quota this node was given "
                            "(--etcd-quota-backend-bytes)", value=guard.quota)
    yield ratio
    yield alarm


METRICS = web.AppKey("metrics", GatewayMetrics)
COMPACTOR = web.AppKey("compactor", Compactor)
EXPIRER = web.AppKey("expirer", Expirer)


@endpoint(media_type=CONTENT_TYPE_LATEST)
async def metrics_endpoint(request: web.Request) -> Raw:
    """The node's figures in Prometheus text format."""
    guard = request.app.get(STORAGE_GUARD)
    if guard is not None:  # the collector reads its answer: refresh it first, bounded
        await guard.usage(wait=SCRAPE_WAIT)
    return Raw(request.app[METRICS].scrape(), CONTENT_TYPE_LATEST)


@web.middleware
async def metrics_middleware(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Count and time every request by route template, method and final status."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics = request.app[METRICS]
        route = route_of(request)
        metrics.requests.labels(route, request.method, str(status)).inc()
        metrics.latency.labels(route, request.method).observe(time.perf_counter() - started)
