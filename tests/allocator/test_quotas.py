"""Per-project quotas (VPCs, Private Networks, subnets of a network, IPs) and tenant-only
list reads, against real etcd.

A refusal is `QuotaExceeded` with the resource, the quota and what is held, and writes
nothing (the cluster's revision does not move); a delete frees a slot; creates racing on
two nodes of a three-member cluster never pass a quota. A tenant's list reads its own
projects' index ranges only, however much another tenant holds: checked by counting what
the store was asked and what it answered, not by timing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from aetcd import rpc
from allocator_support import (
    REGION,
    book_in,
    connected,
    make_pn,
    new_project,
    revision,
)

from allocator.contract import (
    ADMIN,
    IPAM,
    PRODUCT,
    PROJECT_MEMBER,
    PROJECT_READER,
    AddressAsk,
    ApiKey,
    Quotas,
    errors,
)
from allocator.quotas import IPQuota
from allocator.schema import MigrationContext, SchemaRecord, ensure_schema, index_projects
from allocator.store import KV, EtcdStore, prefix_end
from allocator.txn import put
from devcluster.etcd import EtcdCluster


@pytest.fixture
async def limited(etcd_single: EtcdCluster, key_prefix: str) -> AsyncIterator[IPAM]:
    """An allocator with small quotas: 2 VPCs, 2 Private Networks, 3 subnets, 3 IPs."""
    async with connected(etcd_single.endpoints, key_prefix, quotas=Quotas(
            vpcs_per_project=2, private_networks_per_project=2,
            subnets_per_private_network=3, ips_per_project=3)) as ipam:
        yield ipam


def _refusal(exc: pytest.ExceptionInfo[errors.QuotaExceeded]) -> tuple[str, int, int]:
    return exc.value.resource, exc.value.quota, exc.value.current


# -- the quotas and their defaults ------------------------------------------------------------


def test_default_quotas_bound_networks_and_keys_and_leave_ips_unbounded():
    assert Quotas() == Quotas(vpcs_per_project=100, private_networks_per_project=500,
                              subnets_per_private_network=16, ips_per_project=None,
                              keys_per_organization=100)
    assert Quotas.none() == Quotas(None, None, None, None, None)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_a_quota_is_a_positive_integer_or_none(bad: Any):
    with pytest.raises(ValueError, match="vpcs_per_project"):
        Quotas(vpcs_per_project=bad)


# -- VPCs ---------------------------------------------------------------------------------------


async def test_vpc_quota_refuses_the_next_vpc_and_writes_nothing(limited: IPAM, project: str):
    for name in ("a", "b"):
        await limited.create_vpc(REGION, project, None, name)
    before = await revision(limited)
    with pytest.raises(errors.QuotaExceeded) as exc:
        await limited.create_vpc(REGION, project, None, "c")
    assert _refusal(exc) == ("vpc", 2, 2)
    assert await revision(limited) == before


async def test_deleting_a_vpc_frees_a_slot(limited: IPAM, project: str):
    first = await limited.create_vpc(REGION, project, None, "a")
    await limited.create_vpc(REGION, project, None, "b")
    await limited.delete_vpc(first.id)
    third = await limited.create_vpc(REGION, project, None, "c")
    listed = await limited.list_vpcs(REGION, {project})
    assert sorted(v.name for v in listed) == ["b", "c"] and third in listed


async def test_vpc_quota_is_each_projects_own(limited: IPAM, project: str):
    for name in ("a", "b"):
        await limited.create_vpc(REGION, project, None, name)
    other = new_project()
    await limited.create_vpc(REGION, other, None, "theirs")
    assert [v.name for v in await limited.list_vpcs(REGION, {other})] == ["theirs"]


async def test_vpc_quota_counts_every_region_of_the_project(limited: IPAM, project: str):
    await limited.create_vpc(REGION, project, None, "a")
    await limited.create_vpc("nl-ams", project, None, "b")
    with pytest.raises(errors.QuotaExceeded) as exc:
        await limited.create_vpc(REGION, project, None, "c")
    assert _refusal(exc) == ("vpc", 2, 2)


async def test_the_default_vpc_counts_and_a_network_needing_one_is_refused(
        etcd_single: EtcdCluster, key_prefix: str, project: str):
    async with connected(etcd_single.endpoints, key_prefix,
                         quotas=Quotas(vpcs_per_project=1)) as ipam:
        await ipam.create_vpc(REGION, project, None, "mine")
        before = await revision(ipam)
        with pytest.raises(errors.QuotaExceeded) as exc:
            await ipam.create_private_network(REGION, project, None, "pn")  # default VPC
        assert _refusal(exc) == ("vpc", 1, 1)
        assert await revision(ipam) == before


# -- Private Networks and their subnets ------------------------------------------------------


async def test_private_network_quota_refuses_the_next_one_and_writes_nothing(
        limited: IPAM, project: str):
    vpc = await limited.create_vpc(REGION, project, None, "v")
    for name in ("a", "b"):
        await limited.create_private_network(REGION, project, None, name, vpc_id=vpc.id)
    before = await revision(limited)
    with pytest.raises(errors.QuotaExceeded) as exc:
        await limited.create_private_network(REGION, project, None, "c", vpc_id=vpc.id)
    assert _refusal(exc) == ("private_network", 2, 2)
    assert await revision(limited) == before


async def test_private_network_quota_counts_every_vpc_of_the_project(
        limited: IPAM, project: str):
    first, second = [await limited.create_vpc(REGION, project, None, n) for n in ("a", "b")]
    await limited.create_private_network(REGION, project, None, "a", vpc_id=first.id)
    await limited.create_private_network(REGION, project, None, "b", vpc_id=second.id)
    with pytest.raises(errors.QuotaExceeded):
        await limited.create_private_network(REGION, project, None, "c", vpc_id=first.id)


async def test_deleting_a_private_network_frees_a_slot(limited: IPAM, project: str):
    pn = await make_pn(limited, project, "10.1.0.0/24")
    await make_pn(limited, project, "10.2.0.0/24")
    await limited.delete_private_network(pn.id)
    again = await make_pn(limited, project, "10.3.0.0/24")
    assert again.id in {p.id for p in await limited.list_private_networks(REGION, {project})}


async def test_a_network_asked_with_more_subnets_than_the_quota_is_refused(
        limited: IPAM, project: str):
    await limited.create_vpc(REGION, project, None, "default", is_default=True)
    before = await revision(limited)
    with pytest.raises(errors.QuotaExceeded) as exc:
        await make_pn(limited, project, "10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24",
                      "10.4.0.0/24")
    assert _refusal(exc) == ("subnet", 3, 0)
    assert await revision(limited) == before


async def test_adding_subnets_beyond_the_quota_is_refused_and_a_deleted_one_frees_a_slot(
        limited: IPAM, project: str):
    pn = await make_pn(limited, project, "10.1.0.0/24", "10.2.0.0/24")
    before = await revision(limited)
    with pytest.raises(errors.QuotaExceeded) as exc:
        await limited.add_subnets(pn.id, ["10.3.0.0/24", "10.4.0.0/24"])
    assert _refusal(exc) == ("subnet", 3, 2)
    assert await revision(limited) == before
    await limited.add_subnets(pn.id, ["10.3.0.0/24"])
    with pytest.raises(errors.QuotaExceeded) as exc:
        await limited.add_subnets(pn.id, ["10.4.0.0/24"])
    assert _refusal(exc) == ("subnet", 3, 3)
    await limited.delete_subnets(pn.id, ["10.1.0.0/24"])
    now, _ = await limited.add_subnets(pn.id, ["10.4.0.0/24"])
    assert [s.subnet for s in now.subnets] == ["10.2.0.0/24", "10.3.0.0/24", "10.4.0.0/24"]


# -- tags of VPCs and Private Networks ---------------------------------------------------------


async def test_vpc_and_private_network_tags_have_the_limits_of_ip_tags(
        ipam: IPAM, project: str):
    with pytest.raises(errors.InvalidArgument, match="at most 64 tags"):
        await ipam.create_vpc(REGION, project, None, "v", tags=[f"t{i}" for i in range(65)])
    with pytest.raises(errors.InvalidArgument, match="1 to 128 characters"):
        await ipam.create_private_network(REGION, project, None, "p", tags=["x" * 129])
    vpc = await ipam.create_vpc(REGION, project, None, "v", tags=[f"t{i}" for i in range(64)])
    with pytest.raises(errors.InvalidArgument, match="1 to 128 characters"):
        await ipam.update_vpc(vpc.id, tags=["x" * 129])
    pn = await make_pn(ipam, project, "10.1.0.0/24")
    with pytest.raises(errors.InvalidArgument, match="at most 64 tags"):
        await ipam.update_private_network(pn.id, tags=[f"t{i}" for i in range(65)])


# -- IPs ----------------------------------------------------------------------------------------


async def test_ip_quota_refuses_the_next_booking_and_writes_nothing(limited: IPAM, project: str):
    pn = await make_pn(limited, project, "10.1.0.0/24")
    for _ in range(3):
        await limited.book(book_in(pn, project))
    before = await revision(limited)
    with pytest.raises(errors.QuotaExceeded) as exc:
        await limited.book(book_in(pn, project))
    assert _refusal(exc) == ("ip", 3, 3)
    assert await revision(limited) == before


async def test_releasing_an_ip_frees_a_slot(limited: IPAM, project: str):
    pn = await make_pn(limited, project, "10.1.0.0/24")
    ips = [await limited.book(book_in(pn, project)) for _ in range(3)]
    await limited.release(ips[0].id)
    await limited.book(book_in(pn, project))
    with pytest.raises(errors.QuotaExceeded):
        await limited.book(book_in(pn, project))


async def test_ip_quota_counts_zonal_and_private_ips_of_the_project(
        limited: IPAM, project: str):
    pn = await make_pn(limited, project, "10.1.0.0/24")
    await limited.create_zonal_pool(REGION, f"{REGION}-1", "192.0.2.0/24")
    for _ in range(2):
        await limited.book(AddressAsk(region=REGION, project_id=project,
                                      zonal=f"{REGION}-1"))
    await limited.book(book_in(pn, project))
    with pytest.raises(errors.QuotaExceeded) as exc:
        await limited.book(book_in(pn, project))
    assert _refusal(exc) == ("ip", 3, 3)


async def test_a_retried_booking_over_the_quota_gets_its_first_answer(
        limited: IPAM, project: str):
    pn = await make_pn(limited, project, "10.1.0.0/24")
    first = await limited.book(book_in(pn, project, idempotency_key="k1"))
    for _ in range(2):
        await limited.book(book_in(pn, project))
    again = await limited.book(book_in(pn, project, idempotency_key="k1"))
    assert (again.id, again.address) == (first.id, first.address)


async def test_concurrent_bookings_sharing_one_count_are_admitted_in_turn(
        ipam: IPAM, project: str):
    pn = await make_pn(ipam, project, "10.1.0.0/24")
    await ipam.book(book_in(pn, project))
    gate = IPQuota(ipam.store, ipam.keys, quota=4)
    results = await asyncio.gather(*(gate.admit(project) for _ in range(10)),
                                   return_exceptions=True)
    refused = [r for r in results if isinstance(r, errors.QuotaExceeded)]
    assert results.count(None) == 3 and len(refused) == 7
    assert {(r.quota, r.current) for r in refused} == {(4, 4)}
    assert gate.reads == 1


async def test_far_from_the_ip_quota_a_recent_count_is_trusted(ipam: IPAM, project: str):
    gate = IPQuota(ipam.store, ipam.keys, quota=1_000_000)
    for _ in range(50):
        await gate.admit(project)
    assert gate.reads == 1


async def test_near_the_ip_quota_every_booking_counts_afresh(ipam: IPAM, project: str):
    pn = await make_pn(ipam, project, "10.1.0.0/24")
    gate = IPQuota(ipam.store, ipam.keys, quota=5)
    for _ in range(3):
        await gate.admit(project)
        await ipam.book(book_in(pn, project))
    assert gate.reads == 3


# -- races between nodes -------------------------------------------------------------------------


async def _outcomes(tasks: Iterable[Any]) -> tuple[list[Any], list[errors.QuotaExceeded]]:
    """(what was created, the refusals) of racing creates. A create may also meet an etcd
    endpoint too slow to answer on a loaded host (StoreError, applied or not): never
    anything else."""
    results = await asyncio.gather(*tasks, return_exceptions=True)
    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, errors.QuotaExceeded)]
    others = [r for r in results if isinstance(r, BaseException)
              and not isinstance(r, errors.QuotaExceeded | errors.StoreError)]
    assert not others, others
    return created, refused


async def test_concurrent_vpc_creates_on_two_nodes_never_exceed_the_quota(
        etcd_cluster3: EtcdCluster, key_prefix: str, project: str):
    eps = list(etcd_cluster3.endpoints)
    quotas = Quotas(vpcs_per_project=5)
    async with connected(eps, key_prefix, quotas=quotas) as a, \
            connected(eps[1:] + eps[:1], key_prefix, quotas=quotas) as b:
        created, refused = await _outcomes(node.create_vpc(REGION, project, None, f"v{n}")
                                           for n in range(8) for node in (a, b))
        assert {(r.quota, r.current) for r in refused} == {(5, 5)}
        records, _ = await a.store.scan(a.keys.vpc())
        index, _ = await a.store.scan(a.keys.project_vpcs(project))
        assert len(records) == len(index) == 5  # the quota reached, never passed
        assert {v.id for v in created} <= {a.keys.last_segment(kv.key) for kv in records}


async def test_concurrent_network_creates_on_two_nodes_never_exceed_the_quota(
        etcd_cluster3: EtcdCluster, key_prefix: str, project: str):
    eps = list(etcd_cluster3.endpoints)
    quotas = Quotas(private_networks_per_project=4)
    async with connected(eps, key_prefix, quotas=quotas) as a, \
            connected(eps[1:] + eps[:1], key_prefix, quotas=quotas) as b:
        vpcs = [await a.create_vpc(REGION, project, None, n) for n in ("x", "y")]
        created, refused = await _outcomes(
            node.create_private_network(REGION, project, None, f"p{n}",
                                        vpc_id=vpcs[n % 2].id)
            for n in range(6) for node in (a, b))
        assert {(r.quota, r.current) for r in refused} == {(4, 4)}
        records, _ = await a.store.scan(a.keys.private_network())
        index, _ = await a.store.scan(a.keys.project_private_networks(project))
        assert len(records) == len(index) == 4  # the quota reached, never passed
        assert {p.id for p in created} <= {a.keys.last_segment(kv.key) for kv in records}


# -- API keys of an organization ----------------------------------------------------------


def _key(role: str, organization: str | None, project: str = "") -> ApiKey:
    """A key spec as `check_key_spec` makes it (no access key yet)."""
    projects = (project or new_project(),) if role in (PROJECT_MEMBER, PROJECT_READER) else ()
    return ApiKey(access_key="", role=role, organization_id=organization,
                  project_ids=projects, resource_types=("instance_server",)
                  if role == PRODUCT else ())


@pytest.fixture
async def two_keys(etcd_single: EtcdCluster, key_prefix: str) -> AsyncIterator[IPAM]:
    """An allocator whose organizations may hold 2 API keys each."""
    async with connected(etcd_single.endpoints, key_prefix,
                         quotas=Quotas(keys_per_organization=2)) as ipam:
        yield ipam


async def test_key_quota_refuses_the_next_project_key_and_writes_nothing(two_keys: IPAM):
    credentials, org = two_keys.credentials(), new_project()
    await credentials.create(_key(PROJECT_MEMBER, org))
    await credentials.create(_key(PROJECT_READER, org))
    before = await revision(two_keys)
    with pytest.raises(errors.QuotaExceeded) as exc:
        await credentials.create(_key(PROJECT_MEMBER, org))
    assert _refusal(exc) == ("api_key", 2, 2)
    assert exc.value.message == (f"organization {org} holds 2 API keys, its quota: "
                                 "revoke one first")
    assert await revision(two_keys) == before
    assert len(await credentials.list()) == 2


async def test_revoking_a_key_frees_its_organizations_slot(two_keys: IPAM):
    credentials, org = two_keys.credentials(), new_project()
    first, _ = await credentials.create(_key(PROJECT_MEMBER, org))
    await credentials.create(_key(PROJECT_MEMBER, org))
    await credentials.revoke(first.access_key)
    await credentials.create(_key(PROJECT_MEMBER, org))
    with pytest.raises(errors.QuotaExceeded):
        await credentials.create(_key(PROJECT_MEMBER, org))


async def test_admin_and_product_keys_and_other_organizations_take_no_slot(two_keys: IPAM):
    credentials, org = two_keys.credentials(), new_project()
    for _ in range(3):  # keys acting for no organization's projects, even naming one
        await credentials.create(_key(ADMIN, org))
        await credentials.create(_key(PRODUCT, org))
        await credentials.create(_key(PROJECT_MEMBER, None))
    await credentials.create(_key(PROJECT_MEMBER, new_project()))
    await credentials.create(_key(PROJECT_MEMBER, org))
    await credentials.create(_key(PROJECT_READER, org))
    with pytest.raises(errors.QuotaExceeded) as exc:
        await credentials.create(_key(PROJECT_READER, org))
    assert _refusal(exc) == ("api_key", 2, 2)


async def test_without_a_key_quota_an_organization_holds_any_number(ipam: IPAM):
    credentials = ipam.credentials()
    credentials.keys_per_organization = None
    org = new_project()
    for _ in range(3):
        await credentials.create(_key(PROJECT_MEMBER, org))
    assert len(await credentials.list()) == 3


async def test_concurrent_key_creates_on_two_nodes_never_exceed_the_key_quota(
        etcd_cluster3: EtcdCluster, key_prefix: str):
    eps, org = list(etcd_cluster3.endpoints), new_project()
    quotas = Quotas(keys_per_organization=3)
    async with connected(eps, key_prefix, quotas=quotas) as a, \
            connected(eps[1:] + eps[:1], key_prefix, quotas=quotas) as b:
        results = await asyncio.gather(*(node.credentials().create(_key(PROJECT_MEMBER, org))
                                         for _ in range(4) for node in (a, b)),
                                       return_exceptions=True)
        refused = [r for r in results if isinstance(r, errors.QuotaExceeded)]
        # Races retry on the guard; a loaded host may also run them out (Conflict) or
        # meet a slow endpoint (StoreError): never anything else.
        others = [r for r in results if isinstance(r, BaseException) and not isinstance(
            r, errors.QuotaExceeded | errors.Conflict | errors.StoreError)]
        assert not others, others
        assert {(r.quota, r.current) for r in refused} == {(3, 3)}
        assert len(await a.credentials().list()) == 3  # the quota reached, never passed


# -- tenant-only lists -----------------------------------------------------------------------------


class ReadCountingStore:
    """An etcd store that notes every read: the prefixes scanned and counted, the keys
    fetched, and how many keys etcd answered with."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.scanned: list[str] = []
        self.fetched: list[str] = []
        self.keys_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def forget(self) -> None:
        self.scanned, self.fetched, self.keys_read = [], [], 0

    async def scan(self, prefix: str, **kwargs: Any) -> tuple[list[KV], int]:
        kvs, rev = await self.store.scan(prefix, **kwargs)
        self.scanned.append(prefix)
        self.keys_read += len(kvs)
        return kvs, rev

    async def get(self, key: str) -> KV | None:
        self.fetched.append(key)
        kv = await self.store.get(key)
        self.keys_read += kv is not None
        return kv

    async def get_many(self, keys: Iterable[str]) -> dict[str, KV]:
        keys = list(keys)
        self.fetched += keys
        found = await self.store.get_many(keys)
        self.keys_read += len(found)
        return found

    async def count(self, prefix: str) -> tuple[int, int]:
        self.scanned.append(prefix)
        return await self.store.count(prefix)


