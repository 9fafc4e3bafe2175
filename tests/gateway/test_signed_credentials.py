"""Signed API key records, end to end: etcd write access alone mints no key, nodes that
share a signing key accept each other's keys and others refuse them, the signing key comes
from configuration (`gateway.config`), and keys written before signatures are signed once
a node of schema 3 starts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from gateway_fixtures import ADMIN_SECRET, ApiKeys, GatewayNode, gateway_pair  # noqa: F401

from allocator.contract import IPAM
from allocator.txn import GuardedTxn
from devcluster.etcd import EtcdCluster
from gateway.config import ConfigError, load, signing_key_of

IPS = "/ipam/v1/regions/fr-par/ips"
SERVE = [sys.executable, "-m", "gateway.cli", "serve"]
FORGED = "SCW" + "F" * 17


def get(node: GatewayNode, secret: str) -> requests.Response:
    return requests.get(node.url + IPS, headers={"X-Auth-Token": secret}, timeout=30)


def denied(resp: requests.Response) -> bool:
    """A 401 exactly like an unknown key's."""
    return (resp.status_code, resp.json()["type"], resp.json()["reason"]) == (
        401, "denied_authentication", "not_found")


@pytest.fixture
def nodes(etcd_single: EtcdCluster, key_prefix: str) -> Iterator[list[GatewayNode]]:
    """Started nodes on one prefix, stopped at the end (`start` appends)."""
    started: list[GatewayNode] = []
    yield started
    for node in started:
        node.stop()


def start(nodes: list[GatewayNode], etcd: EtcdCluster, prefix: str, **config: Any
          ) -> GatewayNode:
    node = GatewayNode(etcd.endpoints, prefix, **config).start()
    nodes.append(node)
    return node


