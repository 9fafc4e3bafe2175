"""One gateway serving two regions, each on its own real etcd cluster.

`--etcd-endpoints fr-par=URL --etcd-endpoints nl-ams=URL`: a request is served by the
cluster of its path's region from authentication on, zonal pools live in their region's
cluster, identity (API keys, organizations, quotas) is written to both, and an outage of
one cluster leaves the other region fully served (docs/operations.md, "Several regions").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from gateway_fixtures import ADMIN_SECRET, REGION, RegionalGatewayNode
from prometheus_client.parser import text_string_to_metric_families

from devcluster.etcd import EtcdCluster
from gateway import serve
from gateway.config import ConfigError, GatewayConfig, load

OTHER = "nl-ams"
ADMIN = {"X-Auth-Token": ADMIN_SECRET}


# -- configuration -------------------------------------------------------------------------

def _load(*argv: str, env: dict[str, str] | None = None) -> GatewayConfig:
    return load(serve.parser().parse_args(list(argv)), env or {})


def test_each_region_named_in_etcd_endpoints_is_served_on_its_own_cluster():
    config = _load("--etcd-endpoints", "fr-par=http://127.0.0.1:1,http://127.0.0.1:2",
                   "--etcd-endpoints", "nl-ams=http://127.0.0.1:3")
    assert config.region == "fr-par" and config.regions == ("fr-par", "nl-ams")
    assert config.clusters == [(("fr-par",), ("http://127.0.0.1:1", "http://127.0.0.1:2")),
                               (("nl-ams",), ("http://127.0.0.1:3",))]
    assert config.zones_of("nl-ams") == ("nl-ams-1", "nl-ams-2", "nl-ams-3")
    assert not config.embedded_etcd


def test_the_variable_separates_regions_with_semicolons():
    config = _load(env={"IPAM_ETCD_ENDPOINTS": "nl-ams=http://b:2379; fr-par=http://a:2379",
                        "IPAM_REGION": "fr-par"})
    assert config.regions == ("fr-par", "nl-ams")
    assert config.endpoints_of("nl-ams") == ("http://b:2379",)


def test_one_url_list_still_means_every_region():
    config = _load("--region", "nl-ams", "--etcd-endpoints", "a:2379,b:2379")
    assert config.regions == ("nl-ams",)
    assert config.clusters == [(("nl-ams",), ("a:2379", "b:2379"))]
    mixed = _load("--etcd-endpoints", "a:2379", "--etcd-endpoints", "nl-ams=b:2379")
    assert mixed.clusters == [(("fr-par",), ("a:2379",)), (("nl-ams",), ("b:2379",))]


def test_regions_given_the_same_endpoints_share_one_cluster():
    config = _load("--etcd-endpoints", "fr-par=a:1,b:1", "--etcd-endpoints", "nl-ams=a:1,b:1")
    assert config.clusters == [(("fr-par", "nl-ams"), ("a:1", "b:1"))]


def test_zones_may_name_any_served_region():
    config = _load("--etcd-endpoints", "fr-par=a:1", "--etcd-endpoints", "nl-ams=b:1",
                   "--zones", "nl-ams-2")
    assert config.zones_of("nl-ams") == ("nl-ams-2",)
    assert config.zones_of("fr-par") == ("fr-par-1", "fr-par-2", "fr-par-3")
    with pytest.raises(ConfigError, match="pl-waw-1"):
        _load("--etcd-endpoints", "fr-par=a:1", "--zones", "pl-waw-1")


@pytest.mark.parametrize(("argv", "says"), [
    (["--region", "pl-waw", "--etcd-endpoints", "fr-par=a:1"], "region pl-waw has no etcd"),
    (["--etcd-endpoints", "fr-par=a:1", "--etcd-endpoints", "fr-par=b:1"],
     "gives region fr-par twice"),
    (["--etcd-endpoints", "a:1", "--etcd-endpoints", "b:1"], "every region twice"),
    (["--etcd-endpoints", "fr-par="], "neither URL"),
    (["--etcd-endpoints", "Paris=a:1"], "neither URL"),
    (["--etcd-endpoints", "fr-par=a:1=b"], "neither URL"),
])
def test_a_bad_region_cluster_setting_exits_2_in_one_line(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str]):
    assert serve.main([*argv, "--admin-secret-key", str(uuid.uuid4())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ipam serve: ") and says in err and err.count("\n") == 1, err


# -- two real clusters ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_clusters() -> Iterator[dict[str, EtcdCluster]]:
    """fr-par's and nl-ams's etcd, one member each, for the tests that break nothing."""
    with EtcdCluster(1, name_prefix="par") as par, EtcdCluster(1, name_prefix="ams") as ams:
        yield {REGION: par, OTHER: ams}


def _node(clusters: dict[str, EtcdCluster], prefix: str) -> RegionalGatewayNode:
    return RegionalGatewayNode({r: c.endpoints for r, c in clusters.items()}, prefix,
                               compact_retain_revisions=0).start()


@pytest.fixture
def node(two_clusters: dict[str, EtcdCluster], key_prefix: str
         ) -> Iterator[RegionalGatewayNode]:
    started = _node(two_clusters, key_prefix)
    yield started
    started.stop()
    started.assert_conformant()  # every answer, of either region, as the document says


def _revision(cluster: EtcdCluster) -> int:
    status = cluster.members[0].status()
    assert status is not None
    return int(status["header"]["revision"])


def _pn(node: RegionalGatewayNode, region: str, project: str, token: str = ADMIN_SECRET
        ) -> str:
    made = requests.post(f"{node.url}/vpc/v2/regions/{region}/private-networks",
                         json={"project_id": project, "name": "pn",
                               "subnets": ["10.8.0.0/24"]},
                         headers={"X-Auth-Token": token}, timeout=10)
    assert made.status_code == 200, made.text
    return str(made.json()["id"])


def _book(node: RegionalGatewayNode, region: str, project: str, pn: str,
          token: str = ADMIN_SECRET) -> requests.Response:
    return requests.post(f"{node.url}/ipam/v1/regions/{region}/ips", json={
        "project_id": project, "source": {"private_network_id": pn}},
        headers={"X-Auth-Token": token}, timeout=10)


def _list(node: RegionalGatewayNode, region: str, token: str) -> requests.Response:
    return requests.get(f"{node.url}/ipam/v1/regions/{region}/ips",
                        headers={"X-Auth-Token": token}, timeout=10)


def _key(node: RegionalGatewayNode, project: str) -> requests.Response:
    """A project key of `project`, whose organization is always the same."""
    return requests.post(f"{node.url}/ipam/admin/v1/api-keys", headers=ADMIN, json={
        "role": "project_member", "project_ids": [project],
        "organization_id": str(uuid.uuid5(uuid.NAMESPACE_URL, project)),
        "description": "regions"}, timeout=10)


def test_a_booking_in_one_region_never_touches_the_other_cluster(
        node: RegionalGatewayNode, two_clusters: dict[str, EtcdCluster], project: str):
    pn = _pn(node, REGION, project)
    before = {region: _revision(c) for region, c in two_clusters.items()}
    booked = _book(node, REGION, project, pn)
    assert booked.status_code == 200, booked.text
    assert booked.json()["region"] == REGION
    after = {region: _revision(c) for region, c in two_clusters.items()}
    assert after[OTHER] == before[OTHER]
    assert after[REGION] > before[REGION]
    # nl-ams's cluster holds no trace of it: its IP and its network are fr-par's alone.
    assert _list(node, OTHER, ADMIN_SECRET).json()["total_count"] == 0
    assert requests.get(f"{node.url}/vpc/v2/regions/{OTHER}/private-networks/{pn}",
                        headers=ADMIN, timeout=10).status_code == 404


def test_a_zonal_pool_lives_in_its_regions_cluster_only(node: RegionalGatewayNode):
    made = requests.post(f"{node.url}/ipam/admin/v1/regions/{OTHER}/zonal-pools",
                         headers=ADMIN, json={"zone": f"{OTHER}-1", "subnet": "10.9.0.0/28",
                                              "allow_private": True}, timeout=10)
    assert made.status_code == 200, made.text
    pools = node.call(node.cluster(OTHER).ipam.list_zonal_pools(OTHER))
    assert [p.id for p in pools] == [made.json()["id"]]
    assert node.call(node.cluster(REGION).ipam.list_zonal_pools(OTHER)) == []
    # A zone of the other region is refused on this one's path.
    wrong = requests.post(f"{node.url}/ipam/admin/v1/regions/{REGION}/zonal-pools",
                          headers=ADMIN, json={"zone": f"{OTHER}-1", "subnet": "10.10.0.0/28",
                                               "allow_private": True}, timeout=10)
    assert wrong.status_code == 400, wrong.text


def test_a_key_created_once_authenticates_in_both_regions(
        node: RegionalGatewayNode, project: str):
    made = _key(node, project)
    assert made.status_code == 200, made.text
    secret, access = made.json()["secret_key"], made.json()["access_key"]
    for region in (REGION, OTHER):
        assert _list(node, region, secret).status_code == 200
        # Its project's organization came with it: the key can create in both.
        _pn(node, region, project, secret)
    assert requests.delete(f"{node.url}/ipam/admin/v1/api-keys/{access}", headers=ADMIN,
                           timeout=10).status_code == 204
    for region in (REGION, OTHER):
        assert _list(node, region, secret).status_code == 401


def test_a_key_another_cluster_refuses_is_created_nowhere(
        node: RegionalGatewayNode, project: str):
    # nl-ams maps the project to another organization than the key names.
    node.call(node.cluster(OTHER).ipam.set_project_organization(project,
                                                                str(uuid.uuid4())))
    refused = _key(node, project)
    assert refused.status_code == 503, refused.text
    assert "nl-ams" in refused.json()["message"]
    assert "no key was created" in refused.json()["message"]
    for region in (REGION, OTHER):
        assert node.call(node.cluster(region).credentials.list()) == []


def test_organizations_and_quota_overrides_are_written_to_every_cluster(
        node: RegionalGatewayNode, project: str):
    org = str(uuid.uuid4())
    put = requests.put(f"{node.url}/ipam/admin/v1/projects/{project}", headers=ADMIN,
                       json={"organization_id": org}, timeout=10)
    assert put.status_code == 200, put.text
    quotas = requests.put(f"{node.url}/ipam/admin/v1/projects/{project}/quotas",
                          headers=ADMIN, json={"vpcs": 3}, timeout=10)
    assert quotas.status_code == 200, quotas.text
    for region in (REGION, OTHER):
        ipam = node.cluster(region).ipam
        assert node.call(ipam.organization_of(project)) == org
        assert node.call(ipam.project_quotas(project)).vpcs == 3


def _metrics(node: RegionalGatewayNode) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = requests.get(f"{node.url}/metrics", timeout=30)
    assert resp.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def _labelled(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
              label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in metrics.items() if n == name}


def test_metrics_describe_every_regions_cluster(
        node: RegionalGatewayNode, two_clusters: dict[str, EtcdCluster], project: str):
    for region in (REGION, OTHER):
        booked = _book(node, region, project, _pn(node, region, project))
        assert booked.status_code == 200, booked.text
    got = _metrics(node)
    assert got[("ipam_bookings_total", ())] == 2  # both clusters' bookings
    assert _labelled(got, "ipam_etcd_available", "regions") == {REGION: 1.0, OTHER: 1.0}
    # Each cluster's elected upkeep this node runs: the expirer (its compactor is off).
    assert set(_labelled(got, "ipam_expirer_leader", "regions")) == {REGION, OTHER}
    assert _labelled(got, "ipam_compactor_leader", "regions") == {}
    members = {m.endpoint for c in two_clusters.values() for m in c.members}
    assert set(_labelled(got, "ipam_etcd_endpoint_up", "endpoint")) == members
    assert set(_labelled(got, "ipam_etcd_db_size_bytes", "endpoint")) == members
    assert len(_labelled(got, "ipam_source_held", "source")) == 2  # a subnet in each


def test_an_unknown_region_is_still_a_404(node: RegionalGatewayNode):
    answer = _list(node, "pl-waw", ADMIN_SECRET)
    assert (answer.status_code, answer.json()["type"]) == (404, "not_found")
    assert "fr-par, nl-ams" in answer.json()["message"]


# -- an outage of one region's cluster -----------------------------------------------------

def _await_gate(node: RegionalGatewayNode, region: str, available: bool,
                timeout: float = 30.0) -> None:
    """Wait (bounded) until the gate of `region`'s cluster is open, or closed."""
    availability = node.cluster(region).availability
    deadline = time.monotonic() + timeout
    while availability.available != available:
        assert time.monotonic() < deadline, f"{region}'s gate stayed {availability.state}"
        node.call(availability.changed(1.0))


