"""A schemathesis fuzz pass over /openapi.json: no input may ever earn a 5xx.

Generated requests (valid and invalid per the document) go to a real gateway on
real etcd as the bootstrap admin; every answer must be below 500, and every error
must be a Scaleway JSON body. Skipped where schemathesis is not installed.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from gateway_fixtures import ADMIN_SECRET, GatewayNode, gateway  # noqa: F401
from hypothesis import HealthCheck, settings

from gateway.openapi import DOCUMENT

schema = schemathesis.openapi.from_dict(DOCUMENT)


@schema.parametrize()
@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case: object,
                                                  gateway: GatewayNode) -> None:  # noqa: F811
    response = case.call(base_url=gateway.url,  # type: ignore[attr-defined]
                         headers={"X-Auth-Token": ADMIN_SECRET}, timeout=30)
    assert response.status_code < 500, (case, response.text)  # type: ignore[attr-defined]
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("type"), str) and isinstance(body.get("message"), str)
        assert "Traceback" not in response.text
