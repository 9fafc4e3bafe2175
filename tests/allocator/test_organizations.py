"""Every object's organization is its project's (`allocator.organizations`), whoever
creates it; a node that requires organizations refuses a write into a project of none."""

from __future__ import annotations

import json
import uuid

import pytest
from allocator_support import REGION, SIGNING_KEY, connected, make_pn, revision

from allocator.contract import (
    IPAM,
    AddressAsk,
    ApiKey,
    Caller,
    OrganizationUnknown,
    check_key_spec,
    ensure_schema,
)
from allocator.credentials import PRODUCT, PROJECT_MEMBER, PROJECT_READER
from allocator.errors import AlreadyExists, InvalidArgument
from allocator.organizations import UNKNOWN, mapping_of_keys
from allocator.txn import GuardedTxn, commit

PRODUCT_CALLER = Caller(role=PRODUCT, product_types=frozenset({"instance_server"}))


def member_spec(org: str | None, *projects: str, role: str = PROJECT_MEMBER) -> ApiKey:
    return check_key_spec(role, org, list(projects), None, "test", None)


async def required(ipam: IPAM) -> IPAM:
    ipam.require_organizations()
    return ipam


async def test_objects_created_by_an_admin_or_a_product_take_the_organization_of_the_projects_key(
        ipam: IPAM, project: str) -> None:
    org = str(uuid.uuid4())
    await ipam.credentials().create(member_spec(org, project))
    await required(ipam)
    await ipam.create_zonal_pool(REGION, "fr-par-1", "51.15.0.0/28")
    vpc = await ipam.create_vpc(REGION, project, None, "v")
    pn = await ipam.create_private_network(REGION, project, None, "p", vpc_id=vpc.id,
                                           subnets=["10.9.0.0/24"])
    default_pn = await make_pn(ipam, project, "10.8.0.0/24")  # in a default VPC made for it
    in_pn = await ipam.book(AddressAsk(region=REGION, project_id=project,
                                       private_network_id=pn.id), PRODUCT_CALLER)
    zonal = await ipam.book(AddressAsk(region=REGION, project_id=project, zonal="fr-par-1"),
                            PRODUCT_CALLER)
    default_vpc = await ipam.get_vpc(default_pn.vpc_id)
    assert [vpc.organization_id, pn.organization_id, default_pn.organization_id,
            default_vpc.organization_id, in_pn.organization_id, zonal.organization_id
            ] == [org] * 6
    assert await ipam.organization_of(project) == org


async def test_a_claim_never_overrides_the_projects_organization(ipam: IPAM,
                                                                 project: str) -> None:
    org = str(uuid.uuid4())
    await ipam.set_project_organization(project, org)
    vpc = await ipam.create_vpc(REGION, project, str(uuid.uuid4()), "v")
    pn = await make_pn(ipam, project, "10.7.0.0/24")
    ip = await ipam.book(AddressAsk(region=REGION, project_id=project,
                                    organization_id=str(uuid.uuid4()),
                                    private_network_id=pn.id))
    assert (vpc.organization_id, pn.organization_id, ip.organization_id) == (org, org, org)


async def test_writes_into_a_project_of_no_known_organization_are_refused_and_write_nothing(
        ipam: IPAM, project: str) -> None:
    await required(ipam)
    await ipam.create_zonal_pool(REGION, "fr-par-1", "51.15.0.0/28")
    before = await revision(ipam)
    writes = [
        lambda: ipam.create_vpc(REGION, project, None, "v"),
        lambda: ipam.create_private_network(REGION, project, None, "p"),
        lambda: ipam.book(AddressAsk(region=REGION, project_id=project, zonal="fr-par-1"),
                          PRODUCT_CALLER),
        lambda: ipam.book(AddressAsk(region=REGION, project_id=project, zonal="fr-par-1",
                                     idempotency_key=str(uuid.uuid4())), PRODUCT_CALLER),
    ]
    for write in writes:
        with pytest.raises(OrganizationUnknown) as refused:
            await write()
        assert refused.value.precondition == UNKNOWN == "project_organization_unknown"
        assert refused.value.message == (
            f"project {project} has no known organization: create a project key naming its "
            f"organization_id, or set it with PUT /ipam/admin/v1/projects/{project}")
    assert await revision(ipam) == before
    assert await ipam.organization_of(project) is None


async def test_a_mapping_set_on_another_node_is_seen_before_a_write_is_refused(
        etcd_single, key_prefix: str, project: str) -> None:
    async with connected(etcd_single.endpoints, key_prefix) as a, \
            connected(etcd_single.endpoints, key_prefix) as b:
        await required(b)
        with pytest.raises(OrganizationUnknown):
            await b.create_vpc(REGION, project, None, "v")  # b caches "unknown"
        org = str(uuid.uuid4())
        await a.set_project_organization(project, org)
        vpc = await b.create_vpc(REGION, project, None, "v")
        assert vpc.organization_id == org


async def test_a_library_node_that_does_not_require_organizations_keeps_the_one_it_names(
        ipam: IPAM, project: str) -> None:
    org = str(uuid.uuid4())
    assert (await ipam.create_vpc(REGION, project, org, "v")).organization_id == org
    assert (await ipam.create_vpc(REGION, project, None, "w")).organization_id is None
    assert await ipam.organization_of(project) is None  # nothing was recorded


