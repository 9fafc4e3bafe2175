"""Starting and supervising etcd members and gateway nodes, on this machine.

For development, the tests, the embedded etcd of `ipam serve` and the bench:

    etcd       local etcd members and clusters (`EtcdCluster`), on loopback
    pki        the embedded etcd's CA and certificates (mutual TLS), made and checked
    topology   the reference topology from local processes: three etcd members,
               N `ipam serve` nodes and haproxy in front (`LocalTopology`)
    tour       `python -m devcluster.tour`: the allocator alone, on an embedded etcd

No domain module imports this package (an import-linter contract says so).
"""