@pytest.fixture
async def counted(etcd_single: EtcdCluster, key_prefix: str
                  ) -> AsyncIterator[tuple[IPAM, ReadCountingStore]]:
    store = ReadCountingStore(EtcdStore(etcd_single.endpoints))
    ipam = IPAM(store, key_prefix, quotas=Quotas.none())  # type: ignore[arg-type]
    try:
        yield ipam, store
    finally:
        await ipam.close()


async def _crowd(ipam: IPAM, project: str, vpcs: int) -> None:
    """`vpcs` VPCs in `project`, and a Private Network in the first one."""
    made = []
    for start in range(0, vpcs, 100):
        made += await asyncio.gather(*(ipam.create_vpc(REGION, project, None, f"n{i}")
                                       for i in range(start, min(start + 100, vpcs))))
    await ipam.create_private_network(REGION, project, None, "noisy", vpc_id=made[0].id)


async def test_a_tenants_lists_read_only_its_own_index_whatever_another_holds(
        counted: tuple[IPAM, ReadCountingStore]):
    ipam, store = counted
    noisy, quiet = new_project(), new_project()
    await _crowd(ipam, noisy, 1000)
    mine = await ipam.create_vpc(REGION, quiet, None, "mine")
    pn = await ipam.create_private_network(REGION, quiet, None, "pn", vpc_id=mine.id,
                                           subnets=["10.1.0.0/24"])
    default = await ipam.create_vpc(REGION, quiet, None, "default", is_default=True)
    own = (ipam.keys.project_vpcs(quiet, REGION), ipam.keys.project_private_networks(
        quiet, REGION))

    store.forget()
    vpcs = await ipam.list_vpcs(REGION, {quiet})
    assert [(v.id, v.private_network_count) for v in vpcs] == [(mine.id, 1), (default.id, 0)]
    assert set(store.scanned) == set(own)
    assert sorted(store.fetched) == sorted(ipam.keys.vpc(v.id) for v in vpcs)
    assert store.keys_read == 2 + 1 + 2  # VPC index, network index, the two records

    store.forget()
    assert [p.id for p in await ipam.list_private_networks(REGION, {quiet})] == [pn.id]
    assert store.scanned == [own[1]] and store.fetched == [ipam.keys.private_network(pn.id)]
    assert store.keys_read == 2

    store.forget()
    assert [s.subnet for s in await ipam.list_subnets(REGION, {quiet})] == ["10.1.0.0/24"]
    assert store.scanned == [own[1]] and store.keys_read == 2


