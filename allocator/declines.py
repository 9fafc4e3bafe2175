"""DHCP declines: an address a client refused because it found it in use (DHCPDECLINE,
RFC 2131 4.3.3; Decline, RFC 8415 18.4.8), withheld from that MAC by every agent until
an operator clears it.

    {p}decline/{pn_id}/{mac}/{address}   one decline: the IP, when, which agent (JSON)

Kept in etcd rather than in an agent's memory, so a restarted agent and every other
agent of the network withhold the address too: each `NetworkView` loads the declines
of its networks with the IPs, at the same revision, and watches them.

A client chooses what it declines, so what one can make etcd hold is bounded:
- only the address IPAM holds for that MAC in that network now is recorded; the IP
  record is a guard of the write, so a detach racing the decline wins;
- once per (network, MAC, address): a repeat writes nothing;
- at most `DECLINE_LIMIT` per network: the write is guarded by "nothing under the
  network's declines was written since they were counted", so declines recorded at
  once by several agents cannot overshoot the bound. Past it, `TooManyDeclines`.

Detaching, moving or releasing the IP leaves its declines in place. A decline says the
address was found in use on the segment of that MAC: a change of IPAM's records does
not make the other machine go away, and the same address attached to that MAC again
must stay withheld. Only an operator, who can look, clears one (`clear`); the bound
keeps what is left behind from growing. The declines of a deleted Private Network are
left too, and cleared the same way (the filters of `clear` do not ask that the network
still exists).

Errors: InvalidArgument (bad input, nothing read), `AddressNotHeld` and
`TooManyDeclines` (both PreconditionFailed: nothing written), Conflict (the network's
declines kept changing), StoreError.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import asdict, dataclass
from typing import Any

from . import retry
from .errors import Conflict, InvalidArgument, PreconditionFailed, StorageFull, StoreError
from .keys import Keys
from .records import check_uuid, normalize_mac, now
from .store import KV, MAX_TXN_OPS, Store
from .txn import GuardedTxn, commit

DECLINE_LIMIT = 1000
"""The most declines one Private Network holds: a flood of declines cannot grow etcd
further than this times the number of networks."""

ADDRESS_NOT_HELD = "address_not_held"
TOO_MANY_DECLINES = "too_many_declines"
_AGENT_MAX = 255
# A clear deletes each decline in a guarded transaction of its own, nested in a request:
# etcd gives the nested ones what the request leaves of its operations per transaction.
_CLEARED_PER_REQUEST = MAX_TXN_OPS // 2


class AddressNotHeld(PreconditionFailed):
    """The MAC does not hold that address in that network (any more): nothing to withhold."""

    def __init__(self, pn_id: str, mac: str, address: str) -> None:
        super().__init__(ADDRESS_NOT_HELD, f"{mac} holds no IP {address} in Private Network "
                                           f"{pn_id}: a decline of it is not recorded")


class TooManyDeclines(PreconditionFailed):
    """The network holds `limit` declines already; this one is not recorded."""

    def __init__(self, pn_id: str, limit: int) -> None:
        super().__init__(TOO_MANY_DECLINES, f"Private Network {pn_id} holds {limit} DHCP "
                                            "declines, the most it may: clear some first")
        self.limit = limit


@dataclass(frozen=True)
class Decline:
    """One recorded decline: `mac_address` refused `address`, its IP `ip_id` in the network."""

    private_network_id: str
    mac_address: str
    address: str  # without prefix length, as the IP record spells it
    is_ipv6: bool
    ip_id: str
    region: str
    declined_at: str
    agent: str  # which agent recorded it: a hostname, or what `ipam dhcp --agent-id` says

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decline:
        return cls(data["private_network_id"], data["mac_address"], data["address"],
                   data["is_ipv6"], data["ip_id"], data["region"], data["declined_at"],
                   data["agent"])


class Declines:
    """The DHCP declines kept under one prefix (see the module docstring)."""

    def __init__(self, store: Store, keys: Keys, limit: int = DECLINE_LIMIT) -> None:
        self.store, self.keys, self.limit = store, keys, limit

    async def record(self, pn_id: str, mac: str, address: str, agent: str = "") -> Decline:
        """Keep that `mac` declined `address`, the IP it holds in Private Network `pn_id`.

        Idempotent: a decline recorded already is answered as it is, and nothing is
        written. AddressNotHeld when the MAC holds no such IP now, TooManyDeclines past
        the network's bound.
        """
        pn_id = check_uuid(pn_id, "private_network_id")
        mac = normalize_mac(mac)
        asked = _address(address)
        if not isinstance(agent, str) or len(agent) > _AGENT_MAX or not agent.isprintable():
            raise InvalidArgument("agent", f"must be printable, at most {_AGENT_MAX} characters")
        network = self.keys.decline(pn_id)
        async for _ in retry.RACES.attempts():
            held, recorded, (count, counted_at) = await asyncio.gather(
                self.store.get(self.keys.mac(mac, f"pn-{pn_id}", asked.version == 6)),
                self.store.get(self.keys.decline(pn_id, mac, str(asked))),
                self.store.count(network))
            if recorded is not None:
                return _decline(recorded)
            ip = None if held is None else await self.store.get(self.keys.ip(held.value.decode()))
            record: dict[str, Any] = {} if ip is None else json.loads(ip.value)
            if ip is None or not _holds(record, pn_id, mac, asked):
                raise AddressNotHeld(pn_id, mac, str(asked))
            if count >= self.limit:
                raise TooManyDeclines(pn_id, self.limit)
            # The record's own spelling of the address: the one every view looks up.
            host = record["address"].partition("/")[0]
            decline = Decline(pn_id, mac, host, record["is_ipv6"], record["id"],
                              record["region"], now(), agent)
            key = self.keys.decline(pn_id, mac, host)
            txn = (GuardedTxn().absent("decline", key)
                   .unchanged("ip", ip.key, ip.mod_revision)
                   .prefix_unchanged_since("declines", network, counted_at)
                   .put(key, json.dumps(decline.to_json())))
            try:
                outcome = await commit(self.store, txn)
            except StorageFull:
                raise  # refused whole, nothing applied
            except StoreError:
                # An error is not a no: whoever wrote the key, the decline is recorded.
                seen = await self.store.get(key)
                if seen is not None:
                    return _decline(seen)
                continue
            if outcome.succeeded:
                return decline
            seen = outcome.found("decline")
            if "decline" in outcome.failed and seen is not None:
                return _decline(seen)  # another agent recorded it a moment ago
            # The IP changed (detached?) or another decline of the network came in
            # between: read and count again.
        raise Conflict(f"the DHCP declines of Private Network {pn_id} kept changing; "
                       "try again")

    async def find(self, region: str, pn_id: str | None = None,
                   mac: str | None = None) -> list[Decline]:
        """The declines of the region's networks (of one network, of one MAC), in key
        order: by network, MAC, then address."""
        return [d for _, d in await self._matching(region, pn_id, mac)]

    async def clear(self, region: str, pn_id: str | None = None,
                    mac: str | None = None) -> list[Decline]:
        """Delete the declines `find` names: their addresses are offered again to those
        MACs. Returns the ones this call deleted (one recorded again meanwhile stays)."""
        found = await self._matching(region, pn_id, mac)
        cleared: list[Decline] = []
        for start in range(0, len(found), _CLEARED_PER_REQUEST):
            chunk = found[start:start + _CLEARED_PER_REQUEST]
            # Each delete guarded by the revision listed: a decline deleted and recorded
            # again since is a new one, which the operator has not seen.
            resp = await self.store.txn([], [
                GuardedTxn().unchanged("decline", kv.key, kv.mod_revision).delete(kv.key)
                .request() for kv, _ in chunk])
            cleared += [decline for (_, decline), r in zip(chunk, resp.responses, strict=True)
                        if r.response_txn.succeeded]
        return cleared

    async def _matching(self, region: str, pn_id: str | None, mac: str | None
                        ) -> list[tuple[KV, Decline]]:
        if pn_id is not None:
            pn_id = check_uuid(pn_id, "private_network_id")
        if mac is not None:
            mac = normalize_mac(mac)
        if pn_id is None:
            prefix = self.keys.decline()
        elif mac is None:
            prefix = self.keys.decline(pn_id)
        else:
            prefix = self.keys.decline(pn_id, mac)
        kvs, _ = await self.store.scan(prefix)
        found = [(kv, _decline(kv)) for kv in kvs]
        return [(kv, d) for kv, d in found
                if d.region == region and mac in (None, d.mac_address)]


def _decline(kv: KV) -> Decline:
    return Decline.from_json(json.loads(kv.value))


def _address(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            pass
    raise InvalidArgument("address", f"{value!r} is not an IP address", "format")


def _holds(record: dict[str, Any], pn_id: str, mac: str,
           asked: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether the IP `record` is `asked`, in `pn_id`, attached to `mac`."""
    resource = record.get("resource") or {}
    return (record.get("private_network_id") == pn_id
            and resource.get("mac_address") == mac
            and ipaddress.ip_address(record["address"].partition("/")[0]) == asked)
