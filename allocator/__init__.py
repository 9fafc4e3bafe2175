"""ipam's allocator: sources, IP records, the booking engine and all etcd I/O.

Importable and useful without the HTTP gateway:

    from allocator import IPAM, BookRequest
    ipam = await IPAM.connect(["127.0.0.1:2379"])
    pn = await ipam.networks.create_private_network("fr-par", project_id, None, "web")
    ip = await ipam.book(BookRequest(region="fr-par", project_id=project_id,
                                     private_network_id=pn.id))
"""

from . import errors
from .ipam import IPAM, BookRequest, Caller
from .listing import IPFilter
from .records import IPRecord, Resource, Reverse
from .sources import ReservedAddress, Source
from .store import EtcdSecurity, EtcdStore
from .topology import VPC, PrivateNetwork, Subnet

__all__ = [
    "IPAM",
    "VPC",
    "BookRequest",
    "Caller",
    "EtcdSecurity",
    "EtcdStore",
    "IPFilter",
    "IPRecord",
    "PrivateNetwork",
    "ReservedAddress",
    "Resource",
    "Reverse",
    "Source",
    "Subnet",
    "errors",
]