async def test_an_admin_without_a_project_filter_still_lists_everyone(
        counted: tuple[IPAM, ReadCountingStore]):
    ipam, _ = counted
    a, b = new_project(), new_project()
    for project in (a, b):
        vpc = await ipam.create_vpc(REGION, project, None, "v")
        await ipam.create_private_network(REGION, project, None, "p", vpc_id=vpc.id)
    vpcs = await ipam.list_vpcs(REGION)
    assert sorted(v.project_id for v in vpcs) == sorted([a, b])
    assert all(v.private_network_count == 1 for v in vpcs)
    assert len(await ipam.list_private_networks(REGION)) == 2
    assert len(await ipam.list_vpcs(REGION, {a, b})) == 2


async def test_tenant_lists_keep_their_filters_and_regions(ipam: IPAM, project: str):
    other = new_project()
    tagged = await ipam.create_vpc(REGION, project, None, "web-a", tags=["blue"])
    await ipam.create_vpc(REGION, project, None, "db", tags=["red"])
    await ipam.create_vpc("nl-ams", project, None, "web-b")
    await ipam.create_vpc(REGION, other, None, "web-c")
    assert [v.id for v in await ipam.list_vpcs(REGION, {project}, name="web")] == [tagged.id]
    assert [v.id for v in await ipam.list_vpcs(REGION, {project}, tags=["blue"])] == [tagged.id]
    assert [v.name for v in await ipam.list_vpcs("nl-ams", {project, other})] == ["web-b"]
    pn = await ipam.create_private_network(REGION, project, None, "p", vpc_id=tagged.id)
    await ipam.delete_private_network(pn.id)
    assert await ipam.list_private_networks(REGION, {project}) == []
    await ipam.delete_vpc(tagged.id)
    assert tagged.id not in {v.id for v in await ipam.list_vpcs(REGION, {project})}
    index, _ = await ipam.store.scan(ipam.keys.project_vpcs(project))
    assert len(index) == 2  # db and web-b: a deleted VPC leaves no index key


