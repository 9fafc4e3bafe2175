"""The guarantees of DESIGN.md section 1 and the rules of the allocator, against real etcd."""

from __future__ import annotations

import asyncio

import pytest
from allocator_support import REGION, book_in, clean_audit, connected, make_pn, new_project

from allocator.contract import AddressAsk, Caller, IPFilter, IPRecord, Resource
from allocator.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PoolExhausted,
    PreconditionFailed,
)

SERVER = "instance_server"
INSTANCE = Caller(role="product", product_types=frozenset({SERVER}))
LB = Caller(role="product", product_types=frozenset({"lb_server"}))


@pytest.fixture
async def pn(ipam, project):
    return await make_pn(ipam, project, "10.1.0.0/24", "fd00:1:2:3::/64")


def vm(n: int = 1, name: str | None = None) -> Resource:
    return Resource.custom(f"02:00:00:00:00:{n:02x}", name)


def server(uuid_tail: str = "000000000001") -> Resource:
    return Resource.product(SERVER, f"11111111-2222-4333-8444-{uuid_tail}", "02:aa:00:00:00:01")


async def test_reserved_ip_address_never_changes(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project, tags=["a"]))
    await ipam.update_ip(ip.id, tags=["b"], reverses=[{"hostname": "web.example.com"}])
    await ipam.attach(ip.id, vm(1))
    await ipam.move(ip.id, vm(1), vm(2))
    await ipam.detach(ip.id, vm(2))
    after = await ipam.get_ip(ip.id)
    assert after.address == ip.address
    assert after.tags == ("b",)
    assert after.reverses[0].hostname == "web.example.com"
    assert after.reverses[0].address == ip.address.split("/")[0]


async def test_attached_ip_cannot_be_released(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project, resource=vm(1)))
    with pytest.raises(PreconditionFailed) as err:
        await ipam.release(ip.id)
    assert err.value.precondition == "resource_still_in_use"
    assert (await ipam.get_ip(ip.id)).resource == vm(1)
    await ipam.detach(ip.id, vm(1))
    await ipam.release(ip.id)
    with pytest.raises(NotFound):
        await ipam.get_ip(ip.id)
    await clean_audit(ipam)


async def test_product_attached_ip_is_detached_only_by_its_product(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project))
    with pytest.raises(PermissionDenied):
        await ipam.attach(ip.id, server())  # a member key cannot attach a product resource
    await ipam.attach(ip.id, server(), INSTANCE)
    for caller in (Caller(), LB):
        with pytest.raises(PermissionDenied):
            await ipam.detach(ip.id, server(), caller)
        with pytest.raises(PermissionDenied):
            await ipam.move(ip.id, server(), None, caller)
    assert (await ipam.get_ip(ip.id)).resource == server()
    detached = await ipam.detach(ip.id, server(), INSTANCE)
    assert detached.resource is None


async def test_attached_ip_is_attached_to_one_resource_only(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project))
    await ipam.attach(ip.id, vm(1))
    with pytest.raises(PreconditionFailed) as err:
        await ipam.attach(ip.id, vm(2))
    assert err.value.precondition == "resource_already_attached"
    again = await ipam.attach(ip.id, vm(1))  # attaching the same resource is a no-op
    assert again.resource == vm(1)


async def test_attaching_the_same_resource_under_another_name_is_refused(ipam, pn, project):
    """A re-attach is a retry only when it names the resource as it is attached: one that
    renames it (its DNS name) would be told "done" and change nothing. Move renames."""
    ip = await ipam.book(book_in(pn, project))
    attached = await ipam.attach(ip.id, vm(1, "web-1"))
    for other in (vm(1, "web-2"), vm(1)):
        with pytest.raises(PreconditionFailed) as err:
            await ipam.attach(ip.id, other)
        assert err.value.precondition == "resource_already_attached"
        assert "name 'web-1'" in str(err.value) and "move it" in str(err.value)
    held = await ipam.get_ip(ip.id)
    assert held.resource == vm(1, "web-1") and held.revision == attached.revision
    with pytest.raises(PreconditionFailed):
        await ipam.attach(ip.id, server(), INSTANCE)  # another resource: refused as before
    renamed = await ipam.move(ip.id, vm(1, "web-1"), vm(1, "web-2"))
    assert renamed.resource == vm(1, "web-2") and renamed.address == ip.address
    assert (await ipam.attach(ip.id, vm(1, "web-2"))).revision == renamed.revision


