"""Schemathesis against the OpenAPI document a real gateway serves, with all its checks.

Generated requests, valid and invalid per the document, go to a gateway on real
etcd as the bootstrap admin; each answer goes through every standard check
(`case.call_and_validate`): no server error, documented status, content type and
body, valid data accepted, invalid data rejected, the key required, 405 with
`Allow`. Custom formats get strategies that make only values the document means:
what JSON Schema cannot say (a CIDR's host bits, a time in the future) is said by
the format's description, and made here.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

import requests
from gateway_fixtures import ADMIN_SECRET, GatewayNode, gateway  # noqa: F401
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def _subnets(network: str, prefix: int) -> list[str]:
    return [str(n) for n in ipaddress.ip_network(network).subnets(new_prefix=prefix)]


# Disjoint so that a list of distinct ones never overlaps.
_PRIVATE = _subnets("10.128.0.0/16", 24)[:64] + _subnets("fd00:1::/48", 64)[:16]
_PUBLIC = _subnets("51.158.0.0/16", 24)[:64]  # global unicast: a zonal pool must be

_PRINTABLE = st.text(
    st.characters(codec="utf-8", exclude_categories=("C", "Z"), include_characters=" "),
    min_size=1, max_size=40).filter(str.isprintable)
schemathesis.openapi.format("printable", _PRINTABLE)
schemathesis.openapi.format("text", _PRINTABLE.filter(lambda s: s == s.strip(" ")))
schemathesis.openapi.format("private-cidr", st.sampled_from(_PRIVATE))
schemathesis.openapi.format("cidr", st.sampled_from(_PUBLIC))
schemathesis.openapi.format("future-date-time", st.datetimes(
    min_value=datetime(2100, 1, 1), timezones=st.just(UTC)).map(datetime.isoformat))
# An IP's expiry: in the future and at most MAX_EXPIRY ahead (a day to 300 days from now).
_NOW = datetime.now(UTC).replace(tzinfo=None)
schemathesis.openapi.format("expiry-date-time", st.datetimes(
    min_value=_NOW + timedelta(days=1), max_value=_NOW + timedelta(days=300),
    timezones=st.just(UTC)).map(datetime.isoformat))
# The event feed: a cursor it could have answered (within its retention, at a revision
# the store has reached: 1), and a long poll's wait short enough that a generated request
# never waits out its timeout.
schemathesis.openapi.format("event-cursor", st.one_of(st.just("0"), st.just(1).map(
    lambda r: f"{r}-{int(datetime.now(UTC).timestamp())}")))
schemathesis.openapi.format("poll-wait", st.sampled_from(["0", "0.1", "0.2s"]))


@pytest.fixture
def served_schema(gateway: GatewayNode) -> Any:  # noqa: F811
    """The document the node serves, as schemathesis reads it."""
    doc = requests.get(f"{gateway.url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    # Configured rather than passed to each call, so that schemathesis knows the key is
    # given: its cases without a key (or with a wrong one) must then get a 401.
    schema.config.update(base_url=gateway.url, headers={"X-Auth-Token": ADMIN_SECRET},
                         request_timeout=30)
    return schema


schema = schemathesis.pytest.from_fixture("served_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_generated_request_passes_every_check(case: Any) -> None:
    case.call_and_validate()