# -- networks written before the project indexes ------------------------------------------


async def test_the_index_step_indexes_networks_written_before_it(ipam: IPAM, project: str):
    vpc = await ipam.create_vpc(REGION, project, None, "old")
    pn = await ipam.create_private_network(REGION, project, None, "old", vpc_id=vpc.id)
    gone = await ipam.create_vpc(REGION, project, None, "gone")
    # As a node of schema 3 left them: records without index keys, at version 3.
    for prefix in ("projvpc/", "projpn/"):
        await ipam.store.txn([], [_delete_prefix(ipam.keys.prefix + prefix)])
    await _as_schema_3(ipam)
    assert await ipam.list_vpcs(REGION, {project}) == []

    class DeletingMidway:
        """The store, but `gone` is deleted once the step has scanned the VPCs."""

        def __getattr__(self, name: str) -> Any:
            return getattr(ipam.store, name)

        async def scan(self, prefix: str, **kwargs: Any) -> tuple[list[KV], int]:
            if prefix == ipam.keys.private_network():
                await ipam.delete_vpc(gone.id)
            return await ipam.store.scan(prefix, **kwargs)

    async def step(ctx: MigrationContext) -> None:
        await index_projects(dataclasses.replace(ctx, store=DeletingMidway()))

    state = await ensure_schema(ipam.store, ipam.keys, current=4, migrations={3: step})
    assert state.version == 4
    assert gone.id not in {v.id for v in await ipam.list_vpcs(REGION)}
    assert [v.id for v in await ipam.list_vpcs(REGION, {project})] == [vpc.id]
    assert [v.private_network_count for v in await ipam.list_vpcs(REGION, {project})] == [1]
    assert [p.id for p in await ipam.list_private_networks(REGION, {project})] == [pn.id]
    index, _ = await ipam.store.scan(ipam.keys.project_private_networks(project))
    assert [kv.value.decode() for kv in index] == [vpc.id]


async def test_the_index_step_run_twice_leaves_the_same_index(ipam: IPAM, project: str):
    vpc = await ipam.create_vpc(REGION, project, None, "v")
    await ipam.create_private_network(REGION, project, None, "p", vpc_id=vpc.id)
    before, _ = await ipam.store.scan(ipam.keys.prefix + "proj")
    await _as_schema_3(ipam)
    await ensure_schema(ipam.store, ipam.keys, current=4, migrations={3: index_projects})
    await _as_schema_3(ipam)
    await ensure_schema(ipam.store, ipam.keys, current=4, migrations={3: index_projects})
    after, _ = await ipam.store.scan(ipam.keys.prefix + "proj")
    assert [(kv.key, kv.value) for kv in after] == [(kv.key, kv.value) for kv in before]


def _delete_prefix(prefix: str) -> rpc.RequestOp:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
        key=prefix.encode(), range_end=prefix_end(prefix)))


async def _as_schema_3(ipam: IPAM) -> None:
    await ipam.store.txn([], [put(ipam.keys.schema(), SchemaRecord(3).encode())])
