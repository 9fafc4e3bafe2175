"""The allocator's one front door: everything the gateway and the DHCP/DNS agent may use.

Callers outside `allocator/` import from this module only (an import-linter
contract in pyproject.toml says so); what is not named here is the allocator's
own business and may change without notice.

    from allocator.contract import IPAM, AddressAsk, Caller
    ipam = await IPAM.connect(["127.0.0.1:2379"])
    pn = await ipam.create_private_network("fr-par", project_id, None, "web")
    ip = await ipam.book(AddressAsk(region="fr-par", project_id=project_id,
                                    private_network_id=pn.id), Caller())

`IPAM` composes the rooms of the allocator and forwards to them; it decides
nothing itself:

    lifecycle   book, update, release, release a set, attach, detach, move
    queries     one IP, a list page, the reserved addresses of a Private Network, how
                full its subnets (or a zonal pool) are
    networks    VPCs, Private Networks, subnets and zonal pools
    organizations  which organization each project belongs to (every object created in a
                project is of it)
    declines    DHCP declines: recorded by the agents, listed and cleared by operators
    upkeep      one elected node compacts etcd (`compactor`), one releases expired IPs
                (`expirer`)
    events      the feed of IP lifecycle changes, in commit order (`events`)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from . import errors
from .access import OPERATE, RULES, WRITE_NETWORKS, Caller
from .asks import AddressAsk
from .backup import (
    BackupInvalid,
    BackupSummary,
    RestoreInterrupted,
    RestoreSummary,
    TargetNotEmpty,
    export_state,
    import_state,
)
from .committer import CommitObserver, Committer
from .compactor import Compactor
from .credentials import (
    ADMIN,
    PRODUCT,
    PROJECT_MEMBER,
    PROJECT_READER,
    ApiKey,
    Credentials,
    access_key_for_secret,
    check_key_spec,
    is_access_key,
    secret_hash,
)
from .declines import (
    ADDRESS_NOT_HELD,
    DECLINE_LIMIT,
    TOO_MANY_DECLINES,
    AddressNotHeld,
    Decline,
    Declines,
    TooManyDeclines,
)
from .errors import ArgumentProblem, StoreError
from .events import DEFAULT_PAGE as DEFAULT_EVENT_PAGE
from .events import DEFAULT_RETENTION as DEFAULT_EVENT_RETENTION
from .events import MAX_PAGE as MAX_EVENT_PAGE
from .events import MAX_WAIT as MAX_EVENT_WAIT
from .events import MIN_RETENTION as MIN_EVENT_RETENTION
from .events import Event, EventFeed, EventPage
from .expiry import MAX_EXPIRY, UNCHANGED, Expirer, ExpiryChange
from .idempotency import MAX_RETENTION as MAX_IDEMPOTENCY_RETENTION
from .idempotency import MIN_RETENTION as MIN_IDEMPOTENCY_RETENTION
from .idempotency import RETENTION as IDEMPOTENCY_RETENTION
from .idempotency import LeaseClock
from .identity import IdentityCopied, copy_identity
from .keys import Keys
from .lifecycle import Lifecycle
from .listing import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, ORDERS, IPFilter
from .network_registry import NetworkRegistry
from .network_view import Lease, NetworkInfo, NetworkView, SubnetInfo
from .networks import VPC, PrivateNetwork, Subnet
from .organizations import OrganizationUnknown, ProjectOrganizations
from .queries import NetworkUsage, Queries, SubnetUsage
from .quotas import (
    DEFAULT_QUOTAS,
    MAX_OVERRIDE,
    OVERRIDABLE,
    IPQuota,
    ProjectQuotas,
    QuotaOverrides,
    Quotas,
)
from .records import (
    CUSTOM,
    IfMatch,
    IPRecord,
    Resource,
    Reverse,
    canonical_uuid,
    new_id,
    normalize_mac,
)
from .resolution import SourceResolver
from .schema import (
    CURRENT_SCHEMA,
    RestoreInProgress,
    SchemaState,
    SchemaTooNew,
    SchemaUnreadable,
    ensure_schema,
)
from .sources import ReservedAddress, Source
from .store import DEFAULT_QUOTA_BYTES as ETCD_DEFAULT_QUOTA_BYTES
from .store import EtcdSecurity, EtcdStore, StorageUsage, Store

__all__ = [
    "ADMIN", "CUSTOM", "OPERATE", "RULES", "WRITE_NETWORKS", "DEFAULT_PAGE_SIZE", "IPAM", "MAX_PAGE_SIZE", "ORDERS", "PRODUCT",
    "PROJECT_MEMBER", "PROJECT_READER", "VPC", "AddressAsk", "ApiKey", "ArgumentProblem",
    "IdentityCopied",
    "Caller", "Credentials", "EtcdSecurity", "IfMatch", "IPFilter", "IPRecord", "Lease", "NetworkInfo",
    "NetworkView", "PrivateNetwork", "SubnetInfo", "CommitObserver", "SourceUsage",
    "ReservedAddress", "Resource", "Reverse", "Source", "Store", "Subnet", "access_key_for_secret",
    "canonical_uuid", "check_key_spec", "errors", "is_access_key", "new_id", "normalize_mac", "secret_hash",
    "BackupInvalid", "BackupSummary", "CURRENT_SCHEMA", "RestoreInProgress", "RestoreInterrupted",
    "RestoreSummary", "SchemaState", "SchemaTooNew", "SchemaUnreadable", "TargetNotEmpty",
    "ensure_schema", "export_state", "import_state", "Compactor",
    "ADDRESS_NOT_HELD", "DECLINE_LIMIT", "TOO_MANY_DECLINES", "AddressNotHeld", "Decline",
    "TooManyDeclines", "NetworkUsage", "SubnetUsage",
    "Expirer", "ExpiryChange", "MAX_EXPIRY", "UNCHANGED", "Quotas", "OrganizationUnknown",
    "MAX_OVERRIDE", "OVERRIDABLE", "ProjectQuotas",
    "DEFAULT_EVENT_PAGE", "DEFAULT_EVENT_RETENTION", "MAX_EVENT_PAGE", "MAX_EVENT_WAIT",
    "MIN_EVENT_RETENTION", "Event", "EventPage",
    "IDEMPOTENCY_RETENTION", "MAX_IDEMPOTENCY_RETENTION", "MIN_IDEMPOTENCY_RETENTION",
    "ETCD_DEFAULT_QUOTA_BYTES", "StorageUsage",
]


@dataclass(frozen=True)
class SourceUsage:
    """One source as this node's cache sees it: bookable addresses, and how many are free."""

    source_id: str
    kind: str
    bookable: int
    free: int