def etcdctl_put(etcd: EtcdCluster, key: str, value: str) -> None:
    """A write with etcd's own client: what anyone with etcd access could do."""
    done = subprocess.run(["etcdctl", f"--endpoints={','.join(etcd.endpoints)}", "put", key,
                           value], env={"ETCDCTL_API": "3", "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, "OK\n"), done.stderr


def forged_admin(prefix: str) -> tuple[str, str, str]:
    """(secret, etcd key, record) of an admin key whose secret the forger chose."""
    secret = str(uuid.uuid4())
    digest = hashlib.sha256(secret.encode()).hexdigest()
    record: dict[str, object] = {
        "access_key": FORGED, "role": "admin", "organization_id": None, "project_ids": [],
        "resource_types": [], "description": "forged", "expires_at": None,
        "created_at": "2026-01-01T00:00:00+00:00", "secret_hash": digest}
    return secret, f"{prefix}auth/secret/{digest}", json.dumps(record)


def test_a_forged_admin_put_straight_into_etcd_is_denied_401(
        nodes: list[GatewayNode], etcd_single: EtcdCluster, key_prefix: str) -> None:
    node = start(nodes, etcd_single, key_prefix)
    secret, key, record = forged_admin(key_prefix)
    etcdctl_put(etcd_single, key, record)
    assert denied(get(node, secret))
    listed = requests.get(node.url + "/ipam/admin/v1/api-keys",
                          headers={"X-Auth-Token": ADMIN_SECRET}, timeout=30).json()
    assert FORGED not in json.dumps(listed)


def test_a_reader_key_changed_to_admin_in_etcd_is_denied_401(
        gateway_pair: tuple[GatewayNode, GatewayNode]) -> None:  # noqa: F811
    a, b = gateway_pair
    access, secret = ApiKeys(a.url).create("project_reader", [str(uuid.uuid4())])
    assert get(b, secret).status_code == 200
    assert a.ipam is not None
    store, keys = a.ipam.store, a.ipam.keys
    where = keys.api_key_by_secret(hashlib.sha256(secret.encode()).hexdigest())
    kv = a.call(store.get(where))
    record = {**json.loads(kv.value), "role": "admin", "project_ids": []}
    a.call(store.txn([], [GuardedTxn().put(where, json.dumps(record)).writes[0]]))
    for node in (a, b):
        assert denied(get(node, secret)), node.url
    assert access not in json.dumps(requests.get(
        a.url + "/ipam/admin/v1/api-keys", headers={"X-Auth-Token": ADMIN_SECRET},
        timeout=30).json())


def test_a_key_works_on_every_node_with_the_same_admin_secret_until_revoked(
        gateway_pair: tuple[GatewayNode, GatewayNode]) -> None:  # noqa: F811
    a, b = gateway_pair
    access, secret = ApiKeys(a.url).create("project_member", [str(uuid.uuid4())])
    assert get(b, secret).status_code == 200
    revoked = requests.delete(f"{a.url}/ipam/admin/v1/api-keys/{access}",
                              headers={"X-Auth-Token": ADMIN_SECRET}, timeout=30)
    assert revoked.status_code in (200, 204), revoked.text
    for node in (a, b):
        assert denied(get(node, secret)), node.url


def test_a_node_with_another_signing_key_refuses_the_keys_and_a_signing_key_file_keeps_them(
        nodes: list[GatewayNode], etcd_single: EtcdCluster, key_prefix: str) -> None:
    first = start(nodes, etcd_single, key_prefix)
    _, secret = ApiKeys(first.url).create("project_member", [str(uuid.uuid4())])
    rotated = str(uuid.uuid4())
    other = start(nodes, etcd_single, key_prefix, admin_secret=rotated)
    assert denied(get(other, secret))
    # The admin secret rotated, the one the keys were signed with kept as the signing
    # key file's secret: the keys stay valid.
    kept = start(nodes, etcd_single, key_prefix, admin_secret=rotated,
                 credential_signing_secret=ADMIN_SECRET)
    assert get(kept, secret).status_code == 200


async def test_a_key_written_at_schema_2_authenticates_once_a_node_started(
        nodes: list[GatewayNode], etcd_single: EtcdCluster, key_prefix: str) -> None:
    secret = str(uuid.uuid4())
    digest = hashlib.sha256(secret.encode()).hexdigest()
    access = "SCW" + "0" * 17
    record = {"access_key": access, "role": "project_member", "organization_id": None,
              "project_ids": [str(uuid.uuid4())], "resource_types": [],
              "description": "before signatures", "secret_hash": digest,
              "created_at": "2025-06-01T00:00:00+00:00", "expires_at": None}
    ipam = await IPAM.connect(etcd_single.endpoints, prefix=key_prefix)
    try:
        writes = GuardedTxn().put(ipam.keys.schema(), b'{"version": 2}') \
            .put(ipam.keys.api_key_by_access(access), digest) \
            .put(ipam.keys.api_key_by_secret(digest), json.dumps(record)).writes
        assert (await ipam.store.txn([], writes)).succeeded
    finally:
        await ipam.close()
    node = await asyncio.to_thread(start, nodes, etcd_single, key_prefix)
    assert (await asyncio.to_thread(get, node, secret)).status_code == 200


# -- where the signing key comes from ---------------------------------------------------------


def secret_file(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text + "\n")
    path.chmod(mode)
    return str(path)


def test_the_signing_key_is_derived_from_the_admin_secret_unless_a_key_file_is_given(
        tmp_path: Path) -> None:
    admin = str(uuid.uuid4())
    by_admin = load(None, {"IPAM_ADMIN_SECRET_KEY": admin})
    assert by_admin.credential_signing_key == signing_key_of(admin.upper()) != admin.encode()
    assert len(by_admin.credential_signing_key or b"") == 32
    signing = secret_file(tmp_path / "signing", "x" * 64)
    env = {"IPAM_ADMIN_SECRET_KEY": admin, "IPAM_CREDENTIAL_SIGNING_KEY_FILE": signing}
    by_env = load(None, env)
    by_flag = load(type("Args", (), {"credential_signing_key_file": signing})(),
                   {"IPAM_ADMIN_SECRET_KEY": admin})
    assert by_env.credential_signing_key == by_flag.credential_signing_key == \
        signing_key_of("x" * 64)
    assert by_env.credential_signing_key != by_admin.credential_signing_key
    assert "x" * 64 not in repr(by_env)
    assert load(None, {}).credential_signing_key is None


@pytest.mark.parametrize(("text", "mode", "problem"), [
    ("short", 0o600, ("it holds 5 characters, fewer than 32 (make one with: openssl rand -hex "
                     "32)")),
    ("x" * 64, 0o644, "permissions 0644 are too open"),
    ("", 0o600, "it is empty"),
])
def test_a_signing_key_file_that_cannot_be_used_is_refused_naming_it(
        tmp_path: Path, text: str, mode: int, problem: str) -> None:
    path = secret_file(tmp_path / "signing", text, mode)
    with pytest.raises(ConfigError) as err:
        load(None, {"IPAM_CREDENTIAL_SIGNING_KEY_FILE": path})
    assert str(err.value).startswith(
        f"--credential-signing-key-file/IPAM_CREDENTIAL_SIGNING_KEY_FILE {path}: {problem}")


def test_a_node_on_an_external_etcd_without_admin_secret_or_signing_key_will_not_start(
        tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPAM_")}
    done = subprocess.run([*SERVE, "--port", "0", "--etcd-endpoints", "127.0.0.1:9"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        ("ipam serve: no credential signing key: API keys stored in etcd are signed with a "
        "key derived from --admin-secret-key/IPAM_ADMIN_SECRET_KEY (or its file) or from "
        "--credential-signing-key-file/IPAM_CREDENTIAL_SIGNING_KEY_FILE: give one")]