async def test_an_update_that_changes_nothing_writes_nothing(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project, tags=["a", "b"]))
    tagged = await ipam.update_ip(ip.id, reverses=[{"hostname": "web.example.com"}])
    for same in ({}, {"tags": ["a", "b"]}, {"reverses": [{"hostname": "web.example.com"}]},
                 {"tags": ["a", "b"], "expires_at": None}):
        kept = await ipam.update_ip(ip.id, **same)
        assert (kept.revision, kept.updated_at) == (tagged.revision, tagged.updated_at), same
    reordered = await ipam.update_ip(ip.id, tags=["b", "a"])  # order is the user's: a change
    assert reordered.revision > tagged.revision and reordered.tags == ("b", "a")


async def test_a_reverse_may_spell_the_ips_own_ipv6_address_any_way(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project, is_ipv6=True, address="fd00:1:2:3::abcd"))
    for spelling in ("FD00:1:2:3::ABCD", "fd00:0001:2:3:0:0:0:abcd", "fd00:1:2:3::abcd/64"):
        done = await ipam.update_ip(ip.id, reverses=[{"hostname": "v6.example.com",
                                                      "address": spelling}])
        assert [(r.hostname, r.address) for r in done.reverses] == [
            ("v6.example.com", "fd00:1:2:3::abcd")]
    with pytest.raises(InvalidArgument):
        await ipam.update_ip(ip.id, reverses=[{"hostname": "v6.example.com",
                                               "address": "fd00:1:2:3::abce"}])


async def test_mac_address_holds_at_most_one_ip_per_family_in_a_private_network(ipam, pn,
                                                                             project):
    a = await ipam.book(book_in(pn, project, resource=vm(7)))
    b = await ipam.book(book_in(pn, project))
    with pytest.raises(AlreadyExists):
        await ipam.attach(b.id, vm(7))
    with pytest.raises(AlreadyExists):
        await ipam.book(book_in(pn, project, resource=vm(7)))
    # A dual-stack NIC holds one IPv4 and one IPv6 of the network (as Scaleway does),
    # never two of one family.
    v6 = await ipam.book(book_in(pn, project, is_ipv6=True, resource=vm(7)))
    assert v6.resource == vm(7)
    with pytest.raises(AlreadyExists):
        await ipam.book(book_in(pn, project, is_ipv6=True, resource=vm(7)))
    # Another Private Network is another scope.
    other = await make_pn(ipam, project, "10.2.0.0/24")
    c = await ipam.book(book_in(other, project, resource=vm(7)))
    assert c.resource.mac_address == a.resource.mac_address
    await ipam.detach(a.id, vm(7))
    assert (await ipam.attach(b.id, vm(7))).resource == vm(7)
    await clean_audit(ipam)


async def test_detach_and_move_must_name_the_current_resource(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project))
    with pytest.raises(PreconditionFailed) as err:
        await ipam.detach(ip.id, vm(1))
    assert err.value.precondition == "ip_not_attached"
    await ipam.attach(ip.id, vm(1))
    with pytest.raises(PreconditionFailed) as err:
        await ipam.detach(ip.id, vm(2))
    assert err.value.precondition == "resource_mismatch"
    with pytest.raises(PreconditionFailed):
        await ipam.move(ip.id, vm(2), vm(3))
    moved = await ipam.move(ip.id, vm(1), vm(3))
    assert moved.resource == vm(3)
    ips, total = await ipam.list_ips(IPFilter(resource_id=vm(3).id))
    assert total == 1 and ips[0].id == ip.id
    assert (await ipam.list_ips(IPFilter(resource_id=vm(1).id)))[1] == 0
    to_none = await ipam.move(ip.id, vm(3), None)
    assert to_none.resource is None
    await clean_audit(ipam)


