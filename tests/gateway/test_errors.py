"""The mapping of allocator errors onto Scaleway's error bodies (pure), and how a node's
OpenAPI document describes the full datastore's."""

from __future__ import annotations

import inspect
import json

import pytest
import requests
from gateway_fixtures import GatewayNode, gateway  # noqa: F401

from allocator.contract import errors as e
from gateway.errors import STORAGE_FULL, from_ipam_error

SAMPLES = {
    e.InvalidArgument: e.InvalidArgument("tags", "too many"),
    e.NotFound: e.NotFound("ip", "x"),
    e.AlreadyExists: e.AlreadyExists("ip", "10.0.0.5"),
    e.PoolExhausted: e.PoolExhausted("s"),
    e.PreconditionFailed: e.PreconditionFailed("resource_still_in_use", "attached"),
    e.PermissionDenied: e.PermissionDenied("detach", "instance_server", "not yours"),
    e.CredentialRevoked: e.CredentialRevoked(),
    e.QuotaExceeded: e.QuotaExceeded("vpc", 100, 100, "project p holds 100 vpcs"),
    e.Conflict: e.Conflict("kept changing"),
    e.StoreError: e.StoreError("down"),
    e.OutcomeUnknown: e.OutcomeUnknown("maybe"),
    e.StorageFull: e.StorageFull("etcdserver: mvcc: database space exceeded"),
}
EXPECTED = {
    e.InvalidArgument: (400, "invalid_arguments"), e.NotFound: (404, "not_found"),
    e.AlreadyExists: (409, "already_exists"), e.PoolExhausted: (409, "out_of_stock"),
    e.PreconditionFailed: (412, "precondition_failed"),
    e.PermissionDenied: (403, "permissions_denied"),
    e.CredentialRevoked: (401, "denied_authentication"), e.Conflict: (409, "conflict"),
    e.QuotaExceeded: (403, "quotas_exceeded"),
    e.StoreError: (503, "service_unavailable"), e.OutcomeUnknown: (503, "service_unavailable"),
    e.StorageFull: (503, "service_unavailable"),
}


def test_every_allocator_error_has_a_sample_here():
    classes = {c for _, c in inspect.getmembers(e, inspect.isclass)
               if issubclass(c, e.IPAMError) and c is not e.IPAMError}
    assert classes == set(SAMPLES)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_each_allocator_error_gets_its_own_status_and_type(cls):
    answer = from_ipam_error(SAMPLES[cls])
    assert (answer.status, answer.body.type) == EXPECTED[cls]


def test_an_error_the_table_does_not_know_is_a_bare_500():
    answer = from_ipam_error(e.IPAMError("new kind"))
    assert answer.status == 500 and answer.body.type == "internal_error"


def test_a_full_datastore_is_a_503_told_apart_by_its_message_alone():
    full = from_ipam_error(SAMPLES[e.StorageFull]).response()
    unknown = from_ipam_error(SAMPLES[e.OutcomeUnknown]).response()
    assert full.status == unknown.status == 503
    assert json.loads(full.text or "") == {
        "type": "service_unavailable",
        "message": "the datastore is full: changes are refused until an operator frees "
                   "space; reads still work"}
    assert STORAGE_FULL.startswith("the datastore is full: ")
    # No help_message: that one says an outcome is unknown, and this change did not apply.
    assert set(json.loads(unknown.text or "")) == {"type", "message", "help_message"}


def test_every_change_documents_the_full_datastore_503_and_no_operation_a_507(
        gateway: GatewayNode) -> None:  # noqa: F811
    doc = requests.get(f"{gateway.url}/openapi.json", timeout=30).json()
    writes, reads = 0, 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            assert "507" not in responses, (method, path)
            if "503" not in responses:
                continue
            full = "the datastore is full" in responses["503"]["description"]
            if method in ("post", "patch", "put", "delete"):
                writes += 1
                assert full, (method, path, responses["503"]["description"])
            else:
                reads += 1
                assert not full, (method, path)
    assert writes > 0 and reads > 0