class IPAM:
    """The allocator over one etcd cluster; one per process, shared by all requests.

    `store` and `keys` are public for audits and tests; callers change state only
    through the methods below. `signing_key` signs and checks the API key records
    (`allocator.credentials`; None: this node creates no key and accepts none).
    `quotas`: what one project may hold (`allocator.quotas`; every node of a cluster
    should be given the same). `idempotency_retention`: seconds a retry with an
    idempotency key still gets the first answer (`allocator.idempotency`).
    """

    def __init__(self, store: Store, prefix: str = "/ipam/", *,
                 max_inflight: int = 2, signing_key: bytes | None = None,
                 quotas: Quotas = DEFAULT_QUOTAS,
                 idempotency_retention: int = IDEMPOTENCY_RETENTION,
                 event_retention: int = DEFAULT_EVENT_RETENTION) -> None:
        self.store = store
        self.keys = Keys(prefix)
        self.signing_key = signing_key
        self.quotas = quotas
        # One mapping per node: what it read of it is kept (a mapping never changes).
        self.organizations = ProjectOrganizations(store, self.keys)
        # Projects' own quotas (`quotas.QuotaOverrides`): read by creates, and cached,
        # watch-fed, for bookings.
        self.quota_overrides = QuotaOverrides(store, self.keys, quotas)
        self.networks = NetworkRegistry(store, self.keys, quotas, self.organizations,
                                        self.quota_overrides)
        # One committer per node: the changes of every source share its etcd requests.
        self.committer = Committer(store, max_inflight=max_inflight)
        self.resolver = SourceResolver(self.networks)
        # The event feed (`events`): kept `event_retention` seconds; 0: no feed.
        self.lifecycle = Lifecycle(store, self.keys, self.resolver, self.committer,
                                   idempotency_retention, event_leases=LeaseClock(
                                       store, event_retention, "event_retention")
                                   if event_retention else None)
        # A node that writes no event still reads the feed the others write.
        self.feed = EventFeed(store, self.keys,  # type: ignore[arg-type]
                              event_retention or DEFAULT_EVENT_RETENTION)
        self.lifecycle.organizations = self.organizations
        # Every node admits against IP quotas: an override may give a project one.
        self.lifecycle.ip_quota = IPQuota(store, self.keys, quotas.ips_per_project,
                                          overrides=self.quota_overrides)
        self.queries = Queries(store, self.keys, self.networks)
        self.lifecycle.reads = self.queries.reads

    @classmethod
    async def connect(cls, endpoints: Sequence[str], prefix: str = "/ipam/",
                      timeout: float = 3.0, eject_seconds: float = 5.0,
                      security: EtcdSecurity | None = None, **kwargs: Any) -> IPAM:
        """An IPAM on the etcd cluster reachable at `endpoints` (host:port each)."""
        store = EtcdStore(list(endpoints), timeout=timeout, eject_seconds=eject_seconds,
                          security=security)
        return cls(store, prefix, **kwargs)

    async def close(self) -> None:
        """Stop every source's watch and close the etcd channels."""
        for engine in self.lifecycle.engines.values():
            engine.close()
        self.quota_overrides.close()
        await self.queries.reads.close()
        await self.store.close()

    def credentials(self) -> Credentials:
        """The API keys kept in this cluster (the gateway's tenancy layer)."""
        return Credentials(self.store, self.keys, self.signing_key, self.organizations,
                           self.queries.reads, self.quotas.keys_per_organization)

    async def readiness(self, timeout: float = 2.0) -> tuple[bool, list[tuple[str, bool]]]:
        """(a quorum answers a linearizable read, [(endpoint, answered)])."""
        problem, members = await asyncio.gather(self.quorum_problem(timeout),
                                                self.store.status())
        return problem is None, members

    async def member_status(self) -> list[tuple[str, bool]]:
        """[(endpoint, answered)]: each member asked directly, 1 s at most (for /readyz)."""
        return await self.store.status()

    @property
    def quorum_answered_at(self) -> float:
        """`time.monotonic()` of the latest etcd answer that took a quorum, whatever asked
        (a booking's commit, a read, a probe); 0.0 before the first."""
        return self.store.answered_at

    async def quorum_problem(self, timeout: float = 2.0) -> str | None:
        """None when a quorum answers a linearizable read within `timeout`, else why not.

        The read is of one key (the prefix itself, never written): cheap whatever the
        cluster holds, so a node can ask every second."""
        try:
            await asyncio.wait_for(self.store.get(self.keys.prefix), timeout)
        except TimeoutError:
            return f"no answer within {timeout:g}s"
        except StoreError as err:
            return str(err)
        return None

    def engine_stats(self) -> dict[str, Any]:
        return {sid: e.stats for sid, e in self.lifecycle.engines.items()}

    # -- data safety ------------------------------------------------------------------

    async def ensure_schema(self) -> SchemaState:
        """Stamp, migrate or refuse the data under the prefix (see `allocator.schema`)."""
        return await ensure_schema(self.store, self.keys, signing_key=self.signing_key)

    async def export_state(self, out: Any) -> BackupSummary:
        """Everything under the prefix at one revision, as a backup file (`allocator.backup`)."""
        return await export_state(self.store, self.keys, out)

    async def import_state(self, source: Any) -> RestoreSummary:
        """A backup file into this (empty) prefix (`allocator.backup`)."""
        return await import_state(self.store, self.keys, source)

    def compactor(self, **options: Any) -> Compactor:
        """A compactor of this cluster's etcd history (started with `start`); `options` are
        `Compactor`'s (retain_revisions, interval, every_deletes, ...)."""
        return Compactor(self.store, self.keys, **options)  # type: ignore[arg-type]

    def expirer(self, **options: Any) -> Expirer:
        """The releaser of this cluster's expired IPs (started with `start`, one node
        elected among those running it); `options` are `Expirer`'s (check_interval,
        lease_ttl, batch)."""
        return Expirer(self.store, self.keys, self.lifecycle, **options)  # type: ignore[arg-type]

    def endpoints_in_use(self) -> list[tuple[str, bool]]:
        """[(etcd endpoint, whether this node uses it now)]: an endpoint that failed is put
        out of use for a while. A store that tracks no endpoints reports none."""
        store: Any = self.store
        endpoints = list(getattr(store, "endpoints", ()))
        healthy = set(store.healthy_endpoints()) if hasattr(store, "healthy_endpoints") else set()
        return [(endpoint, endpoint in healthy) for endpoint in endpoints]

    async def copy_identity_to(self, target: IPAM) -> IdentityCopied:
        """Copy this cluster's API keys, projects' organizations and quota overrides into
        `target`'s, as stored, overwriting nothing (`allocator.identity`): a region's new
        cluster, before a node serves it."""
        return await copy_identity(self.store, target.store, self.keys)

    async def storage_usage(self, quota: int) -> list[StorageUsage]:
        """Each answering etcd member's backend size against `quota` (the members'
        --quota-backend-bytes), with its active alarms (`EtcdStore.storage_usage`). A store
        that cannot tell reports none."""
        store: Any = self.store
        if not hasattr(store, "storage_usage"):
            return []
        return await store.storage_usage(quota)

    def observe_commits(self, observer: CommitObserver | None) -> None:
        """Tell `observer` of every etcd request the node's committer sends (metrics)."""
        self.committer.observer = observer

    def source_usage(self) -> list[SourceUsage]:
        """The sources this node books in, with the addresses its cache sees free."""
        out = []
        for engine in self.lifecycle.engines.values():
            free = engine.cache.free_count
            if free is not None and not engine.closed:
                src = engine.source
                out.append(SourceUsage(src.id, src.kind, src.bookable_count, free))
        return out

    # -- organizations (`allocator.organizations`) -------------------------------------

    def require_organizations(self) -> None:
        """From now on, refuse every write into a project whose organization is unknown
        (OrganizationUnknown, 412) instead of keeping the organization the caller names:
        the service's rule, for a node that serves tenants."""
        self.organizations.required = True

    async def organization_of(self, project_id: str) -> str | None:
        """The organization `project_id` belongs to, or None when nobody set it; from this
        node's cache once read (a mapping never changes)."""
        return await self.organizations.of(project_id)

    async def set_project_organization(self, project_id: str, organization_id: str) -> str:
        """Map a project to its organization, once: the same again changes nothing, another
        organization is refused (AlreadyExists)."""
        return await self.organizations.set(project_id, organization_id)

    # -- quotas of a project (`allocator.quotas`) ---------------------------------------

    async def project_quotas(self, project_id: str) -> ProjectQuotas:
        """The quotas in force for a project (its override's, else this node's defaults),
        read linearizably."""
        return await self.quota_overrides.get(project_id)

    async def set_project_quotas(self, project_id: str, changes: Any) -> ProjectQuotas:
        """Override some of a project's quotas (`changes`: quota -> an integer from 0, or
        None for the default; the others unchanged); every node's next create counts
        under them. InvalidArgument, and nothing written, for a bad field or value.
        Lowering a quota below what the project holds deletes nothing."""
        return await self.quota_overrides.set(project_id, changes)

    async def reset_project_quotas(self, project_id: str) -> ProjectQuotas:
        """Give a project the defaults back (delete its override)."""
        return await self.quota_overrides.reset(project_id)

    # -- IPs --------------------------------------------------------------------------

    def book(self, ask: AddressAsk, caller: Caller = Caller()) -> Awaitable[IPRecord]:
        """Book an address (any free one, or `ask.address`), optionally attached at once.

        It hands back the lifecycle's own coroutine instead of awaiting it: on the hottest
        path, the front door adds no frame to the await chain."""
        return self.lifecycle.book(ask, caller)

    async def get_ip(self, ip_id: str) -> IPRecord:
        """The IP record, or NotFound."""
        return await self.queries.get_ip(ip_id)

    async def list_ips(self, flt: IPFilter, order_by: str = "created_at_desc", page: int = 1,
                       page_size: int = 50) -> tuple[list[IPRecord], int]:
        """One page of the IPs that match `flt`, and how many match in all."""
        return await self.queries.list_ips(flt, order_by, page, page_size)

    async def reserved_ips(self, pn_id: str) -> list[dict[str, Any]]:
        """For each subnet of the Private Network, the addresses never handed out and why."""
        return await self.queries.reserved_ips(pn_id)

    async def network_usage(self, pn_id: str, caller: Caller) -> NetworkUsage:
        """How full each subnet of the Private Network is (usable, reserved, held, free),
        every count read at one etcd revision, none by listing keys; NotFound for a
        network `caller` may not see (`Caller()`: an admin, anywhere), as the gateway's
        get-private-network answers."""
        return await self.queries.network_usage(pn_id, caller)

    # `if_match` on a change of one IP: the versions (`IPRecord.revision`) it must be at,
    # else PreconditionFailed and nothing changes (HTTP's If-Match; None: any version).

    async def update_ip(self, ip_id: str, tags: Any = None, reverses: Any = None,
                        caller: Caller = Caller(), if_match: IfMatch | None = None,
                        expires_at: ExpiryChange = UNCHANGED) -> IPRecord:
        """Change an IP's tags and/or reverse DNS entries; set (an RFC 3339 time, at most
        MAX_EXPIRY ahead) or clear (None) the expiry of an unattached IP."""
        return await self.lifecycle.update_ip(ip_id, tags, reverses, caller, if_match,
                                              expires_at)

    async def release(self, ip_id: str, caller: Caller = Caller(),
                      if_match: IfMatch | None = None) -> None:
        """Release a detached IP: its address is free again."""
        await self.lifecycle.release(ip_id, caller, if_match)

    async def release_set(self, ip_ids: Sequence[str], caller: Caller = Caller()) -> None:
        """Release several detached IPs atomically: all of them, or none."""
        await self.lifecycle.release_set(ip_ids, caller)

    async def attach(self, ip_id: str, resource: Resource, caller: Caller = Caller(),
                     idempotency_key: str | None = None, idempotency_scope: str = "",
                     if_match: IfMatch | None = None) -> IPRecord:
        """Attach a detached IP to a resource (a MAC holds one IP per Private Network)."""
        return await self.lifecycle.attach(ip_id, resource, caller, idempotency_key,
                                           idempotency_scope, if_match)

    async def detach(self, ip_id: str, resource: Resource, caller: Caller = Caller(),
                     idempotency_key: str | None = None, idempotency_scope: str = "",
                     if_match: IfMatch | None = None) -> IPRecord:
        """Detach an IP from the resource it is attached to (which the caller must name)."""
        return await self.lifecycle.detach(ip_id, resource, caller, idempotency_key,
                                           idempotency_scope, if_match)

    async def move(self, ip_id: str, from_resource: Resource, to_resource: Resource | None,
                   caller: Caller = Caller(), idempotency_key: str | None = None,
                   idempotency_scope: str = "", if_match: IfMatch | None = None
                   ) -> IPRecord:
        """Move an IP from the resource it is attached to, to another one (or to none)."""
        return await self.lifecycle.move(ip_id, from_resource, to_resource, caller,
                                         idempotency_key, idempotency_scope, if_match)

    async def events(self, after: str = "0", caller: Caller = Caller(), *,
                     region: str | None = None, project_id: str | None = None,
                     private_network_id: str | None = None, ip_id: str | None = None,
                     page_size: int = DEFAULT_EVENT_PAGE, wait: float = 0.0) -> EventPage:
        """The IP lifecycle events after cursor `after` ("0": the oldest kept), in commit
        order, of the projects `caller` sees (of `project_id` among them), optionally of
        one Private Network or one IP; with `wait` seconds (at most MAX_EVENT_WAIT), an
        empty read waits that long for one. PreconditionFailed `cursor_expired` when
        events after the cursor may be gone (older than the retention); see `events`."""
        projects = caller.visible_projects
        if project_id is not None:
            projects = frozenset({project_id}) if projects is None else (
                projects & {project_id})
        return await self.feed.read(after, projects=projects, region=region,
                                    private_network_id=private_network_id, ip_id=ip_id,
                                    page_size=page_size, wait=wait)

    async def network_view(self, pn_ids: Sequence[str]) -> NetworkView:
        """A live view of these Private Networks and their IPs (DHCP and DNS read it),
        loaded now and kept current by etcd watches until `close()`."""
        view = NetworkView(self.store, self.keys, pn_ids)
        await view.start()
        return view

    # -- DHCP declines (`allocator.declines`) ---------------------------------------------

    async def record_decline(self, pn_id: str, mac: str, address: str,
                             agent: str = "") -> Decline:
        """Keep that `mac` declined `address`, the IP it holds in `pn_id`: every agent's
        view withholds it from that MAC until `clear_declines`. Idempotent; at most
        DECLINE_LIMIT per network (TooManyDeclines); AddressNotHeld when the MAC does
        not hold it."""
        return await Declines(self.store, self.keys).record(pn_id, mac, address, agent)

    async def list_declines(self, region: str, pn_id: str | None = None,
                            mac: str | None = None) -> list[Decline]:
        """The DHCP declines of the region's networks (of one network, of one MAC)."""
        return await Declines(self.store, self.keys).find(region, pn_id, mac)

    async def clear_declines(self, region: str, pn_id: str | None = None,
                             mac: str | None = None) -> list[Decline]:
        """Delete the declines `list_declines` names (DHCP offers those addresses again);
        the ones deleted."""
        return await Declines(self.store, self.keys).clear(region, pn_id, mac)

    # -- where addresses come from ------------------------------------------------------

    async def source(self, source_id: str) -> Source:
        """A source (subnet or zonal pool), from this node's cache when it has it."""
        return await self.resolver.source(source_id)

    async def create_vpc(self, *args: Any, **kwargs: Any) -> VPC:
        """A new VPC with its own IPv6 ULA /48 (see `NetworkRegistry.create_vpc`)."""
        return await self.networks.create_vpc(*args, **kwargs)

    async def get_vpc(self, vpc_id: str) -> VPC:
        return await self.networks.get_vpc(vpc_id)

    async def list_vpcs(self, *args: Any, **kwargs: Any) -> list[VPC]:
        return await self.networks.list_vpcs(*args, **kwargs)

    async def update_vpc(self, vpc_id: str, name: str | None = None, tags: Any = None) -> VPC:
        return await self.networks.update_vpc(vpc_id, name, tags)

    async def enable_routing(self, vpc_id: str) -> VPC:
        """Turn routing on in a VPC, for good (on already: unchanged)."""
        return await self.networks.enable_routing(vpc_id)

    async def delete_vpc(self, vpc_id: str) -> None:
        """Delete a VPC that has no Private Network left."""
        await self.networks.delete_vpc(vpc_id)

    async def create_private_network(self, *args: Any, **kwargs: Any) -> PrivateNetwork:
        """A Private Network with its subnets; subnets never overlap others of the VPC."""
        return await self.networks.create_private_network(*args, **kwargs)

    async def get_private_network(self, pn_id: str) -> PrivateNetwork:
        return await self.networks.get_private_network(pn_id)

    async def cached_private_network(self, pn_id: str) -> PrivateNetwork:
        """The Private Network from this node's cache while fresh (a moment), else etcd."""
        return await self.networks.cached_private_network(pn_id)

    async def list_private_networks(self, *args: Any, **kwargs: Any) -> list[PrivateNetwork]:
        return await self.networks.list_private_networks(*args, **kwargs)

    async def update_private_network(self, *args: Any, **kwargs: Any) -> PrivateNetwork:
        return await self.networks.update_private_network(*args, **kwargs)

    async def delete_private_network(self, pn_id: str) -> None:
        """Delete a Private Network whose subnets hold no IP."""
        await self.networks.delete_private_network(pn_id)

    async def enable_dhcp(self, pn_id: str) -> PrivateNetwork:
        """Turn managed DHCP on in a Private Network, for good (on already: unchanged)."""
        return await self.networks.enable_dhcp(pn_id)

    async def add_subnets(self, pn_id: str, subnets: Sequence[str]
                          ) -> tuple[PrivateNetwork, list[Subnet]]:
        """Add subnets (CIDRs) to a Private Network; none may overlap a subnet of its VPC."""
        return await self.networks.add_subnets(pn_id, list(subnets))

    async def delete_subnets(self, pn_id: str, subnets: Sequence[str]
                             ) -> tuple[PrivateNetwork, list[Subnet]]:
        """Delete subnets (by CIDR) that hold no IP from a Private Network; this node then
        forgets them (other nodes learn it from the booking guard)."""
        pn, gone = await self.networks.delete_subnets(pn_id, list(subnets))
        for subnet in gone:
            self.resolver.forget_source(subnet.id)
        return pn, gone

    async def list_subnets(self, *args: Any, **kwargs: Any) -> list[Subnet]:
        return await self.networks.list_subnets(*args, **kwargs)

    async def create_zonal_pool(self, region: str, zone: str, cidr: str) -> Source:
        """A public pool shared by every project of `zone`; pools of a region never overlap."""
        return await self.networks.create_zonal_pool(region, zone, cidr)

    async def list_zonal_pools(self, region: str, zone: str | None = None) -> list[Source]:
        return await self.networks.list_zonal_pools(region, zone)

    async def delete_zonal_pool(self, pool_id: str) -> None:
        """Delete a zonal pool that holds no IP."""
        await self.networks.delete_zonal_pool(pool_id)

    async def pool_usage(self, pool_id: str, region: str | None = None) -> SubnetUsage:
        """How full a zonal pool (of `region`, when given) is, counted at one etcd revision."""
        return await self.queries.pool_usage(pool_id, region)

