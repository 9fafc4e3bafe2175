"""`ipam identity copy`: a region's new etcd cluster gets the identity of another's, on
two real etcd clusters."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from allocator_support import connected, new_project

from allocator.contract import check_key_spec
from devcluster.etcd import EtcdCluster
from gateway.cli import main


def _spec(project: str, organization: str | None = None, role: str = "project_member"):
    return check_key_spec(role=role, organization_id=organization, project_ids=[project],
                          resource_types=None, description="t", expires_at=None)


async def _copy(par: EtcdCluster, ams: EtcdCluster, prefix: str) -> int:
    argv = ["identity", "copy", "--etcd-endpoints", f"fr-par={par.endpoints[0]}",
            "--etcd-endpoints", f"nl-ams={ams.endpoints[0]}", "--etcd-prefix", prefix,
            "--region", "fr-par", "--to-region", "nl-ams"]
    return await asyncio.to_thread(main, argv)


async def test_a_new_regions_cluster_gets_every_key_organization_and_quota_once(
        key_prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An operator trial added nl-ams on an empty cluster: every existing key was 401
    there, and admins got 412 project_organization_unknown."""
    project, clash, organization = new_project(), new_project(), new_project()
    with EtcdCluster(1, name_prefix="idpar") as par, EtcdCluster(1, name_prefix="idams") as ams:
        async with connected(par.endpoints, key_prefix) as source, \
                connected(ams.endpoints, key_prefix) as target:
            await source.set_project_organization(project, organization)
            await source.set_project_quotas(project, {"ips": 7})
            _, member = await source.credentials().create(_spec(project, organization))
            _, admin = await source.credentials().create(
                check_key_spec(role="admin", organization_id=None, project_ids=None,
                               resource_types=None, description="a", expires_at=None))
            # A project the new cluster maps to another organization already: its key
            # would act for that organization there; not copied, and said so.
            await source.set_project_organization(clash, organization)
            _, clashing = await source.credentials().create(_spec(clash, organization))
            await target.set_project_organization(clash, new_project())
            assert await target.credentials().lookup(member) is None

            assert await _copy(par, ams, key_prefix) == 1
            out = capsys.readouterr()
            # Records: a mapping, an override, and two per API key (record and index).
            assert out.out == ("copied 6 records of fr-par's identity into nl-ams's "
                               "cluster (0 held there already, 2 conflicts)\n")
            assert out.err.count("ipam identity copy: not copied: ") == 2
            assert f"projorg/{clash}: the target holds another value" in out.err
            assert f"{clash} belong to another organization there" in out.err
            found = await target.credentials().lookup(member)
            assert found is not None and found.project_ids == (project,)
            assert (await target.credentials().lookup(admin)).role == "admin"
            assert await target.credentials().lookup(clashing) is None
            assert await target.organization_of(project) == organization
            assert (await target.project_quotas(project)).ips == 7

            before = (await target.store.count(key_prefix))[0]
            assert await _copy(par, ams, key_prefix) == 1  # again: nothing more written
            assert "copied 0 records" in capsys.readouterr().out
            assert (await target.store.count(key_prefix))[0] == before


async def test_one_cluster_or_none_is_a_usage_error(key_prefix: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    one = ["identity", "copy", "--etcd-endpoints", "127.0.0.1:9", "--to-region", "nl-ams",
           "--etcd-prefix", key_prefix]
    assert await asyncio.to_thread(main, one) == 2
    assert "are on the same etcd cluster" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["identity", "copy", "--to-region", "nl-ams",
                                          "--data-dir", f"/nonexistent/{uuid.uuid4()}"]) == 2
    assert "give --etcd-endpoints naming both regions' clusters" in capsys.readouterr().err
