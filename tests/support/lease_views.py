"""A stand-in for NetworkView's DHCP lookups, for the pure DHCPv4 and v6 tests."""

from __future__ import annotations

from collections.abc import Iterable

from allocator.contract import Lease, NetworkInfo


class FakeView:
    """The lookups the responders make of `NetworkView`, over plain dicts and sets.

    `record_decline` stands for IPAM's and the view's watch together: the decline is
    in the view as soon as it is recorded.
    """

    def __init__(self, networks: list[NetworkInfo], leases: Iterable[Lease] = ()) -> None:
        self._networks = {n.id: n for n in networks}
        self._leases: dict[tuple[str, str, bool], Lease] = {}
        self.withheld: set[tuple[str, str, str]] = set()  # (network, MAC, address)
        for one in leases:
            self.attach(one)

    def networks(self) -> list[NetworkInfo]:
        return list(self._networks.values())

    def network(self, pn_id: str) -> NetworkInfo | None:
        return self._networks.get(pn_id)

    def lease(self, pn_id: str, mac: str, is_ipv6: bool) -> Lease | None:
        return self._leases.get((pn_id, mac.lower(), is_ipv6))

    def declined(self, pn_id: str, mac: str, address: str) -> bool:
        return (pn_id, mac.lower(), address) in self.withheld

    def decline_count(self, pn_id: str) -> int:
        return sum(1 for network, _, _ in self.withheld if network == pn_id)

    async def record_decline(self, pn_id: str, mac: str, address: str) -> None:
        self.withheld.add((pn_id, mac, address))

    def attach(self, one: Lease) -> None:
        assert one.mac is not None
        self._leases[(one.private_network_id, one.mac, one.is_ipv6)] = one

    def detach(self, pn_id: str, mac: str) -> None:
        """The MAC's IPs in the network, of either family, are detached."""
        for is_ipv6 in (False, True):
            self._leases.pop((pn_id, mac, is_ipv6), None)