async def test_chosen_address_is_booked_once(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project, address="10.1.0.42"))
    assert ip.address == "10.1.0.42/24"
    with pytest.raises(AlreadyExists):
        await ipam.book(book_in(pn, project, address="10.1.0.42"))
    results = await asyncio.gather(
        *(ipam.book(book_in(pn, project, address="10.1.0.43")) for _ in range(10)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, IPRecord) for r in results) == 1
    assert sum(isinstance(r, AlreadyExists) for r in results) == 9
    await clean_audit(ipam)


async def test_reserved_addresses_are_never_handed_out(ipam, project):
    pn = await make_pn(ipam, project, "10.9.0.0/28")
    reserved = {r.address for r in pn.source(pn.subnets[0]).reserved_addresses()}
    assert reserved == {"10.9.0.0", "10.9.0.1", "10.9.0.14", "10.9.0.15"}
    got = await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(12)))
    addresses = {ip.address.split("/")[0] for ip in got}
    assert len(addresses) == 12 and not addresses & reserved
    with pytest.raises(PoolExhausted):
        await ipam.book(book_in(pn, project))
    listed = await ipam.reserved_ips(pn.id)
    assert [r["address"] for r in listed[0]["reserved"]] == sorted(
        reserved, key=lambda a: int(a.rsplit(".", 1)[1])
    )


async def test_exhausted_pool_answers_typed_error_and_writes_nothing(ipam, project):
    pn = await make_pn(ipam, project, "10.9.1.0/29")
    await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(4)))
    _, before = await ipam.store.count(ipam.keys.prefix)
    for _ in range(3):
        with pytest.raises(PoolExhausted) as err:
            await ipam.book(book_in(pn, project))
        assert err.value.source_id == pn.id  # named as the caller named it
    _, after = await ipam.store.count(ipam.keys.prefix)
    assert after == before


async def test_released_address_can_be_booked_again(ipam, project):
    pn = await make_pn(ipam, project, "10.9.2.0/29")
    ips = await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(4)))
    await ipam.release(ips[2].id)
    again = await ipam.book(book_in(pn, project))
    assert again.address == ips[2].address and again.id != ips[2].id


async def test_release_set_is_all_or_none(ipam, pn, project):
    ips = [await ipam.book(book_in(pn, project)) for _ in range(5)]
    await ipam.attach(ips[4].id, vm(9))
    with pytest.raises(PreconditionFailed):
        await ipam.release_set([ip.id for ip in ips])
    for ip in ips:
        await ipam.get_ip(ip.id)  # none released
    await ipam.release_set([ip.id for ip in ips[:4]])
    assert (await ipam.list_ips(IPFilter(private_network_id=pn.id)))[1] == 1
    await clean_audit(ipam)


async def test_release_set_of_many_ips_in_one_transaction(ipam, project):
    pn = await make_pn(ipam, project, "10.9.3.0/24")
    ips = await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(100)))
    await ipam.release_set([ip.id for ip in ips])
    assert (await ipam.list_ips(IPFilter(private_network_id=pn.id)))[1] == 0
    await clean_audit(ipam)


async def test_idempotent_booking_returns_the_first_result(ipam, pn, project):
    req = book_in(pn, project, idempotency_key="req-1", idempotency_scope="k1")
    first = await ipam.book(req)
    again = await ipam.book(req)
    assert again.id == first.id and again.address == first.address
    # Concurrent retries of a lost answer: still exactly one IP.
    req2 = book_in(pn, project, idempotency_key="req-2", idempotency_scope="k1")
    results = await asyncio.gather(*(ipam.book(req2) for _ in range(8)))
    assert len({r.id for r in results}) == 1
    # Another node (a fresh IPAM on the same etcd) answers the same.
    async with connected(ipam.store.endpoints, ipam.keys.prefix) as other:
        assert (await other.book(req2)).id == results[0].id
    assert (await ipam.list_ips(IPFilter(private_network_id=pn.id)))[1] == 2
    # Same key, different request: refused, nothing booked.
    with pytest.raises(Conflict):
        await ipam.book(
            book_in(pn, project, tags=["x"], idempotency_key="req-1", idempotency_scope="k1")
        )
    # A replay never hands back an IP that was released since as if it were held.
    await ipam.release(first.id)
    with pytest.raises(Conflict) as err:
        await ipam.book(req)
    assert "released" in err.value.message
    # The key is scoped: another caller's "req-1" is a different booking.
    other_scope = await ipam.book(
        book_in(pn, project, idempotency_key="req-1", idempotency_scope="k2")
    )
    assert other_scope.id != first.id
    await clean_audit(ipam)


