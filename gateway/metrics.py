"""Prometheus metrics of one gateway node, `GET /metrics` (text format, prometheus_client).

Each application has its own registry (no process globals: two nodes in one test process
do not mix their figures). What is counted where it happens: HTTP requests (by route
template, method and status) and the etcd requests of the group committer (an observer
the allocator calls, `allocator.contract.CommitObserver`). What is read at scrape time:
the allocator's booking counters, the free and held addresses of the sources this node
books in, etcd's endpoints, the node's availability, and etcd's database size against its
quota (`gateway.storage_guard`: a scrape waits for it at most `SCRAPE_WAIT`, and shares
the guard's answer, kept a few seconds). A node serving several regions on their own etcd
clusters (`gateway.context.Cluster`) describes every cluster: counters and source gauges
summed or listed over all of them, endpoints by their own names, and what a cluster has
one of (its gate, its elected compactor and expirer) labelled `regions`, the regions of
that cluster joined by commas (`fr-par`, or `fr-par,nl-ams` for regions sharing one).

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
    ipam_etcd_available{regions}                       1 while a quorum answers this node
    ipam_etcd_db_size_bytes{endpoint},                 each answering member's backend file,
    ipam_etcd_db_size_in_use_bytes{endpoint}           and the bytes of it holding data
    ipam_etcd_quota_backend_bytes                      --etcd-quota-backend-bytes
    ipam_etcd_db_quota_used_ratio{endpoint}            db size / quota (NOSPACE near 1.0)
    ipam_etcd_alarm{endpoint,alarm}                    1 while the alarm is raised, else 0
    ipam_compactor_leader, ipam_compactions_total,     the elected compactor of etcd's history,
    ipam_compaction_errors_total, ipam_compacted_revision   each {regions}
    ipam_expirer_leader, ipam_expired_ips_total,       the elected releaser of expired IPs,
    ipam_expiry_kept_total, ipam_expiry_errors_total,  each {regions}
    ipam_expiry_lag_seconds
    ipam_build_info{version}                           1
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from importlib import metadata
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from allocator.contract import IPAM, Compactor, Expirer

from .availability import Availability
from .context import CLUSTERS_KEY, Cluster
from .logs import route_of
from .storage_guard import KNOWN_ALARMS, SCRAPE_WAIT, StorageGuard
from .wire import Raw, endpoint

MAX_SOURCE_SERIES = 50
MetricFamily = CounterMetricFamily | GaugeMetricFamily
T = TypeVar("T")
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
        # The children of one route, method and status, found once: prometheus_client's
        # `labels` checks and locks on every call (a tenth of a /healthz's CPU).
        self._answered: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        r.register(_AllocatorCollector(ipam, self))
        ipam.observe_commits(self)

    def answered(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request answered: counted and timed under its labels."""
        children = self._answered.get((route, method, status))
        if children is None:  # bounded: route templates x `_METHODS` x statuses
            children = self._answered[route, method, status] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method))
        children[0].inc()
        children[1].observe(seconds)

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

    def collect(self) -> Iterator[MetricFamily]:
        app = self.metrics.app
        clusters = app[CLUSTERS_KEY].all if app is not None else ()
        ipams = [c.ipam for c in clusters] or [self.ipam]
        stats = [s for ipam in ipams for s in ipam.engine_stats().values()]
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
        usage = sorted((u for ipam in ipams for u in ipam.source_usage()),
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
        for ipam in ipams:
            for address, in_use in ipam.endpoints_in_use():
                up.add_metric([address], 1.0 if in_use else 0.0)
        yield up
        if clusters:
            yield from _cluster_families(clusters)
        info = GaugeMetricFamily("ipam_build_info", "The running version", labels=["version"])
        info.add_metric([_version()], 1.0)
        yield info


# What a cluster has one of, as series: (kind, name, help, its value).
_GATE_SERIES: tuple[tuple[type[MetricFamily], str, str, Callable[[Availability], float]],
                    ...] = (
    (GaugeMetricFamily, "ipam_etcd_available", "1 while a quorum of etcd answers this node",
     lambda a: float(a.available)),)
# Its elected upkeep, when this node runs it.
_COMPACTOR_SERIES: tuple[tuple[type[MetricFamily], str, str, Callable[[Compactor], float]],
                         ...] = (
    (GaugeMetricFamily, "ipam_compactor_leader",
     "1 while this node is the one compacting etcd", lambda k: float(k.leader)),
    (CounterMetricFamily, "ipam_compactions", "compactions done by this node",
     lambda k: k.compactions),
    (CounterMetricFamily, "ipam_compaction_errors", "compactions that failed on this node",
     lambda k: k.errors),
    (GaugeMetricFamily, "ipam_compacted_revision",
     "the revision this node last compacted etcd to", lambda k: k.compacted_revision))
_EXPIRER_SERIES: tuple[tuple[type[MetricFamily], str, str, Callable[[Expirer], float]],
                       ...] = (
    (GaugeMetricFamily, "ipam_expirer_leader",
     "1 while this node is the one releasing expired IPs", lambda x: float(x.leader)),
    (CounterMetricFamily, "ipam_expired_ips", "IPs this node released when they expired",
     lambda x: x.expired),
    (CounterMetricFamily, "ipam_expiry_kept", ("due IPs kept: attached, given another "
     "expiry or released before their expiry's release committed"), lambda x: x.kept),
    (CounterMetricFamily, "ipam_expiry_errors", ("looks for expired IPs, and releases of "
     "them, that failed on this node"), lambda x: x.errors),
    (GaugeMetricFamily, "ipam_expiry_lag_seconds",
     "from the expiry of the last IP this node released to its release",
     lambda x: x.last_lag))


def _cluster_families(clusters: Sequence[Cluster]) -> Iterator[MetricFamily]:
    """What each etcd cluster has one of: its gate, its elected upkeep (when this node
    runs it), its storage guard; a cluster's series labelled with its `regions`."""
    yield from _per_cluster(_GATE_SERIES, [(c, c.availability) for c in clusters])
    yield from _per_cluster(_COMPACTOR_SERIES,
                            [(c, c.compactor) for c in clusters if c.compactor])
    yield from _per_cluster(_EXPIRER_SERIES, [(c, c.expirer) for c in clusters if c.expirer])
    guards = [c.guard for c in clusters if c.guard is not None]
    if guards:
        yield from _storage_families(guards)


def _per_cluster(series: Sequence[tuple[type[MetricFamily], str, str, Callable[[T], float]]],
                 owners: Sequence[tuple[Cluster, T]]) -> Iterator[MetricFamily]:
    """One family per series, one sample per owner labelled with its cluster's regions
    (comma-joined); none when no cluster has one here."""
    for kind, name, doc, value in series if owners else ():
        family = kind(name, doc, labels=["regions"])
        for cluster, owner in owners:
            family.add_metric([",".join(cluster.regions)], value(owner))
        yield family


def _storage_families(guards: Sequence[StorageGuard]) -> Iterator[GaugeMetricFamily]:
    """etcd's database size against its quota, as each cluster's guard last read it: a
    member that did not answer has no series (unknown, not zero)."""
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
    for u in (u for guard in guards for u in guard.last):
        size.add_metric([u.endpoint], u.db_size)
        in_use.add_metric([u.endpoint], u.db_size_in_use)
        ratio.add_metric([u.endpoint], u.used)
        for name in sorted(set(KNOWN_ALARMS) | set(u.alarms)):
            alarm.add_metric([u.endpoint, name], 1.0 if name in u.alarms else 0.0)
    yield size
    yield in_use
    yield GaugeMetricFamily("ipam_etcd_quota_backend_bytes",
                            "The etcd backend quota this node was given "
                            "(--etcd-quota-backend-bytes)", value=guards[0].quota)
    yield ratio
    yield alarm


METRICS = web.AppKey("metrics", GatewayMetrics)


@endpoint(media_type=CONTENT_TYPE_LATEST)
async def metrics_endpoint(request: web.Request) -> Raw:
    """The node's figures in Prometheus text format."""
    # The collector reads each guard's answer: refresh them first, bounded.
    await asyncio.gather(*(c.guard.usage(wait=SCRAPE_WAIT)
                           for c in request.app[CLUSTERS_KEY].all if c.guard is not None))
    return Raw(request.app[METRICS].scrape(), CONTENT_TYPE_LATEST)


# The methods a label may name; any other (aiohttp's parser knows some forty, WebDAV's
# among them, and answers 400 to the rest) is `other`, not a series of its own.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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
        method = request.method if request.method in _METHODS else "other"
        request.app[METRICS].answered(route_of(request), method, status,
                                      time.perf_counter() - started)
