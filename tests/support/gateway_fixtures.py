"""Gateway nodes for tests: each runs in its own thread and event loop on 127.0.0.1.

The official SDK is synchronous (requests), so the gateway must not share the
test's event loop: a node here owns a thread, an event loop, an IPAM connected to
the given etcd endpoints under the test's key prefix, and a real TCP socket.

Every answer a node sends is checked against its OpenAPI document (see
`conformance`); the fixtures fail the test at teardown if one disagreed.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from aiohttp import web
from conformance import Conformance

from allocator.contract import IPAM
from gateway.app import availability_of, create_app
from gateway.config import GatewayConfig

REGION = "fr-par"
ADMIN_SECRET = str(uuid.uuid4())


class GatewayNode:
    """One gateway on a free port, over `endpoints`, in a thread of its own.

    Unlike `ipam serve`, it does not require organizations unless asked
    (`require_organizations=True`): most tests make objects with the admin key in
    projects of their own that no key names. The rule itself is tested in
    test_organizations.py, and through `ipam serve` by the README and install tests.
    """

    def __init__(self, endpoints: Sequence[str], prefix: str, *,
                 admin_secret: str = ADMIN_SECRET, **config: Any) -> None:
        self.endpoints = list(endpoints)
        self.prefix = prefix
        config.setdefault("require_organizations", False)
        self.config = GatewayConfig(region=REGION, admin_secret_key=admin_secret,
                                    port=0, **config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.conformance: Conformance | None = None
        self.ipam: IPAM | None = None
        self.port = 0

    def start(self) -> GatewayNode:
        self.thread.start()
        self.call(self._start())
        return self

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the node's loop and wait for its result."""
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    async def _start(self) -> None:
        self.ipam = await IPAM.connect(self.endpoints, prefix=self.prefix,
                                       signing_key=self.config.credential_signing_key,
                                       quotas=self.config.quotas)
        app = create_app(self.ipam, self.config, close_ipam=True)
        self.conformance = Conformance(app)
        app.middlewares.insert(0, self.conformance.middleware)  # outermost: sees every answer
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        assert await availability_of(app).wait_ready(30), "etcd did not answer the node"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.runner is not None:
            self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def assert_conformant(self) -> None:
        """Fail when any answer of this node disagreed with its OpenAPI document."""
        if self.conformance is not None:
            self.conformance.assert_conformant()


@dataclass
class ApiKeys:
    """Credentials created through the admin API for one test."""

    url: str
    org: str = field(default_factory=lambda: str(uuid.uuid4()))

    def create(self, role: str, project_ids: Sequence[str] = (),
               resource_types: Sequence[str] = (), organization_id: str | None = None
               ) -> tuple[str, str]:
        """(access_key, secret_key) of a new key."""
        resp = requests.post(f"{self.url}/ipam/admin/v1/api-keys",
                             headers={"X-Auth-Token": ADMIN_SECRET},
                             json={"role": role, "project_ids": list(project_ids),
                                   "resource_types": list(resource_types),
                                   "organization_id": organization_id or self.org,
                                   "description": f"test {role}"}, timeout=10)
        assert resp.status_code == 200, resp.text
        data = resp.json()
        return data["access_key"], data["secret_key"]


def sdk_client(url: str, access_key: str, secret_key: str, project_id: str | None = None,
               organization_id: str | None = None) -> Any:
    from scaleway import Client

    return Client(access_key=access_key, secret_key=secret_key, api_url=url,
                  default_region=REGION, default_project_id=project_id,
                  default_organization_id=organization_id)


def admin_access_key() -> str:
    from allocator.credentials import access_key_for_secret

    return access_key_for_secret(ADMIN_SECRET)


@pytest.fixture
def gateway(etcd_single: Any, key_prefix: str) -> Iterator[GatewayNode]:
    """One gateway node on the shared single-member etcd, isolated under key_prefix."""
    node = GatewayNode(etcd_single.endpoints, key_prefix).start()
    yield node
    node.stop()
    node.assert_conformant()


@pytest.fixture
def gateway_pair(etcd_cluster3: Any, key_prefix: str) -> Iterator[tuple[GatewayNode, GatewayNode]]:
    """Two gateway nodes on the shared three-member cluster, each with all endpoints
    but in a different order, so they talk to different members first."""
    eps = list(etcd_cluster3.endpoints)
    a = GatewayNode(eps, key_prefix).start()
    b = GatewayNode(eps[1:] + eps[:1], key_prefix).start()
    yield a, b
    a.stop()
    b.stop()
    a.assert_conformant()
    b.assert_conformant()


class RegionalGatewayNode(GatewayNode):
    """One gateway serving several regions, each on its own etcd cluster
    (`--etcd-endpoints fr-par=URL --etcd-endpoints nl-ams=URL`): `endpoints_by_region`
    maps each region to its cluster's endpoints, fr-par among them. Its answers are
    checked against its OpenAPI document, which enumerates every region it serves.
    """

    def __init__(self, endpoints_by_region: dict[str, Sequence[str]], prefix: str,
                 **config: Any) -> None:
        assert REGION in endpoints_by_region
        super().__init__(endpoints_by_region[REGION], prefix, region_endpoints={
            region: tuple(endpoints) for region, endpoints in endpoints_by_region.items()},
            **config)

    async def _start(self) -> None:
        from gateway.app import availabilities_of

        ipams: dict[str, IPAM] = {}
        for regions, endpoints in self.config.clusters:
            ipam = await IPAM.connect(endpoints, prefix=self.prefix,
                                      signing_key=self.config.credential_signing_key,
                                      quotas=self.config.quotas)
            ipams.update(dict.fromkeys(regions, ipam))
        app = create_app(ipams, self.config, close_ipam=True)
        self.conformance = Conformance(app)
        app.middlewares.insert(0, self.conformance.middleware)  # outermost: sees every answer
        self.ipam = ipams[REGION]
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined,union-attr]
        for availability in availabilities_of(app):
            assert await availability.wait_ready(30), "an etcd cluster did not answer"

    def cluster(self, region: str) -> Any:
        """The `gateway.context.Cluster` serving `region`."""
        from gateway.context import CLUSTERS_KEY

        assert self.runner is not None
        cluster = self.runner.app[CLUSTERS_KEY].of_region(region)
        assert cluster is not None
        return cluster