def test_an_outage_of_one_regions_cluster_leaves_the_other_fully_served(
        key_prefix: str, project: str):
    with EtcdCluster(1, name_prefix="par-fresh") as par, \
            EtcdCluster(1, name_prefix="ams-fresh") as ams:
        node = _node({REGION: par, OTHER: ams}, key_prefix)
        try:
            made = _key(node, project)
            assert made.status_code == 200, made.text
            secret = made.json()["secret_key"]
            doomed = _key(node, project).json()
            pn = _pn(node, REGION, project, secret)
            _assert_outage_served(node, ams, project, pn, secret, doomed)
        finally:
            node.stop()


def _assert_outage_served(node: RegionalGatewayNode, ams: EtcdCluster, project: str,
                          pn: str, secret: str, doomed: dict[str, str]) -> None:
    ams.members[0].pause()
    try:
        _await_gate(node, OTHER, available=False)
        # fr-par: booking, listing and authenticating a key, all from its own cluster.
        booked = _book(node, REGION, project, pn, secret)
        assert booked.status_code == 200, booked.text
        listed = _list(node, REGION, secret)
        assert (listed.status_code, listed.json()["total_count"]) == (200, 1)
        # nl-ams: a prompt 503 naming its etcd.
        refused = _list(node, OTHER, secret)
        assert (refused.status_code, refused.json()["type"]) == (503, "service_unavailable")
        assert "etcd of nl-ams" in refused.json()["message"]
        # The node stays ready (fr-par serves); nl-ams's own readiness says no.
        assert requests.get(f"{node.url}/readyz", timeout=10).status_code == 200
        assert requests.get(f"{node.url}/readyz?region={OTHER}",
                            timeout=10).status_code == 503
        assert requests.get(f"{node.url}/readyz?region={REGION}",
                            timeout=10).status_code == 200
        # /metrics says which: nl-ams's gate closed, its silent member without a size.
        got = _metrics(node)
        assert _labelled(got, "ipam_etcd_available", "regions") == {REGION: 1.0, OTHER: 0.0}
        assert ams.members[0].endpoint not in _labelled(got, "ipam_etcd_db_size_bytes",
                                                        "endpoint")
        # Identity changes need every cluster: refused at once, naming the one down.
        key = _key(node, project)
        assert key.status_code == 503 and "nl-ams" in key.json()["message"], key.text
        # A revocation goes where it can at once, and names where it could not.
        revoke = f"{node.url}/ipam/admin/v1/api-keys/{doomed['access_key']}"
        partial = requests.delete(revoke, headers=ADMIN, timeout=10)
        assert partial.status_code == 503, partial.text
        assert "nl-ams" in partial.json()["message"]
        assert "revoked in fr-par" in partial.json()["message"]
        assert _list(node, REGION, doomed["secret_key"]).status_code == 401
        keys = requests.get(f"{node.url}/ipam/admin/v1/api-keys", headers=ADMIN, timeout=10)
        assert keys.status_code == 200 and len(keys.json()["api_keys"]) == 1
    finally:
        ams.members[0].resume()
    _await_gate(node, OTHER, available=True)
    assert _list(node, OTHER, secret).status_code == 200
    assert _list(node, OTHER, doomed["secret_key"]).status_code == 200  # not revoked there
    assert requests.delete(revoke, headers=ADMIN, timeout=10).status_code == 204
    assert _list(node, OTHER, doomed["secret_key"]).status_code == 401
    assert _key(node, project).status_code == 200
