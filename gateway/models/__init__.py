"""Every request and response of the HTTP API, declared once as a pydantic model.

    fields   the value types fields share (UUIDs, tags, MACs, CIDRs, flags) and the
             three base classes: Body (strict, unknown fields refused), Query (read from
             strings, unknown parameters ignored) and Reply (what is sent)
    errors   Scaleway's error bodies
    ipam     IPAM API v1 (the SDK's `scaleway/ipam/v1`)
    vpc      VPC API v2, the subset served (the SDK's `scaleway/vpc/v2`)
    admin    operator routes (API keys, zonal pools) and the probes

The route handlers parse with them (`gateway.wire`), answer with them, and the
OpenAPI document is generated from them (`gateway.openapi`): what is documented is
what is checked and what is sent.
"""
