"""The agent's counters in Prometheus' text format, on `--metrics-listen HOST:PORT`.

    ipam_dhcp4_messages_total{outcome}            offers, acks, naks, declines, withheld,
                                                  declines_over_limit, ... (DHCPv4)
    ipam_dhcp6_messages_total{outcome}            advertises, replies, ... (DHCPv6)
    ipam_ra_messages_total{interface, kind}       advertisements, solicitations, ...
    ipam_dns_messages_total{outcome}              answered, nxdomain, refused, ...
    ipam_dhcp_declined_addresses                  addresses withheld after a DECLINE, by any
                                                  agent, in the served networks (the view's)
    ipam_dhcp_view_revision                       etcd revision of the newest change applied
    ipam_dhcp_view_reloads_total                  loads of the view (1 + compactions, lost watches)

The counters live in the responders (no globals); a collector reads them at scrape
time, so a scrape costs nothing to the packets it does not coincide with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .agent import Agent

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class AgentCollector(Collector):
    """Reads an agent's counters when Prometheus scrapes."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        if agent.dhcp is not None:
            dhcp = CounterMetricFamily("ipam_dhcp4_messages", "DHCPv4 messages by outcome",
                                       labels=["outcome"])
            for outcome, n in agent.dhcp.counters.as_dict().items():
                dhcp.add_metric([outcome], n)
            yield dhcp
        if agent.dhcp6 is not None:
            dhcp6 = CounterMetricFamily("ipam_dhcp6_messages", "DHCPv6 messages by outcome",
                                        labels=["outcome"])
            for outcome, n in agent.dhcp6.counters.as_dict().items():
                dhcp6.add_metric([outcome], n)
            yield dhcp6
        if agent.advertisers:
            ra = CounterMetricFamily("ipam_ra_messages", "Router Advertisement work by kind",
                                     labels=["interface", "kind"])
            for advertiser in agent.advertisers:
                for kind, n in asdict(advertiser.counters).items():
                    ra.add_metric([advertiser.interface, kind], n)
            yield ra
        if agent.dns is not None:
            dns = CounterMetricFamily("ipam_dns_messages", "DNS messages by outcome",
                                      labels=["outcome"])
            for outcome, n in asdict(agent.dns.counters).items():
                dns.add_metric([outcome], n)
            yield dns
        if agent.view is not None:
            yield GaugeMetricFamily("ipam_dhcp_declined_addresses",
                                    "addresses withheld from the MACs that declined them",
                                    value=len(agent.view.declines()))
            yield GaugeMetricFamily("ipam_dhcp_view_revision",
                                    "etcd revision of the newest change in the agent's view",
                                    value=agent.view.revision)
            yield CounterMetricFamily("ipam_dhcp_view_reloads",
                                      "loads of the view (1 + compactions, lost watches)",
                                      value=agent.view.reloads)


def metrics_app(agent: Agent) -> web.Application:
    """An aiohttp application answering GET /metrics for `agent`."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