async def test_a_retry_of_a_booking_that_succeeded_gets_its_answer_when_the_pool_is_full(
        ipam, project):
    # The key is read only when a booking cannot even be tried: a full pool is such a case.
    small = await make_pn(ipam, project, "10.77.0.0/29")  # 4 bookable addresses
    req = book_in(small, project, idempotency_key="full-1", idempotency_scope="k3",
                  resource=Resource.custom("02:00:00:00:77:01", "vm"))
    first = await ipam.book(req)
    for _ in range(3):
        await ipam.book(book_in(small, project))
    with pytest.raises(PoolExhausted):
        await ipam.book(book_in(small, project))
    assert (await ipam.book(req)).id == first.id  # a replay, not "out of stock"
    chosen = book_in(small, project, address=first.address.split("/")[0],
                     idempotency_key="full-1", idempotency_scope="k3",
                     resource=Resource.custom("02:00:00:00:77:01", "vm"))
    with pytest.raises(Conflict):  # the same key for another request (a chosen address)
        await ipam.book(chosen)
    assert (await ipam.list_ips(IPFilter(private_network_id=small.id)))[1] == 4
    await clean_audit(ipam)


async def test_idempotent_attach_returns_the_first_result(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project))
    first = await ipam.attach(ip.id, vm(3), idempotency_key="att-1")
    await ipam.detach(ip.id, vm(3))
    replayed = await ipam.attach(ip.id, vm(3), idempotency_key="att-1")
    assert replayed == first
    assert (await ipam.get_ip(ip.id)).resource is None  # the replay changed nothing


async def test_zonal_pool_books_for_any_project(ipam):
    pool = await ipam.create_zonal_pool(REGION, "fr-par-1", "51.15.0.0/29")
    got = []
    for _ in range(4):
        got.append(
            await ipam.book(AddressAsk(region=REGION, project_id=new_project(), zonal="fr-par-1"))
        )
    assert {g.zone for g in got} == {"fr-par-1"}
    assert all(g.source == {"zonal": "fr-par-1"} for g in got)
    with pytest.raises(PoolExhausted):
        await ipam.book(AddressAsk(region=REGION, project_id=new_project(), zonal="fr-par-1"))
    with pytest.raises(PreconditionFailed):
        await ipam.delete_zonal_pool(pool.id)
    await ipam.release_set([g.id for g in got])
    await ipam.delete_zonal_pool(pool.id)
    with pytest.raises(NotFound):
        await ipam.book(AddressAsk(region=REGION, project_id=new_project(), zonal="fr-par-1"))


async def test_zonal_pools_of_a_region_do_not_overlap(ipam):
    pool = await ipam.create_zonal_pool(REGION, "fr-par-2", "51.16.0.0/24")
    with pytest.raises(AlreadyExists) as err:
        await ipam.create_zonal_pool(REGION, "fr-par-1", "51.16.0.128/25")
    assert pool.id in err.value.message


async def test_subnets_of_one_vpc_do_not_overlap(ipam, project):
    vpc = await ipam.create_vpc(REGION, project, None, "v")
    first = await ipam.create_private_network(
        REGION, project, None, "a", vpc_id=vpc.id, subnets=["10.5.0.0/22"]
    )
    with pytest.raises(AlreadyExists) as err:
        await ipam.create_private_network(
            REGION, project, None, "b", vpc_id=vpc.id, subnets=["10.5.2.0/24"]
        )
    assert first.subnets[0].id in err.value.message  # names the subnet it collides with
    # Another VPC may reuse the range.
    other = await ipam.create_vpc(REGION, project, None, "w")
    await ipam.create_private_network(
        REGION, project, None, "c", vpc_id=other.id, subnets=["10.5.2.0/24"]
    )


