"""Shared fixtures: real etcd members on loopback, started by devcluster.etcd.

The session-scoped clusters are shared by every test, so tests that use them
must not kill or pause members and must keep their keys under ``key_prefix``.
Tests that break members take ``etcd_cluster3_fresh`` instead.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from allocator_support import SIGNING_KEY

from allocator.contract import IPAM
from devcluster.etcd import EtcdCluster


@pytest.fixture(scope="session")
def etcd_single() -> Iterator[EtcdCluster]:
    """One etcd member for the whole session."""
    with EtcdCluster(1, name_prefix="single") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def etcd_cluster3() -> Iterator[EtcdCluster]:
    """Three etcd members for the whole session; do not kill or pause them."""
    with EtcdCluster(3, name_prefix="shared") as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster3_fresh() -> Iterator[EtcdCluster]:
    """A new three-member cluster for one test, free to be killed and paused."""
    with EtcdCluster(3, name_prefix="fresh") as cluster:
        yield cluster


@pytest.fixture
def key_prefix() -> str:
    """A key prefix no other test uses, so tests sharing a cluster stay isolated."""
    return f"/t/{uuid.uuid4().hex[:12]}/"


@pytest.fixture
async def ipam(etcd_single: EtcdCluster, key_prefix: str) -> AsyncIterator[IPAM]:
    """An allocator on the shared single member, under this test's own prefix."""
    ipam = await IPAM.connect(etcd_single.endpoints, prefix=key_prefix,
                              signing_key=SIGNING_KEY)
    try:
        yield ipam
    finally:
        await ipam.close()


@pytest.fixture
def project() -> str:
    """A fresh project id."""
    return str(uuid.uuid4())