async def test_a_project_organization_is_set_once(ipam: IPAM, project: str) -> None:
    org = str(uuid.uuid4())
    assert await ipam.set_project_organization(project, org) == org
    rev = await revision(ipam)
    assert await ipam.set_project_organization(project, org) == org  # the same: no write
    assert await revision(ipam) == rev
    other = str(uuid.uuid4())
    with pytest.raises(AlreadyExists) as refused:
        await ipam.set_project_organization(project, other)
    assert refused.value.message == (
        f"project {project} belongs to organization {org}, not {other}: a project belongs "
        "to one organization, for good")
    assert (refused.value.resource, refused.value.resource_id) == ("project_organization",
                                                                   project)
    assert await revision(ipam) == rev
    for bad_project, bad_org, argument in [("nope", org, "project_id"),
                                           (project, "nope", "organization_id")]:
        with pytest.raises(InvalidArgument) as invalid:
            await ipam.set_project_organization(bad_project, bad_org)
        assert invalid.value.problems[0].argument_name == argument


async def test_a_key_for_a_project_of_another_organization_is_refused_and_writes_nothing(
        ipam: IPAM, project: str) -> None:
    org, other = str(uuid.uuid4()), str(uuid.uuid4())
    fresh = str(uuid.uuid4())
    credentials = ipam.credentials()
    await credentials.create(member_spec(org, project))
    rev = await revision(ipam)
    for role in (PROJECT_MEMBER, PROJECT_READER):
        with pytest.raises(AlreadyExists) as refused:
            await credentials.create(member_spec(other, fresh, project, role=role))
        assert refused.value.resource_id == project
    assert await revision(ipam) == rev
    assert [k.organization_id for k in await credentials.list()] == [org]
    assert await ipam.organization_of(fresh) is None  # not half-written either
    # The same organization again, or a key naming none, is a key like any other.
    await credentials.create(member_spec(org, project, fresh, role=PROJECT_READER))
    await credentials.create(member_spec(None, project))
    assert await ipam.organization_of(fresh) == org


def test_mapping_of_keys_leaves_out_projects_named_with_two_organizations() -> None:
    mapping, torn = mapping_of_keys([(["p1", "p2"], "o1"), (["p2", "p3"], "o2"),
                                     (["p1"], "o1"), (["p2"], "o1")])
    assert (mapping, torn) == ({"p1": "o1", "p3": "o2"}, {"p2"})


async def test_schema_step_4_to_5_maps_the_projects_of_the_keys_created_before(
        ipam: IPAM) -> None:
    p1, p2, torn, forged_project = (str(uuid.uuid4()) for _ in range(4))
    o1, o2 = str(uuid.uuid4()), str(uuid.uuid4())
    credentials = ipam.credentials()
    await credentials.create(member_spec(o1, p1))
    await credentials.create(member_spec(o2, p2, torn, role=PROJECT_READER))
    await ipam.ensure_schema()
    # As a node of version 4 left them: no mapping, and a project named by two keys of
    # two organizations (now refused at creation: planted here).
    kvs, _ = await ipam.store.scan(ipam.keys.project_organization())
    txn = GuardedTxn()
    for kv in kvs:
        txn.delete(kv.key)
    txn.put(ipam.keys.schema(), json.dumps({"version": 4}))
    await commit(ipam.store, txn)
    second, _ = await credentials.create(member_spec(None, torn))
    record_key = await _record_key(ipam, second.access_key)
    signed = json.loads((await ipam.store.get(record_key)).value)  # type: ignore[union-attr]
    await _put(ipam, record_key, _resigned(ipam, record_key, {**signed, "organization_id": o1}))
    # A forged record (no valid signature) maps nothing.
    forged = {**signed, "access_key": "SCW" + "F" * 17, "project_ids": [forged_project],
              "signature": "0" * 64}
    await _put(ipam, ipam.keys.api_key_by_secret("f" * 64), json.dumps(forged))

    state = await ensure_schema(ipam.store, ipam.keys, signing_key=SIGNING_KEY)
    assert (state.version, state.migrated) == (5, (4,))
    kvs, _ = await ipam.store.scan(ipam.keys.project_organization())
    assert {ipam.keys.last_segment(kv.key): kv.value.decode() for kv in kvs} == {
        p1: o1, p2: o2}
    # Run again (another node, a resumed step): nothing changes.
    rev = await revision(ipam)
    await _put(ipam, ipam.keys.schema(), json.dumps({"version": 4}))
    await ensure_schema(ipam.store, ipam.keys, signing_key=SIGNING_KEY)
    assert await revision(ipam) == rev + 2  # the version set back, and forward again


async def test_schema_step_4_to_5_needs_the_signing_key_to_read_project_keys(
        ipam: IPAM, project: str) -> None:
    await ipam.credentials().create(member_spec(str(uuid.uuid4()), project))
    await ipam.ensure_schema()
    await _put(ipam, ipam.keys.schema(), json.dumps({"version": 4}))
    with pytest.raises(Exception) as refused:
        await ensure_schema(ipam.store, ipam.keys, signing_key=None)
    assert getattr(refused.value, "precondition", None) == "no_signing_key"
    assert refused.value.args[0] == (
        "1 API key records must be read to map their projects to their organizations "
        "(schema 5), and this node has no credential signing key: start a gateway node")


async def _record_key(ipam: IPAM, access_key: str) -> str:
    kv = await ipam.store.get(ipam.keys.api_key_by_access(access_key))
    assert kv is not None
    return ipam.keys.api_key_by_secret(kv.value.decode())


def _resigned(ipam: IPAM, record_key: str, record: dict) -> str:
    from allocator.credentials import sign_record

    return json.dumps(sign_record(SIGNING_KEY, record_key.removeprefix(ipam.keys.prefix),
                                  record))


async def _put(ipam: IPAM, key: str, value: str) -> None:
    assert (await commit(ipam.store, GuardedTxn().put(key, value))).succeeded