async def test_concurrent_overlapping_subnets_one_wins(ipam, project):
    vpc = await ipam.create_vpc(REGION, project, None, "race")
    results = await asyncio.gather(
        *(
            ipam.create_private_network(
                REGION,
                project,
                None,
                f"p{i}",
                vpc_id=vpc.id,
                subnets=[f"10.6.{i}.0/24" if i % 2 else "10.6.0.0/20"],
            )
            for i in range(6)
        ),
        return_exceptions=True,
    )
    created = [r for r in results if not isinstance(r, Exception)]
    cidrs = [
        s.subnet
        for pn in await ipam.list_private_networks(REGION)
        if pn.vpc_id == vpc.id
        for s in pn.subnets
    ]
    assert len(cidrs) == len(created)
    import netaddr

    nets = [netaddr.IPNetwork(c) for c in cidrs]
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            assert a.last < b.first or b.last < a.first


async def test_auto_subnets_are_an_ipv4_22_and_an_ipv6_64(ipam, project):
    pns = [
        await ipam.create_private_network(REGION, project, None, f"n{i}") for i in range(3)
    ]
    vpcs = {pn.vpc_id for pn in pns}
    assert len(vpcs) == 1  # the project's default VPC, created once
    other = await ipam.create_vpc(REGION, project, None, "other")
    listed = await ipam.list_vpcs(REGION, {project})
    assert [(v.id, v.private_network_count) for v in listed] == [(pns[0].vpc_id, 3),
                                                               (other.id, 0)]
    before = ipam.store.requests
    assert await ipam.list_vpcs(REGION, set()) == []  # sees no project: no read
    assert await ipam.list_private_networks(REGION, set()) == []
    assert ipam.store.requests == before
    import netaddr

    v4 = [netaddr.IPNetwork(s.subnet) for pn in pns for s in pn.subnets if ":" not in s.subnet]
    v6 = [netaddr.IPNetwork(s.subnet) for pn in pns for s in pn.subnets if ":" in s.subnet]
    assert all(n.prefixlen == 22 and n in netaddr.IPNetwork("172.16.0.0/12") for n in v4)
    assert all(n.prefixlen == 64 and str(n).startswith("fd") for n in v6)
    assert len(set(v4)) == 3 and len(set(v6)) == 3


async def test_deleting_a_network_that_holds_ips_fails(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project))
    with pytest.raises(PreconditionFailed) as err:
        await ipam.delete_private_network(pn.id)
    assert err.value.precondition == "resource_still_in_use"
    with pytest.raises(PreconditionFailed):
        await ipam.delete_vpc(pn.vpc_id)
    await ipam.release(ip.id)
    await ipam.delete_private_network(pn.id)
    with pytest.raises(NotFound):
        await ipam.book(book_in(pn, project))
    await ipam.delete_vpc(pn.vpc_id)


async def test_booking_in_a_deleted_network_is_refused_on_a_warm_node(ipam, project):
    pn = await make_pn(ipam, project, "10.7.0.0/24")
    ip = await ipam.book(book_in(pn, project))
    await ipam.release(ip.id)
    async with connected(ipam.store.endpoints, ipam.keys.prefix) as other:
        await other.delete_private_network(pn.id)
    for _ in range(2):  # cached PN, but the source guard refuses; then the cache is gone
        with pytest.raises(NotFound) as err:
            await ipam.book(book_in(pn, project))
        assert (err.value.resource, err.value.resource_id) == ("private_network", pn.id)
    await clean_audit(ipam)


