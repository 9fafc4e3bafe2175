"""The etcd key layout, in one place.

    {p}vpc/{vpc_id}                       VPC
    {p}pn/{pn_id}                         Private Network
    {p}vpcdefault/{region}/{project_id}   the project's default VPC in a region -> VPC id
    {p}vpcpn/{vpc_id}/{pn_id}             Private Networks of a VPC (counts, delete guard)
    {p}vpcnet/{vpc_id}/{subnet_id}        CIDR of each subnet of a VPC (overlap checks)
    {p}projvpc/{project_id}/{region}/{vpc_id}  VPCs of a project (tenant lists, VPC quota)
    {p}projpn/{project_id}/{region}/{pn_id}    Private Networks of a project -> VPC id
                                          (tenant lists, Private Network quota)
    {p}projorg/{project_id}               the project's organization id, set once
                                          (`organizations`)
    {p}quota/{project_id}                 the project's quota override: JSON of the
                                          quotas that differ from the nodes' defaults
                                          (`quotas.QuotaOverrides`; absent: the defaults)
    {p}src/{source_id}/meta               source (subnet or zonal pool)
    {p}src/{source_id}/a/{offset}         held address -> IP id (offset in fixed-width hex)
    {p}src/{source_id}/freed              last release in the source (cheap "still full?")
    {p}src/{source_id}/c/{inverted time}/{ip_id}  IPs of a source, newest first (listing)
    {p}zone/{region}/{zone}/{source_id}   zonal pools of a zone
    {p}ip/{ip_id}                         IP record
    {p}ix/project/{project_id}/{region}/{inverted time}/{ip_id}   IPs of a project
    {p}ix/res/{resource_id}/{ip_id}       IPs attached to a resource
    {p}ix/mac/{mac}/{scope}[/v6]          the IPv4 (IPv6) holding a MAC in a network or zone
    {p}ix/tag/{tag}/{project_id}/{ip_id}  IPs carrying a tag (tag percent-encoded), per project
    {p}idem/{scope}/{key}                 idempotency key -> first result (leased, 24 h)
    {p}decline/{pn_id}/{mac}/{address}    a DHCP decline: withheld from that MAC (`declines`)
    {p}auth/secret/{sha256 of secret}     API key record, found by its secret
    {p}auth/key/{access_key}              the hash of its secret, found by access key
    {p}expiry/{time}/{ip_id}              IPs that expire, soonest first (`expiry`)
    {p}ev/{project_id}/{seconds}/{ip_id}.{random}  one IP lifecycle event (leased,
                                          `events`: their order is their mod revision)
    {p}compactor                          the node that compacts etcd's history (leased)
    {p}expirer                            the node that releases expired IPs (leased)
    {p}schema                             schema version of the data (and a restore's progress)

Every key of one held address is written in the same transaction, so an index
never disagrees with the data. Keys are built and taken apart here only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, unquote


@dataclass(frozen=True)
class Keys:
    """Key builders under one prefix (a deployment, or one test)."""

    prefix: str = "/ipam/"

    def schema(self) -> str:
        """The schema version of everything under the prefix (see `schema`)."""
        return f"{self.prefix}schema"

    def vpc(self, vpc_id: str = "") -> str:
        return f"{self.prefix}vpc/{vpc_id}"

    def private_network(self, pn_id: str = "") -> str:
        return f"{self.prefix}pn/{pn_id}"

    def default_vpc(self, region: str, project_id: str) -> str:
        return f"{self.prefix}vpcdefault/{region}/{project_id}"

    def vpc_private_networks(self, vpc_id: str = "", pn_id: str = "") -> str:
        """The Private Networks of a VPC (all VPCs' with no vpc_id)."""
        if not vpc_id:
            return f"{self.prefix}vpcpn/"
        return f"{self.prefix}vpcpn/{vpc_id}/{pn_id}"

    def vpc_networks(self, vpc_id: str) -> str:
        return f"{self.prefix}vpcnet/{vpc_id}/"

    def vpc_network(self, vpc_id: str, subnet_id: str) -> str:
        return f"{self.prefix}vpcnet/{vpc_id}/{subnet_id}"

    def project_vpcs(self, project_id: str, region: str = "", vpc_id: str = "") -> str:
        """The VPCs of a project, per region: a tenant's list reads its own range only, and
        the VPC quota counts it (all regions' without a region)."""
        if not region:
            return f"{self.prefix}projvpc/{project_id}/"
        return f"{self.prefix}projvpc/{project_id}/{region}/{vpc_id}"

    def project_private_networks(self, project_id: str, region: str = "",
                                 pn_id: str = "") -> str:
        """The Private Networks of a project, per region, each holding its VPC's id (a
        tenant's VPC list counts its networks from them); the Private Network quota counts
        it (all regions' without a region)."""
        if not region:
            return f"{self.prefix}projpn/{project_id}/"
        return f"{self.prefix}projpn/{project_id}/{region}/{pn_id}"

    def project_organization(self, project_id: str = "") -> str:
        """The organization of a project, set once (every project's without one)."""
        return f"{self.prefix}projorg/{project_id}"

    def quota_override(self, project_id: str = "") -> str:
        """The quotas a project holds instead of the nodes' defaults (every project's
        without one)."""
        return f"{self.prefix}quota/{project_id}"

    def source(self, source_id: str = "") -> str:
        return f"{self.prefix}src/{source_id}/meta" if source_id else f"{self.prefix}src/"

    def addresses(self, source_id: str) -> str:
        return f"{self.prefix}src/{source_id}/a/"

    def address(self, source_id: str, offset_hex: str) -> str:
        return f"{self.prefix}src/{source_id}/a/{offset_hex}"

    def freed(self, source_id: str) -> str:
        """Written by every release in the source: its revision says "nothing freed since"."""
        return f"{self.prefix}src/{source_id}/freed"

    def created(self, source_id: str, created_at: str = "", ip_id: str = "") -> str:
        """Creation index of a source, newest first in key order (the default list order)."""
        if not created_at:
            return f"{self.prefix}src/{source_id}/c/"
        return f"{self.prefix}src/{source_id}/c/{newest_first(created_at)}/{ip_id}"


    def zone_pools(self, region: str, zone: str = "") -> str:
        return f"{self.prefix}zone/{region}/{zone}/" if zone else f"{self.prefix}zone/{region}/"

    def zone_pool(self, region: str, zone: str, source_id: str) -> str:
        return f"{self.prefix}zone/{region}/{zone}/{source_id}"

    def ip(self, ip_id: str = "") -> str:
        return f"{self.prefix}ip/{ip_id}"

    def by_project(self, project_id: str, region: str = "", created_at: str = "",
                   ip_id: str = "") -> str:
        """IPs of a project, per region, newest first in key order (listing); every
        project's without one."""
        if not project_id:
            return f"{self.prefix}ix/project/"
        if not region:
            return f"{self.prefix}ix/project/{project_id}/"
        if not created_at:
            return f"{self.prefix}ix/project/{project_id}/{region}/"
        return f"{self.prefix}ix/project/{project_id}/{region}/{newest_first(created_at)}/{ip_id}"

    def by_resource(self, resource_id: str = "", ip_id: str = "") -> str:
        """IPs attached to a resource (every attached IP's without one)."""
        if not resource_id:
            return f"{self.prefix}ix/res/"
        return f"{self.prefix}ix/res/{resource_id}/{ip_id}"

    def by_tag(self, tag: str, project_id: str = "", ip_id: str = "") -> str:
        """IPs carrying `tag` in a project (in every project without one). The tag is
        percent-encoded: any printable text is a tag, and a "/" must not reach the key."""
        if not project_id:
            return f"{self.prefix}ix/tag/{quote(tag, safe='')}/"
        return f"{self.prefix}ix/tag/{quote(tag, safe='')}/{project_id}/{ip_id}"

    def mac(self, mac: str, scope: str = "", is_ipv6: bool = False) -> str:
        """The IP holding `mac` in a scope (`pn-<id>` or `zone-<zone>`), per family: a
        dual-stack NIC holds one IPv4 and one IPv6 (all of a MAC's without a scope)."""
        if not scope:
            return f"{self.prefix}ix/mac/{mac}/"
        return f"{self.prefix}ix/mac/{mac}/{scope}" + ("/v6" if is_ipv6 else "")

    def decline(self, pn_id: str = "", mac: str = "", address: str = "") -> str:
        """`mac` declined `address` in `pn_id` (DHCP); with fewer arguments, the prefix of
        that MAC's declines in the network, of the network's, or of every network's."""
        if not pn_id:
            return f"{self.prefix}decline/"
        if not mac:
            return f"{self.prefix}decline/{pn_id}/"
        return f"{self.prefix}decline/{pn_id}/{mac}/{address}"

    def idempotency(self, scope: str, key: str) -> str:
        return f"{self.prefix}idem/{scope}/{key}"

    def auth(self, suffix: str = "") -> str:
        return f"{self.prefix}auth/{suffix}"

    def api_key_by_secret(self, secret_digest: str = "") -> str:
        """An API key's record, found by the hash of its secret (all of them without one)."""
        return f"{self.prefix}auth/secret/{secret_digest}"

    def api_key_by_access(self, access_key: str) -> str:
        """The hash of an API key's secret, found by its access key."""
        return f"{self.prefix}auth/key/{access_key}"

    def expiry(self, expires_at: str = "", ip_id: str = "") -> str:
        """The expiry index key of an IP expiring at `expires_at` (a stored time); every
        expiring IP's without one. Fixed-width hex microseconds: key order is time order."""
        if not expires_at:
            return f"{self.prefix}expiry/"
        return f"{self.prefix}expiry/{format(_micros(expires_at), '016x')}/{ip_id}"

    def expiry_end(self, moment: str) -> str:
        """The end of the range of expiry keys due at `moment` (a stored time): it sorts
        after every key of a time up to `moment`, before every later one."""
        return f"{self.prefix}expiry/{format(_micros(moment) + 1, '016x')}"

    def event(self, project_id: str, seconds: int, ip_id: str, suffix: str) -> str:
        """One event of `ip_id` written at `seconds` (the writer's clock) in its project's
        feed; `suffix` makes it unique (see `events`)."""
        return f"{self.prefix}ev/{project_id}/{seconds:08x}/{ip_id}.{suffix}"

    def events(self, project_id: str = "", seconds: int | None = None) -> str:
        """Every project's events; one project's; one project's from `seconds` on (a range
        start: the key sorts before every event written at `seconds` or later)."""
        if not project_id:
            return f"{self.prefix}ev/"
        if seconds is None:
            return f"{self.prefix}ev/{project_id}/"
        return f"{self.prefix}ev/{project_id}/{max(seconds, 0):08x}"

    def compactor(self) -> str:
        """Held, on its lease, by the one node that compacts etcd (see `compactor`)."""
        return f"{self.prefix}compactor"

    def expirer(self) -> str:
        """Held, on its lease, by the one node that releases expired IPs (see `expiry`)."""
        return f"{self.prefix}expirer"

    # -- taking keys apart ----------------------------------------------------------

    @staticmethod
    def last_segment(key: str) -> str:
        """The id a key ends with: subnet of a `vpcnet` key, pool of a `zone` key, IP of an
        index key, Private Network of a `vpcpn` key."""
        return key.rsplit("/", 1)[1]

    @staticmethod
    def vpc_of_private_network_key(key: str) -> str:
        """The VPC of a `vpcpn/{vpc_id}/{pn_id}` key."""
        return key.rsplit("/", 2)[1]

    @staticmethod
    def created_entry(key: str) -> tuple[str, str]:
        """(inverted time, IP id) of a creation-index key (of a source or a project)."""
        inverted_time, ip_id = key.rsplit("/", 2)[1:]
        return inverted_time, ip_id

    @staticmethod
    def tag_entry(key: str) -> tuple[str, str, str]:
        """(tag, project id, IP id) of a tag-index key `ix/tag/{tag}/{project_id}/{ip_id}`."""
        tag, project_id, ip_id = key.rsplit("/", 3)[1:]
        return unquote(tag), project_id, ip_id

    @staticmethod
    def expiry_entry(key: str) -> tuple[int, str]:
        """(time in microseconds since the epoch, IP id) of an expiry index key."""
        micros, ip_id = key.rsplit("/", 2)[1:]
        return int(micros, 16), ip_id

    @staticmethod
    def address_offset(key: str) -> int:
        """The offset of a held-address key `src/{source_id}/a/{offset}`."""
        return int(key.rsplit("/", 1)[1], 16)

    def kind(self, key: str) -> tuple[str, list[str]]:
        """What a key under this prefix is, and its segments after the prefix:

        `source`, `address`, `freed`, `created` (of a source), `ip`, `by_project`,
        `by_resource`, `mac`, `by_tag`, `expiry`, or the first segment for anything else.
        """
        parts = key[len(self.prefix):].split("/")
        head = parts[0]
        if head == "src" and len(parts) >= 3:
            return {"meta": "source", "a": "address", "freed": "freed",
                    "c": "created"}.get(parts[2], "src"), parts
        if head == "ix" and len(parts) >= 2:
            return {"project": "by_project", "res": "by_resource",
                    "mac": "mac", "tag": "by_tag"}.get(parts[1], "ix"), parts
        return head, parts


def newest_first(created_at: str) -> str:
    """A fixed-width hex key that sorts later timestamps first."""
    return format((1 << 64) - 1 - _micros(created_at), "016x")


def _micros(stored_time: str) -> int:
    """A stored time (RFC 3339, UTC) in whole microseconds since the epoch."""
    moment = datetime.fromisoformat(stored_time)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond
