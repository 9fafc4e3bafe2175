"""ipam's gateway: the stateless aiohttp node that speaks Scaleway's IPAM v1 and VPC v2 API.

    from gateway.app import create_app      # the application factory
    from gateway.cli import main            # the `ipam` command
"""