async def test_list_filters_and_orders(ipam, pn, project):
    a = await ipam.book(book_in(pn, project, address="10.1.0.10", tags=["web"]))
    b = await ipam.book(book_in(pn, project, address="10.1.0.5", resource=vm(1, "db-1")))
    c = await ipam.book(book_in(pn, project, is_ipv6=True, tags=["web", "v6"]))
    await ipam.attach(a.id, server(), INSTANCE)

    async def ids(order="created_at_desc", **flt):
        got, total = await ipam.list_ips(IPFilter(**flt), order_by=order)
        assert total == len(got)
        return [g.id for g in got]

    assert await ids(project_id=project) == [c.id, b.id, a.id]
    assert await ids("created_at_asc", project_id=project) == [a.id, b.id, c.id]
    assert await ids("ip_address_asc", project_id=project) == [b.id, a.id, c.id]
    assert (await ids("attached_at_desc", project_id=project))[:2] == [a.id, b.id]
    assert (await ids("updated_at_desc", project_id=project))[0] == a.id
    assert await ids("mac_address_asc", project_id=project) == [b.id, a.id, c.id]
    assert await ids(project_id=project, tags=("web",)) == [c.id, a.id]
    assert await ids(project_id=project, is_ipv6=True) == [c.id]
    assert await ids(project_id=project, is_ipv6=False) == [b.id, a.id]
    assert await ids(project_id=project, attached=True) == [b.id, a.id]
    assert await ids(project_id=project, attached=False) == [c.id]
    assert await ids(resource_type=SERVER) == [a.id]
    assert await ids(project_id=project, resource_types=("custom", SERVER)) == [b.id, a.id]
    assert await ids(project_id=project, resource_name="db") == [b.id]
    assert await ids(mac_address="02:00:00:00:00:01") == [b.id]
    assert await ids(resource_ids=(server().id, vm(1).id)) == [b.id, a.id]
    assert await ids(ip_ids=(a.id, c.id)) == [c.id, a.id]
    assert await ids(private_network_id=pn.id, is_ipv6=True) == [c.id]
    assert await ids(subnet_id=pn.subnets[0].id) == [b.id, a.id]
    assert await ids(project_id=project, vpc_id=pn.vpc_id) == [c.id, b.id, a.id]
    assert await ids(project_ids=frozenset({new_project()})) == []
    page, total = await ipam.list_ips(IPFilter(project_id=project), page=2, page_size=2)
    assert total == 3 and [p.id for p in page] == [a.id]


async def test_records_and_indexes_agree_after_a_mixed_workload(ipam, pn, project):
    ips = await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(40)))
    for n, ip in enumerate(ips[:20]):
        await ipam.attach(ip.id, vm(n + 1))
    for n, ip in enumerate(ips[:10]):
        await ipam.move(ip.id, vm(n + 1), vm(n + 100))
    for n, ip in enumerate(ips[:5]):
        await ipam.detach(ip.id, vm(n + 100))
        await ipam.release(ip.id)
    report = await clean_audit(ipam)
    assert report.records == 35 and report.held_addresses == 35


async def test_vpc_and_private_network_rename_and_retag(ipam, pn):
    vpc = await ipam.update_vpc(pn.vpc_id, name="prod", tags=["a"])
    assert (vpc.name, vpc.tags, vpc.private_network_count) == ("prod", ("a",), 1)
    renamed = await ipam.update_private_network(pn.id, name="web", tags=["b", "b"])
    assert (renamed.name, renamed.tags) == ("web", ("b",))
    assert renamed.subnets == pn.subnets  # subnets never change
    assert (await ipam.get_private_network(pn.id)).name == "web"
    with pytest.raises(NotFound):
        await ipam.update_private_network("00000000-0000-4000-8000-000000000000",
                                                   name="x")


async def test_a_full_pool_is_confirmed_by_one_key_read_until_something_is_released(ipam,
                                                                                     project):
    pn = await make_pn(ipam, project, "10.9.4.0/28")
    ips = await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(12)))
    with pytest.raises(PoolExhausted):
        await ipam.book(book_in(pn, project))  # counted once: full
    before = ipam.store.requests
    with pytest.raises(PoolExhausted):
        await ipam.book(book_in(pn, project))
    assert ipam.store.requests - before == 1  # the release marker, not a count of the pool
    # A release through another node is seen at once, watch or no watch.
    async with connected(ipam.store.endpoints, ipam.keys.prefix) as other:
        await other.release(ips[5].id)
    again = await ipam.book(book_in(pn, project))
    assert again.address == ips[5].address
    with pytest.raises(PoolExhausted):
        await ipam.book(book_in(pn, project))
    await ipam.release_set([ips[0].id, ips[1].id])
    assert len(await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(2)))) == 2
    with pytest.raises(PoolExhausted):
        await ipam.book(book_in(pn, project))
    await ipam.release_set([ip.id for ip in await _all(ipam, pn)])
    await ipam.delete_private_network(pn.id)
    leftovers, _ = await ipam.store.scan(ipam.keys.prefix + f"src/{pn.subnets[0].id}/")
    assert leftovers == []


