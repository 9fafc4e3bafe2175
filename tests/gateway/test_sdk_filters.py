"""Every parameter of the SDK's list calls is honoured: a test generated from the SDK.

For each parameter of `IpamV1API.list_i_ps`, `VpcV2API.list_vp_cs`,
`list_private_networks`, `list_subnets` and their `_all` variants, as
`inspect.signature` finds it in the installed SDK, the case table below must hold a
case; a parameter without one fails (so an SDK release that adds a filter we would
silently ignore fails here first). Each filter case asks, through the real SDK on a
real gateway, for a filter that some objects of one shared world match and others do
not, and checks that exactly the matching ones come back. `page`, `page_size`,
`order_by` and `region` have cases of their own, checked exactly.

Semantics chosen where Scaleway's words leave room (the SDK's docstrings):
- `name`, `resource_name`: "containing this string": a substring match.
- `tags`: "one or more matching tags": any of them.
- `vpc_id` and `source_vpc_id` of IPs: IPs of the VPC's Private Networks (a zonal
  IP is in no VPC here).
- `regional`: true answers nothing (no regional IPs are served), false filters nothing.
- `object_storage_private_access_enabled`: never enabled here, so true answers
  nothing and false everything.
- IPs come newest first by default (`created_at_desc`, the first value of the SDK's
  `ListIPsRequestOrderBy`); VPCs, Private Networks and subnets oldest first.
- Ordering by MAC or attachment time puts IPs without one first when descending and
  last when ascending.
"""

from __future__ import annotations

import inspect
import ipaddress
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from gateway_fixtures import (
    ADMIN_SECRET,
    REGION,
    ApiKeys,
    GatewayNode,
    admin_access_key,
    sdk_client,
)
from scaleway.ipam.v1 import IpamV1API
from scaleway.ipam.v1.types import (
    CustomResource,
    ListIPsRequestOrderBy,
    ResourceType,
    Source,
)
from scaleway.vpc.v2 import VpcV2API
from scaleway.vpc.v2.types import (
    ListPrivateNetworksRequestOrderBy,
    ListSubnetsRequestOrderBy,
    ListVPCsRequestOrderBy,
)
from scaleway_core.api import ScalewayException

# -- the world every case lists from ------------------------------------------------------


