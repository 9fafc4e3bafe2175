"""Bad input gets a typed error and writes nothing (the etcd revision does not move)."""

from __future__ import annotations

import pytest
from allocator_support import REGION, book_in, make_pn, new_project, revision

from allocator.contract import AddressAsk, Caller, IPFilter, Resource
from allocator.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from allocator.txn import GuardedTxn, commit


@pytest.fixture
async def pn(ipam, project):
    pn = await make_pn(ipam, project, "10.60.0.0/24")  # IPv4 only
    # Warm caches, so the check is about the request; a chosen address, so that it never
    # takes one a test chooses (a random one did, 1 run in 252).
    await ipam.book(book_in(pn, project, address="10.60.0.2"))
    return pn


async def _refused(ipam, call, error=InvalidArgument, argument: str | None = None):
    before = await revision(ipam)
    with pytest.raises(error) as err:
        await call
    assert await revision(ipam) == before, "a refused request wrote to etcd"
    if argument is not None:
        assert err.value.problems[0].argument_name == argument
    return err.value


@pytest.mark.parametrize("cidr, argument", [
    ("10.0.0.0/33", "subnets"), ("10.0.0.1/24", "subnets"), ("banana", "subnets"),
    ("10.0.0.0", "subnets"), ("10.0.0.0/8", "subnets"), ("fd00::/20", "subnets"),
    ("8.8.8.0/24", "subnets"), ("2001:db8::/64", "subnets"), ("100.64.0.0/24", "subnets"),
])
async def test_invalid_cidr_is_refused(ipam, project, cidr, argument):
    await _refused(ipam, ipam.create_private_network(REGION, project, None, "x",
                                                              subnets=[cidr]),
                   argument=argument)


async def test_overlapping_subnets_in_one_request_are_refused(ipam, project):
    await _refused(ipam, ipam.create_private_network(
        REGION, project, None, "x", subnets=["10.70.0.0/24", "10.70.0.128/25"]))


@pytest.mark.parametrize("address, message", [
    ("10.61.0.5", "outside"), ("10.60.0.0", "reserved"), ("10.60.0.1", "reserved"),
    ("10.60.0.254", "reserved"), ("10.60.0.255", "reserved"), ("10.60.0.300", "not an IP"),
    ("fd00::5", "IPv6"),
])
async def test_bad_chosen_address_is_refused(ipam, pn, project, address, message):
    err = await _refused(ipam, ipam.book(book_in(pn, project, address=address)))
    assert message in err.message


async def test_ipv6_asked_on_an_ipv4_only_source_is_refused(ipam, pn, project):
    await _refused(ipam, ipam.book(book_in(pn, project, is_ipv6=True)), argument="is_ipv6")
    await _refused(ipam, ipam.book(AddressAsk(region=REGION, project_id=project,
                                               subnet_id=pn.subnets[0].id, is_ipv6=True)),
                   argument="is_ipv6")


async def test_unknown_sources_are_not_found(ipam, project):
    ghost = "00000000-0000-4000-8000-000000000000"
    await _refused(ipam, ipam.book(AddressAsk(region=REGION, project_id=project,
                                               private_network_id=ghost)), NotFound)
    await _refused(ipam, ipam.book(AddressAsk(region=REGION, project_id=project,
                                               subnet_id=ghost)), NotFound)
    await _refused(ipam, ipam.book(AddressAsk(region=REGION, project_id=project,
                                               zonal="fr-par-3")), NotFound)
    await _refused(ipam, ipam.get_ip(ghost), NotFound)
    await _refused(ipam, ipam.release(ghost), NotFound)
    await _refused(ipam, ipam.get_vpc(ghost), NotFound)


async def test_a_booking_needs_exactly_one_source(ipam, pn, project):
    await _refused(ipam, ipam.book(AddressAsk(region=REGION, project_id=project)),
                   argument="source")
    await _refused(ipam, ipam.book(AddressAsk(region=REGION, project_id=project,
                                               private_network_id=pn.id,
                                               subnet_id=pn.subnets[0].id)),
                   argument="source")


async def test_booking_for_another_project_in_a_private_network_is_refused(ipam, pn):
    await _refused(ipam, ipam.book(book_in(pn, new_project())), argument="project_id")


@pytest.mark.parametrize("mac", ["02:00:00:00:00", "zz:00:00:00:00:01", "", 42,
                                 "02:00-00:00-00:01"])