async def _all(ipam, pn):
    got, _ = await ipam.list_ips(IPFilter(private_network_id=pn.id), page_size=100)
    return got


async def test_changes_made_with_a_revoked_credential_fail_in_etcd_and_write_nothing(
        ipam, pn, project):
    from allocator.errors import CredentialRevoked
    from allocator.txn import GuardedTxn, commit

    credential = ipam.keys.api_key_by_secret("test-credential")
    await commit(ipam.store, GuardedTxn().put(credential, "{}"))
    who = Caller(credential=credential)
    ip = await ipam.book(book_in(pn, project), who)
    attached = await ipam.attach(ip.id, vm(4), who, idempotency_key="k-att")
    await commit(ipam.store, GuardedTxn().delete(credential))  # revoked, e.g. on another node
    _, before = await ipam.store.count(ipam.keys.prefix)
    calls = [
        ipam.book(book_in(pn, project), who),
        ipam.book(book_in(pn, project, address="10.1.0.99"), who),
        ipam.detach(ip.id, vm(4), who),
        ipam.move(ip.id, vm(4), vm(5), who),
        ipam.update_ip(ip.id, tags=["x"], caller=who),
        ipam.attach(ip.id, vm(4), who, idempotency_key="k-att"),  # even a replay
        ipam.release_set([ip.id], who),
    ]
    for call in calls:
        with pytest.raises(CredentialRevoked):
            await call
    _, after = await ipam.store.count(ipam.keys.prefix)
    assert after == before
    assert await ipam.get_ip(ip.id) == attached


async def test_concurrent_lifecycle_changes_share_requests_and_stay_exact(ipam, pn, project):
    ips = await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(40)))
    # Forty attaches at once ride few etcd requests; each IP gets its own resource.
    attached = await asyncio.gather(*(ipam.attach(ip.id, vm(n + 1))
                                      for n, ip in enumerate(ips)))
    assert [a.resource.mac_address for a in attached] == [vm(n + 1).mac_address
                                                          for n in range(40)]
    # Ten resources race for one IP: one wins, the others are told it is taken.
    free = await ipam.book(book_in(pn, project))
    racers = await asyncio.gather(*(ipam.attach(free.id, vm(200 + n)) for n in range(10)),
                                  return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in racers) == 1
    assert all(isinstance(r, PreconditionFailed) for r in racers if isinstance(r, Exception))
    await asyncio.gather(*(ipam.detach(ip.id, vm(n + 1)) for n, ip in enumerate(ips)))
    await asyncio.gather(*(ipam.release(ip.id) for ip in ips))
    report = await clean_audit(ipam)
    assert report.records == 1


async def test_a_full_pool_deleted_through_another_node_answers_not_found(
        ipam, etcd_single, key_prefix):
    pool = await ipam.create_zonal_pool(REGION, "fr-par-3", "51.17.0.0/29")
    ask = AddressAsk(region=REGION, project_id=new_project(), zonal="fr-par-3")
    held = [await ipam.book(ask) for _ in range(4)]
    with pytest.raises(PoolExhausted):  # this node now knows the pool as full
        await ipam.book(ask)
    cache = ipam.lifecycle.engines[pool.id].cache
    cache._watch.cancel()  # this node does not see what the other one does next
    async with connected(etcd_single.endpoints, key_prefix) as other:
        await other.release_set([h.id for h in held])
        await other.delete_zonal_pool(pool.id)
    with pytest.raises(NotFound):
        await ipam.book(ask)
