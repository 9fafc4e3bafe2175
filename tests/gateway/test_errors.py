"""The mapping of allocator errors onto Scaleway's error bodies (pure)."""

from __future__ import annotations

import inspect

import pytest

from allocator.contract import errors as e
from gateway.errors import from_ipam_error

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
    e.StorageFull: (507, "service_unavailable"),
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
