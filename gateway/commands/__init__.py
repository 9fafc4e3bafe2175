"""The operator's commands of `ipam`, one module per noun, each a click group or command.

    ips      list, get, book, release, attach, detach, move
    pns      list, create, get, delete (Private Networks)
    vpcs     list
    keys     create, list, revoke (admin API)
    pools    add, list, delete (zonal pools, admin API)
    usage    held and free addresses of each subnet of a Private Network

They talk to a running gateway over its public HTTP API only (`session`), find it and
authenticate as `settings` says, and print what they get as `output` says.
"""