@dataclass
class Known:
    """An object as the test made it: what each filter is judged on (never the answer)."""

    id: str
    project: str
    org: str
    name: str = ""
    tags: tuple[str, ...] = ()
    vpc: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["extra"][name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class World:
    admin_ipam: IpamV1API
    admin_vpc: VpcV2API
    orgs: dict[str, str]
    projects: dict[str, str]
    vpcs: list[Known] = field(default_factory=list)  # each list in creation order
    pns: list[Known] = field(default_factory=list)
    subnets: list[Known] = field(default_factory=list)
    ips: list[Known] = field(default_factory=list)
    named: dict[str, Known] = field(default_factory=dict)

    def add(self, kind: str, key: str, obj: Known) -> Known:
        getattr(self, kind).append(obj)
        self.named[key] = obj
        return obj

    def __getitem__(self, key: str) -> Known:
        return self.named[key]


@pytest.fixture(scope="module")
def node(etcd_single: Any) -> Iterator[GatewayNode]:
    """One gateway for the whole module, under a prefix of its own."""
    gateway = GatewayNode(etcd_single.endpoints, f"/t/{uuid.uuid4().hex[:12]}/").start()
    yield gateway
    gateway.stop()
    gateway.assert_conformant()


def _tenant(node: GatewayNode, keys: ApiKeys, project: str, org: str
            ) -> tuple[IpamV1API, VpcV2API]:
    access, secret = keys.create("project_member", [project], organization_id=org)
    client = sdk_client(node.url, access, secret, project)
    return IpamV1API(client), VpcV2API(client)


def _product_call(node: GatewayNode, secret: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = requests.post(f"{node.url}/ipam/v1/regions/{REGION}/ips", json=body, timeout=30,
                         headers={"X-Auth-Token": secret})
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def world(node: GatewayNode) -> World:
    keys = ApiKeys(node.url)
    orgs = {"a": str(uuid.uuid4()), "b": str(uuid.uuid4()), "z": str(uuid.uuid4())}
    projects = {"a": str(uuid.uuid4()), "b": str(uuid.uuid4()), "z": str(uuid.uuid4())}
    admin = sdk_client(node.url, admin_access_key(), ADMIN_SECRET)
    w = World(IpamV1API(admin), VpcV2API(admin), orgs, projects)
    ipam_a, vpc_a = _tenant(node, keys, projects["a"], orgs["a"])
    ipam_b, vpc_b = _tenant(node, keys, projects["b"], orgs["b"])

    def vpc(key: str, api: VpcV2API, who: str, name: str, tags: list[str],
            routing: bool) -> Known:
        made = api.create_vpc(enable_routing=routing, enable_transitivity=False, name=name,
                              tags=tags)
        return w.add("vpcs", key, Known(made.id, projects[who], orgs[who], name, tuple(tags),
                                        extra={"is_default": False, "routing": routing}))

    def pn(key: str, api: VpcV2API, who: str, name: str, tags: list[str], vpc_key: str | None,
           subnets: list[str] | None) -> Known:
        made = api.create_private_network(
            default_route_propagation_enabled=False, name=name, tags=tags, subnets=subnets,
            vpc_id=w[vpc_key].id if vpc_key else None)
        if vpc_key is None:  # the project's default VPC, made on the way
            w.add("vpcs", f"default-{who}", Known(
                made.vpc_id, projects[who], orgs[who], "default", (),
                extra={"is_default": True, "routing": True}))
        known = w.add("pns", key, Known(made.id, projects[who], orgs[who], name, tuple(tags),
                                        made.vpc_id, extra={"dhcp": True}))
        for s in made.subnets:
            w.add("subnets", f"{key}/{s.subnet}", Known(
                s.id, projects[who], orgs[who], s.subnet, vpc=made.vpc_id,
                extra={"pn": made.id, "created": (s.created_at, s.id)}))
        return known

    vpc("vA1", vpc_a, "a", "alpha-vpc", ["red"], True)
    vpc("vA2", vpc_a, "a", "beta-vpc", ["blue"], False)
    vpc("vB1", vpc_b, "b", "alpha-b", ["red", "green"], False)
    pn("pA1", vpc_a, "a", "web-a", ["red"], "vA1", ["10.1.0.0/24", "fd00:1::/64"])
    pn("pA2", vpc_a, "a", "db-a", ["blue"], "vA1", ["10.2.0.0/24"])
    pn("pA3", vpc_a, "a", "web-2", [], "vA2", ["10.3.0.0/24"])
    pn("pA4", vpc_a, "a", "auto-a", [], None, None)
    pn("pB1", vpc_b, "b", "web-b", ["green"], "vB1", ["10.1.0.0/24"])
    # No call turns DHCP off (Scaleway has enable-dhcp only): the allocator does.
    node.call(node.ipam.update_private_network(w["pA2"].id, dhcp_enabled=False))  # type: ignore[union-attr]
    w["pA2"].extra["dhcp"] = False

    resp = requests.post(f"{node.url}/ipam/admin/v1/regions/{REGION}/zonal-pools",
                         headers={"X-Auth-Token": ADMIN_SECRET}, timeout=30,
                         json={"zone": "fr-par-1", "subnet": "51.15.10.0/28"})
    assert resp.status_code == 200, resp.text
    resp = requests.post(f"{node.url}/ipam/admin/v1/regions/{REGION}/zonal-pools",
                         headers={"X-Auth-Token": ADMIN_SECRET}, timeout=30,
                         json={"zone": "fr-par-2", "subnet": "51.15.11.0/28"})
    assert resp.status_code == 200, resp.text
    _, product_secret = keys.create("product", resource_types=["instance_server"])
    server1, server2 = str(uuid.uuid4()), str(uuid.uuid4())
    attached = 0

    def ip(key: str, made: Any, who: str, org: str, pn_key: str | None, *, tags: list[str],
           resource: tuple[str, str | None, str | None] | None = None, zone: str | None = None
           ) -> None:
        """`resource`: (type, mac, name) of what it was attached to when booked."""
        nonlocal attached
        data = made if isinstance(made, dict) else {
            "id": made.id, "address": made.address,
            "resource_id": made.resource.id if made.resource else None,
            "subnet_id": made.source.subnet_id}
        pn_known = w[pn_key] if pn_key else None
        if resource is not None:
            attached += 1
        w.add("ips", key, Known(
            data["id"], projects[who], org, tags=tuple(tags),
            vpc=pn_known.vpc if pn_known else None, extra={
                "pn": pn_known.id if pn_known else None, "zone": zone,
                "subnet": data.get("subnet_id"), "address": data["address"],
                "is_ipv6": ":" in data["address"], "attached": attached if resource else 0,
                "type": resource[0] if resource else None,
                "mac": resource[1] if resource else None,
                "res_name": resource[2] if resource else None,
                "resource_id": data["resource_id"]}))

    def custom(mac: str, name: str) -> CustomResource:
        return CustomResource(mac_address=mac, name=name)

    pa1 = w["pA1"].id
    ip("ip1", ipam_a.book_ip(source=Source(private_network_id=pa1), is_ipv6=False,
                             tags=["web", "prod"], resource=custom("02:00:00:00:00:01", "web-1")),
       "a", orgs["a"], "pA1", tags=["web", "prod"],
       resource=("custom", "02:00:00:00:00:01", "web-1"))
    ip("ip2", ipam_a.book_ip(source=Source(private_network_id=pa1), is_ipv6=True,
                             tags=["web"]), "a", orgs["a"], "pA1", tags=["web"])
    made = _product_call(node, product_secret, {
        "source": {"private_network_id": w["pA2"].id}, "is_ipv6": False,
        "project_id": projects["a"], "tags": ["db"],
        "resource": {"type": "instance_server", "id": server1,
                     "mac_address": "02:00:00:00:00:03", "name": "db-1"}})
    ip("ip3", {**made, "resource_id": server1, "subnet_id": made["source"]["subnet_id"]},
       "a", orgs["a"], "pA2", tags=["db"],
       resource=("instance_server", "02:00:00:00:00:03", "db-1"))
    ip("ip4", ipam_a.book_ip(source=Source(private_network_id=w["pA3"].id), is_ipv6=False,
                             resource=custom("02:00:00:00:00:04", "cache-1")),
       "a", orgs["a"], "pA3", tags=[], resource=("custom", "02:00:00:00:00:04", "cache-1"))
    ip("ip5", ipam_b.book_ip(source=Source(private_network_id=w["pB1"].id), is_ipv6=False,
                             tags=["web"], resource=custom("02:00:00:00:00:05", "web-b")),
       "b", orgs["b"], "pB1", tags=["web"], resource=("custom", "02:00:00:00:00:05", "web-b"))
    # Zonal IPs are a product's to book; the product names no organization: they take
    # their project's, set by an admin (allocator.organizations).
    requests.put(f"{node.url}/ipam/admin/v1/projects/{projects['z']}", timeout=30,
                 headers={"X-Auth-Token": ADMIN_SECRET},
                 json={"organization_id": orgs["z"]}).raise_for_status()
    made = _product_call(node, product_secret, {
        "source": {"zonal": "fr-par-1"}, "is_ipv6": False, "project_id": projects["z"],
        "resource": {"type": "instance_server", "id": server2, "name": "srv-2"}})
    ip("ip6", {**made, "resource_id": server2}, "z", orgs["z"], None, tags=[],
       resource=("instance_server", None, "srv-2"), zone="fr-par-1")
    made = _product_call(node, product_secret, {
        "source": {"zonal": "fr-par-2"}, "is_ipv6": False, "project_id": projects["z"],
        "tags": ["edge"]})
    ip("ip7", {**made, "resource_id": None}, "z", orgs["z"], None, tags=["edge"],
       zone="fr-par-2")
    v4_subnet = w["pA1/10.1.0.0/24"].id
    ip("ip8", ipam_a.book_ip(source=Source(subnet_id=v4_subnet), is_ipv6=False),
       "a", orgs["a"], "pA1", tags=[])
    # The last change of all: ip2 is the most recently updated, though not the newest.
    ipam_a.update_ip(ip_id=w["ip2"].id, tags=["web", "v6"])
    w["ip2"].tags = ("web", "v6")
    return w


# -- how one case checks a listing ----------------------------------------------------------


@dataclass
class Listing:
    """One SDK list call (`list_i_ps` or `list_i_ps_all`, ...) over the world."""

    world: World
    kind: str  # ips | vpcs | private_networks | subnets
    method: str

    @property
    def everything(self) -> list[Known]:
        return getattr(self.world, {"private_networks": "pns"}.get(self.kind, self.kind))

    @property
    def paged(self) -> bool:
        return not self.method.endswith("_all")

    def call(self, **params: Any) -> tuple[list[Any], int]:
        """(the objects answered, the total the answer announced) for `params`."""
        api = self.world.admin_ipam if self.kind == "ips" else self.world.admin_vpc
        answer = getattr(api, self.method)(**params)
        if not self.paged:
            return answer, len(answer)
        return getattr(answer, self.kind), answer.total_count

    def ids(self, **params: Any) -> list[str]:
        items, total = self.call(**params)
        if "page" not in params and "page_size" not in params:
            assert total == len(items), (params, total, len(items))
        return [i.id for i in items]

    def filters(self, matches: Callable[[Known], bool], *, may_be_empty: bool = False,
                **params: Any) -> None:
        """The call with `params` answers exactly the objects that `matches`; and the
        filter matters: some objects match, some do not."""
        expected = {o.id for o in self.everything if matches(o)}
        assert len(expected) < len(self.everything), f"{params} excludes nothing"
        assert expected or may_be_empty, f"{params} matches nothing"
        assert set(self.ids(**params)) == expected, params

    def flag(self, attribute: str, param: str) -> None:
        """A boolean filter, asked both ways."""
        for wanted in (True, False):
            self.filters(lambda o, w=wanted: bool(getattr(o, attribute)) == w,
                         **{param: wanted})

    def ordered(self, order: Any, key: Callable[[Known], Any], descending: bool) -> None:
        """The call with `order_by=order` answers everything in the order of `key`
        (equal keys in any order)."""
        by_id = {o.id: o for o in self.everything}
        got = self.ids(order_by=order)
        assert set(got) == set(by_id)
        assert [key(by_id[i]) for i in got] == sorted((key(o) for o in self.everything),
                                                      reverse=descending), order


def _creation(listing: Listing) -> Callable[[Known], Any]:
    if listing.kind == "subnets":
        # Subnets made together share their creation time: the id settles the order.
        return lambda o: o.created
    rank = {o.id: n for n, o in enumerate(listing.everything)}
    return lambda o: rank[o.id]


def _in_creation_order(listing: Listing) -> list[str]:
    return [o.id for o in sorted(listing.everything, key=_creation(listing))]


def _region(listing: Listing) -> None:
    assert set(listing.ids(region=REGION)) == {o.id for o in listing.everything}
    with pytest.raises(ScalewayException) as exc:
        listing.call(region="nl-ams")
    assert exc.value.response.status_code == 404


def _page(listing: Listing) -> None:
    """Page 2 of 3 in creation order: exactly the 4th to 6th object (of the `_all` variant:
    everything from the 4th on, page after page)."""
    in_order = _in_creation_order(listing)
    items, total = listing.call(order_by="created_at_asc", page=2, page_size=3)
    expected = in_order[3:6] if listing.paged else in_order[3:]
    assert [i.id for i in items] == expected
    assert total == (len(in_order) if listing.paged else len(expected))
    items, _ = listing.call(order_by="created_at_asc", page=99, page_size=3)
    assert items == []


def _page_size(listing: Listing) -> None:
    in_order = _in_creation_order(listing)
    items, total = listing.call(order_by="created_at_asc", page_size=2)
    if listing.paged:
        assert [i.id for i in items] == in_order[:2] and total == len(in_order)
    else:  # every page of 2, one after the other
        assert [i.id for i in items] == in_order
    with pytest.raises(ScalewayException) as exc:
        listing.call(page_size=101)
    assert exc.value.response.status_code == 400


def _order_by(orders: Any, keys: dict[str, Callable[[Listing], Callable[[Known], Any]]],
              default: str) -> Callable[[Listing], None]:
    """Every value of the SDK's order enum (one without a key here fails), and the default."""
    def case(listing: Listing) -> None:
        for order in orders:
            field_, _, direction = order.value.rpartition("_")
            assert field_ in keys, f"order_by={order.value} has no expected order"
            listing.ordered(order, keys[field_](listing), direction == "desc")
        in_order = _in_creation_order(listing)
        assert listing.ids() == (in_order[::-1] if default.endswith("_desc") else in_order)
    return case


def _name_key(listing: Listing) -> Callable[[Known], Any]:
    return lambda o: o.name


def _address_key(listing: Listing) -> Callable[[Known], Any]:
    def key(o: Known) -> tuple[int, int]:
        address = ipaddress.ip_interface(o.address).ip
        return address.version, int(address)
    return key


def _updated_key(listing: Listing) -> Callable[[Known], Any]:
    # Creation order, but ip2 (updated last of all) comes last.
    rank = _creation(listing)
    return lambda o: (o.id == listing.world["ip2"].id, rank(o))


def _attached_key(listing: Listing) -> Callable[[Known], Any]:
    return lambda o: o.attached  # 0: never attached; then in attachment order


def _mac_key(listing: Listing) -> Callable[[Known], Any]:
    return lambda o: (0, o.mac) if o.mac else (1, "")


# -- the cases, by list and parameter -----------------------------------------------------

Case = Callable[[Listing], None]


def _everything(listing: Listing, **params: Any) -> None:
    assert set(listing.ids(**params)) == {o.id for o in listing.everything}, params


def _regional(listing: Listing) -> None:
    """No regional IPs are served: true matches nothing, false filters nothing."""
    listing.filters(lambda o: False, may_be_empty=True, regional=True)
    _everything(listing, regional=False)


def _object_storage(listing: Listing) -> None:
    """Never enabled here: true matches nothing, false everything."""
    param = "object_storage_private_access_enabled"
    listing.filters(lambda o: False, may_be_empty=True, **{param: True})
    _everything(listing, **{param: False})


IP_CASES: dict[str, Case] = {
    "region": _region,
    "page": _page,
    "page_size": _page_size,
    "order_by": _order_by(ListIPsRequestOrderBy, {
        "created_at": _creation, "updated_at": _updated_key, "attached_at": _attached_key,
        "ip_address": _address_key, "mac_address": _mac_key}, "created_at_desc"),
    "project_id": lambda ls: ls.filters(lambda o: o.project == ls.world.projects["a"],
                                      project_id=ls.world.projects["a"]),
    "organization_id": lambda ls: ls.filters(lambda o: o.org == ls.world.orgs["b"],
                                           organization_id=ls.world.orgs["b"]),
    "zonal": lambda ls: ls.filters(lambda o: o.zone == "fr-par-1", zonal="fr-par-1"),
    "regional": _regional,
    "private_network_id": lambda ls: ls.filters(lambda o: o.pn == ls.world["pA1"].id,
                                              private_network_id=ls.world["pA1"].id),
    "subnet_id": lambda ls: ls.filters(lambda o: o.subnet == ls.world["pA1/10.1.0.0/24"].id,
                                     subnet_id=ls.world["pA1/10.1.0.0/24"].id),
    "vpc_id": lambda ls: ls.filters(lambda o: o.vpc == ls.world["vA1"].id,
                                  vpc_id=ls.world["vA1"].id),
    "source_vpc_id": lambda ls: ls.filters(lambda o: o.vpc == ls.world["vA1"].id,
                                         source_vpc_id=ls.world["vA1"].id),
    "attached": lambda ls: ls.flag("attached", "attached"),
    "resource_name": lambda ls: ls.filters(lambda o: "web" in (o.res_name or ""),
                                         resource_name="web"),
    "resource_id": lambda ls: ls.filters(lambda o: o.id == ls.world["ip1"].id,
                                       resource_id=ls.world["ip1"].resource_id),
    "resource_ids": lambda ls: ls.filters(
        lambda o: o.id in (ls.world["ip1"].id, ls.world["ip3"].id),
        resource_ids=[ls.world["ip1"].resource_id, ls.world["ip3"].resource_id]),
    "resource_type": lambda ls: (
        ls.filters(lambda o: o.type == "instance_server",
                  resource_type=ResourceType.INSTANCE_SERVER),
        ls.filters(lambda o: o.type == "custom", resource_type=ResourceType.CUSTOM)),
    "resource_types": lambda ls: ls.filters(
        lambda o: o.type == "instance_server",
        resource_types=[ResourceType.INSTANCE_SERVER, ResourceType.LB_SERVER]),
    "mac_address": lambda ls: ls.filters(lambda o: o.mac == "02:00:00:00:00:04",
                                       mac_address="02:00:00:00:00:04"),
    "tags": lambda ls: ls.filters(lambda o: bool({"db", "edge"} & set(o.tags)),
                                tags=["db", "edge"]),
    "is_ipv6": lambda ls: ls.flag("is_ipv6", "is_ipv6"),
    "ip_ids": lambda ls: ls.filters(lambda o: o.id in (ls.world["ip2"].id, ls.world["ip7"].id),
                                  ip_ids=[ls.world["ip2"].id, ls.world["ip7"].id]),
}


def _common(orders: Any) -> dict[str, Case]:
    """The cases every VPC-side list shares."""
    return {
        "region": _region,
        "page": _page,
        "page_size": _page_size,
        "order_by": _order_by(orders, {"created_at": _creation, "name": _name_key},
                              "created_at_asc"),
        "project_id": lambda ls: ls.filters(lambda o: o.project == ls.world.projects["a"],
                                          project_id=ls.world.projects["a"]),
        "organization_id": lambda ls: ls.filters(lambda o: o.org == ls.world.orgs["b"],
                                               organization_id=ls.world.orgs["b"]),
    }


VPC_CASES: dict[str, Case] = {
    **_common(ListVPCsRequestOrderBy),
    "name": lambda ls: ls.filters(lambda o: "alpha" in o.name, name="alpha"),
    "tags": lambda ls: ls.filters(lambda o: bool({"blue", "green"} & set(o.tags)),
                                tags=["blue", "green"]),
    "is_default": lambda ls: ls.flag("is_default", "is_default"),
    "routing_enabled": lambda ls: ls.flag("routing", "routing_enabled"),
    "object_storage_private_access_enabled": _object_storage,
}

PN_CASES: dict[str, Case] = {
    **_common(ListPrivateNetworksRequestOrderBy),
    "name": lambda ls: ls.filters(lambda o: "web" in o.name, name="web"),
    "tags": lambda ls: ls.filters(lambda o: "red" in o.tags, tags=["red"]),
    "private_network_ids": lambda ls: ls.filters(
        lambda o: o.id in (ls.world["pA2"].id, ls.world["pB1"].id),
        private_network_ids=[ls.world["pA2"].id, ls.world["pB1"].id]),
    "vpc_id": lambda ls: ls.filters(lambda o: o.vpc == ls.world["vA1"].id,
                                  vpc_id=ls.world["vA1"].id),
    "dhcp_enabled": lambda ls: ls.flag("dhcp", "dhcp_enabled"),
    "object_storage_private_access_enabled": _object_storage,
}


SUBNET_CASES: dict[str, Case] = {
    **_common(ListSubnetsRequestOrderBy),
    "subnet_ids": lambda ls: ls.filters(
        lambda o: o.id in (ls.world["pA2/10.2.0.0/24"].id, ls.world["pB1/10.1.0.0/24"].id),
        subnet_ids=[ls.world["pA2/10.2.0.0/24"].id, ls.world["pB1/10.1.0.0/24"].id]),
    "vpc_id": lambda ls: ls.filters(lambda o: o.vpc == ls.world["vA1"].id,
                                  vpc_id=ls.world["vA1"].id),
}

LISTS: dict[Callable[..., Any], tuple[str, dict[str, Case]]] = {
    IpamV1API.list_i_ps: ("ips", IP_CASES),
    IpamV1API.list_i_ps_all: ("ips", IP_CASES),
    VpcV2API.list_vp_cs: ("vpcs", VPC_CASES),
    VpcV2API.list_vp_cs_all: ("vpcs", VPC_CASES),
    VpcV2API.list_private_networks: ("private_networks", PN_CASES),
    VpcV2API.list_private_networks_all: ("private_networks", PN_CASES),
    VpcV2API.list_subnets: ("subnets", SUBNET_CASES),
    VpcV2API.list_subnets_all: ("subnets", SUBNET_CASES),
}


def _sdk_parameters() -> list[Any]:
    return [pytest.param(method.__name__, name, id=f"{method.__name__}-{name}")
            for method in LISTS
            for name in inspect.signature(method).parameters if name != "self"]


@pytest.mark.parametrize(("method", "parameter"), _sdk_parameters())
def test_every_sdk_list_parameter_is_honoured(world: World, method: str,
                                              parameter: str) -> None:
    sdk_method = next(m for m in LISTS if m.__name__ == method)
    kind, cases = LISTS[sdk_method]
    case = cases.get(parameter)
    assert case is not None, (f"the SDK's {method} has a parameter {parameter!r} that no "
                              "case here exercises: honour it, then add its case")
    case(Listing(world, kind, method))


def test_every_case_is_a_parameter_the_sdk_sends() -> None:
    for method, (_, cases) in LISTS.items():
        assert set(cases) <= set(inspect.signature(method).parameters), method.__name__
