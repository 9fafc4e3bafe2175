"""The allocator's one front door: everything the gateway and the DHCP/DNS agent may use.

Callers outside `allocator/` import from this module only (an import-linter
contract in pyproject.toml says so); what is not named here is the allocator's
own business and may change without notice.

    from allocator.contract import IPAM, AddressAsk, Caller
    ipam = await IPAM.connect(["127.0.0.1:2379"])
"""

from __future__ import annotations

from . import errors
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
from .errors import ArgumentProblem
from .ipam import IPAM, BookRequest, Caller
from .listing import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, ORDERS, IPFilter
from .records import CUSTOM, IPRecord, Resource, Reverse, normalize_mac
from .sources import ReservedAddress, Source
from .store import EtcdSecurity
from .topology import VPC, PrivateNetwork, Subnet

__all__ = [
    "ADMIN", "CUSTOM", "DEFAULT_PAGE_SIZE", "IPAM", "MAX_PAGE_SIZE", "ORDERS", "PRODUCT",
    "PROJECT_MEMBER", "PROJECT_READER", "VPC", "ApiKey", "ArgumentProblem", "BookRequest",
    "Caller", "Credentials", "EtcdSecurity", "IPFilter", "IPRecord", "PrivateNetwork",
    "ReservedAddress", "Resource", "Reverse", "Source", "Subnet", "access_key_for_secret",
    "check_key_spec", "errors", "is_access_key", "normalize_mac", "secret_hash",
]