def test_malformed_mac_is_refused(mac):
    with pytest.raises(InvalidArgument) as err:
        Resource.custom(mac)
    assert err.value.problems[0].reason == "format"


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "33:33:00:00:00:01",
                                 "ff:ff:ff:ff:ff:ff"])
async def test_a_group_mac_is_refused_to_attach_yet_names_what_is_attached(ipam, pn, project,
                                                                          mac):
    """No NIC has a group address: booking or attaching with one is refused, nothing
    written. One attached before that rule still names its resource: detach works."""
    group = Resource.custom(mac, "legacy")
    err = await _refused(ipam, ipam.book(book_in(pn, project, resource=group)))
    assert "is a group (multicast or broadcast) address" in str(err)
    ip = await ipam.book(book_in(pn, project))
    await _refused(ipam, ipam.attach(ip.id, group))
    await _refused(ipam, ipam.move(ip.id, Resource.custom("02:00:00:00:00:61"), group))
    # As an IP attached before the rule holds it (written the way an attach wrote it):
    legacy = (await ipam.get_ip(ip.id)).with_changes(resource=group)
    await commit(ipam.store, GuardedTxn().put(ipam.keys.ip(ip.id), legacy.stored()))
    assert (await ipam.detach(ip.id, group)).resource is None


@pytest.mark.parametrize("value", ["not-a-uuid", "", "1234", None, 7,
                                   "00000000-0000-4000-8000-00000000000g"])
async def test_malformed_uuids_are_refused(ipam, pn, project, value):
    await _refused(ipam, ipam.get_ip(value))
    await _refused(ipam, ipam.book(AddressAsk(region=REGION, project_id=value,
                                               private_network_id=pn.id)))
    await _refused(ipam, ipam.book(AddressAsk(region=REGION, project_id=project,
                                               private_network_id=value)))
    with pytest.raises(InvalidArgument):
        Resource.product("instance_server", value)


async def test_bad_tags_reverses_and_pages_are_refused(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project))
    await _refused(ipam, ipam.update_ip(ip.id, tags="web"))
    await _refused(ipam, ipam.update_ip(ip.id, tags=[""]))
    await _refused(ipam, ipam.update_ip(ip.id, tags=["nul\x00inside"]))
    await _refused(ipam, ipam.update_ip(ip.id, reverses=[{"hostname": "bad host!"}]))
    await _refused(ipam, ipam.update_ip(ip.id, reverses=[{"hostname": "a.example.com",
                                                          "address": "10.60.0.99"}]))
    for address in (99, ["10.60.0.1"], "not an address"):
        await _refused(ipam, ipam.update_ip(ip.id, reverses=[{"hostname": "a.example.com",
                                                              "address": address}]))
    await _refused(ipam, ipam.book(book_in(pn, project, tags=["x" * 200])))
    await _refused(ipam, ipam.list_ips(IPFilter(), page=0))
    await _refused(ipam, ipam.list_ips(IPFilter(), page_size=101))
    await _refused(ipam, ipam.list_ips(IPFilter(), order_by="nope"))
    await _refused(ipam, ipam.release_set([]))
    await _refused(ipam, ipam.release_set([ip.id] * 101))
    await _refused(ipam, ipam.book(book_in(pn, project, idempotency_key="")))


async def test_product_resource_attach_by_a_non_product_is_denied(ipam, pn, project):
    server = Resource.product("instance_server", "11111111-2222-4333-8444-555555555555")
    await _refused(ipam, ipam.book(book_in(pn, project, resource=server)), PermissionDenied)
    ip = await ipam.book(book_in(pn, project))
    await _refused(ipam, ipam.attach(ip.id, server, Caller(role="product", product_types=frozenset({"lb_server"}))),
                   PermissionDenied)


async def test_taken_chosen_address_is_already_exists_and_writes_nothing(ipam, pn, project):
    await ipam.book(book_in(pn, project, address="10.60.0.77"))
    await _refused(ipam, ipam.book(book_in(pn, project, address="10.60.0.77")), AlreadyExists)


async def test_bad_zone_for_a_pool_is_refused(ipam):
    await _refused(ipam, ipam.create_zonal_pool(REGION, "nl-ams-1", "51.1.0.0/24"),
                   argument="zone")
    await _refused(ipam, ipam.create_zonal_pool(REGION, "fr-par-1", "51.1.0.0/33"),
                   argument="subnet")
