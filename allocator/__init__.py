"""ipam's allocator: sources, IP records, the booking engine and all etcd I/O.

Importable and useful without the HTTP gateway. Its public surface is
`allocator.contract`; the modules beside it are the allocator's own.
"""
