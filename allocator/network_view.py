"""A live, read-only view of some Private Networks and their IPs, for DHCP and DNS.

There is no lease database: an IP attached to a resource with a MAC in a Private
Network *is* that NIC's lease (DESIGN.md section 2b). The view is loaded at one etcd
revision (the networks, every IP record and the DHCP declines) and kept current by
watches of the `pn/`, `ip/` and `decline/` prefixes from the next revision; a compacted
watch reloads it.

    view = await ipam.network_view([pn_id])       # loaded and following
    view.lease(pn_id, "02:00:00:00:00:01", is_ipv6=False)   # -> Lease | None
    view.named(pn_id, "web-1"); view.at("10.0.0.5")
    view.declined(pn_id, "02:00:00:00:00:01", "10.0.0.5")  # withheld from that MAC?
    await view.changed(since=view.revision, timeout=1.0)
    await view.networks_changed(since=view.network_changes)  # a network's info changed

`changed` wakes on every change, IPs included; `networks_changed` only when what a
network's service depends on changes (its name, DHCP, subnets; it appearing or going):
the agent re-opens its listeners then, and a burst of bookings does not wake it.

Lookups are O(1) dictionaries rebuilt incrementally on each event: answering a DHCP
or DNS query reads no etcd.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import netaddr

from . import retry
from .declines import Decline
from .errors import IPAMError
from .keys import Keys
from .networks import PrivateNetwork
from .records import IPRecord
from .store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """An IP of a Private Network as DHCP and DNS serve it."""

    ip_id: str
    private_network_id: str
    address: str  # without prefix length: 10.0.0.5
    prefixlen: int
    is_ipv6: bool
    mac: str | None  # lowercase, colon-separated; None when not attached to a NIC
    name: str | None  # the resource's name; None when not attached or unnamed
    reverses: tuple[str, ...]  # the IP's reverse DNS hostnames (PTR), when set

    @classmethod
    def of(cls, record: IPRecord) -> Lease:
        res = record.resource
        return cls.of_json(record.id, record.private_network_id or "", record.address,
                           record.is_ipv6, res.mac_address if res else None,
                           res.name if res else None,
                           tuple(r.hostname for r in record.reverses))

    @classmethod
    def of_json(cls, ip_id: str, pn_id: str, address: str, is_ipv6: bool, mac: str | None,
                name: str | None, reverses: tuple[str, ...]) -> Lease:
        # Records hold normalised CIDRs (`10.0.0.5/24`): split, not parsed, on the path
        # every watch event of a served network takes.
        host, _, prefixlen = address.partition("/")
        return cls(ip_id, pn_id, host, int(prefixlen), is_ipv6, mac, name, reverses)


@dataclass(frozen=True)
class SubnetInfo:
    """One subnet of a served network, with the addresses the service itself uses."""

    id: str
    cidr: str
    gateway: str  # the subnet's gateway address (offset 1): the DHCP router option
    server: str  # the address "reserved by the provider" (offset size-2): the DHCP/DNS server

    @classmethod
    def of(cls, subnet_id: str, cidr: str) -> SubnetInfo:
        net = netaddr.IPNetwork(cidr)
        return cls(subnet_id, str(net.cidr), str(net[1]), str(net[net.size - 2]))

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.cidr

    @property
    def prefixlen(self) -> int:
        return int(self.cidr.rsplit("/", 1)[1])


@dataclass(frozen=True)
class NetworkInfo:
    """A served Private Network: what DHCP and DNS need of it."""

    id: str
    name: str
    dhcp_enabled: bool
    subnets: tuple[SubnetInfo, ...]
    project_id: str = ""
    region: str = ""

    @classmethod
    def of(cls, pn: PrivateNetwork) -> NetworkInfo:
        return cls(pn.id, pn.name, pn.dhcp_enabled,
                   tuple(SubnetInfo.of(s.id, s.subnet) for s in pn.subnets), pn.project_id,
                   pn.region)

    @property
    def domain(self) -> str:
        """The DNS zone of the network: `<name>.internal`."""
        return f"{self.name.lower()}.internal"

    def subnet(self, is_ipv6: bool) -> SubnetInfo | None:
        return next((s for s in self.subnets if s.is_ipv6 == is_ipv6), None)


class NetworkView:
    """The served networks and their IPs (see the module docstring).

    `revision`: the etcd revision of the newest change applied to the view.
    """

    def __init__(self, store: Store, keys: Keys, pn_ids: Iterable[str]) -> None:
        self.store, self.keys = store, keys
        self.pn_ids = frozenset(pn_ids)
        self.revision = 0
        self.reloads = 0
        self._networks: dict[str, NetworkInfo] = {}
        self._leases: dict[str, Lease] = {}  # ip id -> lease (served networks only)
        self._by_mac: dict[tuple[str, str, bool], Lease] = {}
        self._by_name: dict[tuple[str, str], dict[str, Lease]] = {}
        self._by_address: dict[str, Lease] = {}
        self._declines: dict[str, Decline] = {}  # etcd key -> decline (served networks only)
        self._withheld: set[tuple[str, str, str]] = set()  # (network, MAC, address)
        self._decline_counts: Counter[str] = Counter()
        self._changed = asyncio.Event()
        # Bumped (at least once) whenever a served network's `NetworkInfo` changes, appears
        # or goes, a reload that changed one included; see `networks_changed`.
        self.network_changes = 0
        self._networks_changed = asyncio.Event()
        # Waiters for one NIC's lease (see `leased`), woken by the change of that NIC only:
        # a waiter per booking woken by every change would cost O(waiters) per event.
        self._awaited: dict[tuple[str, str, bool], list[asyncio.Future[Lease | None]]] = {}
        self._follow: asyncio.Task[None] | None = None

    # -- lookups (no etcd) --------------------------------------------------------------

    def networks(self) -> list[NetworkInfo]:
        return list(self._networks.values())

    def network(self, pn_id: str) -> NetworkInfo | None:
        return self._networks.get(pn_id)

    def lease(self, pn_id: str, mac: str, is_ipv6: bool) -> Lease | None:
        """The IP attached to `mac` in `pn_id`, of that family, now."""
        return self._by_mac.get((pn_id, mac.lower(), is_ipv6))

    def named(self, pn_id: str, name: str) -> list[Lease]:
        """Every attached IP whose resource is called `name` (case-insensitive)."""
        return list(self._by_name.get((pn_id, name.lower()), {}).values())

    def at(self, address: str) -> Lease | None:
        """The IP of a served network holding `address`."""
        return self._by_address.get(address)

    def leases(self, pn_id: str) -> list[Lease]:
        return [lease for lease in self._leases.values() if lease.private_network_id == pn_id]

    def declined(self, pn_id: str, mac: str, address: str) -> bool:
        """Whether `mac` declined `address` (as its IP record spells it) in `pn_id`: DHCP
        withholds it from that MAC until an operator clears the decline."""
        return bool(self._withheld) and (pn_id, mac.lower(), address) in self._withheld

    def decline_count(self, pn_id: str) -> int:
        """How many declines the network holds (`allocator.declines` bounds them)."""
        return self._decline_counts[pn_id]

    def declines(self, pn_id: str | None = None) -> list[Decline]:
        """The declines of one served network, or of all of them."""
        return [d for d in self._declines.values()
                if pn_id in (None, d.private_network_id)]

    async def changed(self, since: int, timeout: float) -> bool:
        """Wait (at most `timeout` s) for a revision after `since`; whether one came."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.revision <= since:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            event = self._changed
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                return False
        return True

    async def networks_changed(self, since: int, timeout: float | None = None) -> bool:
        """Wait (at most `timeout` s; None: for as long as it takes) until a served
        network's info changed after `network_changes` was `since`; whether one did.
        Snapshot `network_changes` before reading the networks, so that no change made
        while they are acted on is missed."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.network_changes <= since:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(self._networks_changed.wait(), left)
            except TimeoutError:
                return False
        return True

    async def leased(self, pn_id: str, mac: str, is_ipv6: bool, address: str,
                     timeout: float) -> bool:
        """Wait (at most `timeout` s) until the view holds `address` for `mac` in `pn_id`;
        whether it did (it may have changed again since, in the same batch of events).
        Woken only by changes of that MAC, whatever else changes."""
        key = (pn_id, mac.lower(), is_ipv6)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:  # bounded: each turn waits for a change of this MAC, until the deadline
            lease = self._by_mac.get(key)
            if lease is not None and lease.address == address:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            woken: asyncio.Future[Lease | None] = loop.create_future()
            self._awaited.setdefault(key, []).append(woken)
            try:
                shown = await asyncio.wait_for(woken, left)
            except TimeoutError:
                return False
            finally:
                waiters = self._awaited.get(key)
                if waiters is not None and woken in waiters:
                    waiters.remove(woken)
                    if not waiters:
                        del self._awaited[key]
            if shown is not None and shown.address == address:
                return True

    def _wake(self, key: tuple[str, str, bool]) -> None:
        """Tell the waiters of `key` what the view holds for it now."""
        shown = self._by_mac.get(key)
        for woken in self._awaited.pop(key, ()):
            if not woken.done():
                woken.set_result(shown)

    # -- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the view at one revision and follow it from the next."""
        await self._load()

    async def close(self) -> None:
        if self._follow is not None:
            self._follow.cancel()

    async def _load(self) -> None:
        pn_kvs, revision = await self.store.scan(self.keys.private_network())
        ip_kvs, _ = await self.store.scan(self.keys.ip(), revision=revision)
        decline_kvs, _ = await self.store.scan(self.keys.decline(), revision=revision)
        before = self._networks
        self._networks, self._leases = {}, {}
        self._by_mac, self._by_name, self._by_address = {}, {}, {}
        self._declines, self._withheld, self._decline_counts = {}, set(), Counter()
        for kv in pn_kvs:
            self._network_changed(kv.key, kv.value)
        if self._networks != before:  # a network gone while the watch was lost included
            self._note_network_change()
        for kv in ip_kvs:
            self._ip_changed(kv.key, kv.value)
        for kv in decline_kvs:
            self._decline_changed(kv.key, kv.value)
        for key in list(self._awaited):  # a reload may have brought what they wait for
            self._wake(key)
        self.reloads += 1
        self._advance(revision)
        if self._follow is not None:
            self._follow.cancel()
        self._follow = asyncio.ensure_future(self._watch(revision + 1))

    async def _watch(self, start: int) -> None:
        prefixes = {"pn": self.keys.private_network(), "ip": self.keys.ip(),
                    "decline": self.keys.decline()}
        appliers = {"pn": self._network_changed, "ip": self._ip_changed,
                    "decline": self._decline_changed}
        streams = {name: self.store.watch(prefix, start).__aiter__()
                   for name, prefix in prefixes.items()}
        pending = {asyncio.ensure_future(anext(stream)): name
                   for name, stream in streams.items()}
        try:
            while True:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for step in done:
                    name = pending.pop(step)
                    events, revision = step.result()
                    apply = appliers[name]
                    for ev in events:  # in the order of their revisions
                        apply(ev.key, None if ev.deleted else ev.value)
                    pending[asyncio.ensure_future(anext(streams[name]))] = name
                    # The newest revision applied, from either stream (a stream with no
                    # change to report is silent, so no lower bound is known cheaply).
                    if events:
                        self._advance(revision)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - compaction or a lost stream: reload
            log.warning("network view: watch ended (%s), reloading", err)
            asyncio.ensure_future(self._reload_with_backoff())
        finally:
            for step in pending:
                step.cancel()

    async def _reload_with_backoff(self) -> None:
        async for _ in retry.RELOAD.attempts():
            try:
                await self._load()
                return
            except IPAMError:
                continue

    def _advance(self, revision: int) -> None:
        if revision > self.revision:
            self.revision = revision
            event, self._changed = self._changed, asyncio.Event()
            event.set()

    def _note_network_change(self) -> None:
        self.network_changes += 1
        event, self._networks_changed = self._networks_changed, asyncio.Event()
        event.set()

    # -- applying changes ---------------------------------------------------------------

    def _network_changed(self, key: str, value: bytes | None) -> None:
        pn_id = self.keys.last_segment(key)
        if pn_id not in self.pn_ids:
            return
        old = self._networks.get(pn_id)
        if value is None:
            self._networks.pop(pn_id, None)
            new = None
        else:
            new = NetworkInfo.of(PrivateNetwork.from_json(json.loads(value)))
            self._networks[pn_id] = new
        # Compared as values: a change of tags or of `updated_at` alone wakes nobody.
        if new != old:
            self._note_network_change()

    def _ip_changed(self, key: str, value: bytes | None) -> None:
        ip_id = self.keys.last_segment(key)
        old = self._leases.pop(ip_id, None)
        if old is not None:
            self._unindex(old)
        if value is None:
            return
        data = json.loads(value)
        pn_id = data.get("private_network_id")
        if pn_id not in self.pn_ids:
            return  # another network's IP: no record built for it
        res = data.get("resource") or {}
        lease = Lease.of_json(ip_id, pn_id, data["address"], data["is_ipv6"],
                              res.get("mac_address"), res.get("name"),
                              tuple(r["hostname"] for r in data.get("reverses") or ()))
        self._leases[ip_id] = lease
        self._by_address[lease.address] = lease
        if lease.mac:
            mac_key = (lease.private_network_id, lease.mac, lease.is_ipv6)
            self._by_mac[mac_key] = lease
            if mac_key in self._awaited:
                self._wake(mac_key)
        if lease.name:
            self._by_name.setdefault((lease.private_network_id, lease.name.lower()), {})[
                ip_id] = lease

    def _decline_changed(self, key: str, value: bytes | None) -> None:
        old = self._declines.pop(key, None)
        if old is not None:
            self._withheld.discard((old.private_network_id, old.mac_address, old.address))
            self._decline_counts[old.private_network_id] -= 1
        if value is None:
            return
        decline = Decline.from_json(json.loads(value))
        if decline.private_network_id not in self.pn_ids:
            return
        self._declines[key] = decline
        self._withheld.add((decline.private_network_id, decline.mac_address, decline.address))
        self._decline_counts[decline.private_network_id] += 1

    def _unindex(self, lease: Lease) -> None:
        if self._by_address.get(lease.address) is lease:
            del self._by_address[lease.address]
        key = (lease.private_network_id, lease.mac or "", lease.is_ipv6)
        if self._by_mac.get(key) is lease:
            del self._by_mac[key]
        if lease.name:
            named = self._by_name.get((lease.private_network_id, lease.name.lower()))
            if named is not None:
                named.pop(lease.ip_id, None)
