"""The operator's `ipam` commands against a real gateway on a real etcd.

Every command runs through `gateway.cli.main([...])`, as the `ipam` script does, with
its stdout and stderr captured; outcomes are asserted exactly: the objects the API
holds afterwards, the lines printed, the exit code (0 done, 1 the gateway refused or
was unreachable, 2 bad input).
"""

from __future__ import annotations

import http.server
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_fixtures import ADMIN_SECRET, GatewayNode, gateway  # noqa: F401

from gateway.cli import main
from gateway.commands import session as session_module

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Outcome:
    """What one command did: its exit code and what it printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert (self.code, self.err) == (0, ""), self
        return json.loads(self.out)

    def rows(self) -> list[list[str]]:
        """The printed table, each line split into its cells (no cell holds a space)."""
        assert (self.code, self.err) == (0, ""), self
        return [line.split() for line in self.out.splitlines()]


class Ipam:
    """`ipam` pointed at one gateway: flags after the subcommand unless told otherwise."""

    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = url
        self.capsys = capsys

    def bare(self, *args: str) -> Outcome:
        """Run `ipam ARGS` exactly as given."""
        self.capsys.readouterr()
        code = main(list(args))
        out, err = self.capsys.readouterr()
        return Outcome(code, out, err)

    def __call__(self, *args: str, secret: str = ADMIN_SECRET) -> Outcome:
        return self.bare(*args, "--url", self.url, "--secret-key", secret)

    def json(self, *args: str, secret: str = ADMIN_SECRET) -> Any:
        return self(*args, "-o", "json", secret=secret).json()

    def ids(self, *filters: str) -> list[str]:
        """The ids `ipam ips list FILTERS` lists, in its order."""
        return [ip["id"] for ip in self.json("ips", "list", *filters)]


@pytest.fixture
def operator_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home and a working directory of their own (no config file, no ./.ipam) and
    no IPAM_* variable: each test says where the gateway is and who asks."""
    for name in [k for k in os.environ if k.startswith(("IPAM_", "SCW_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def ipam(gateway: GatewayNode, operator_env: Path,  # noqa: F811
         capsys: pytest.CaptureFixture[str]) -> Ipam:
    return Ipam(gateway.url, capsys)


@pytest.fixture
def project() -> str:
    return str(uuid.uuid4())


def new_pn(ipam: Ipam, project: str, *subnets: str, name: str = "net") -> dict[str, Any]:
    flags = [f for s in subnets for f in ("--subnet", s)]
    pn: dict[str, Any] = ipam.json("pns", "create", "--name", name, "--project", project,
                                   *flags)
    return pn


def book(ipam: Ipam, pn: dict[str, Any], *flags: str) -> dict[str, Any]:
    ip: dict[str, Any] = ipam.json("ips", "book", "--pn", pn["id"], *flags)
    return ip


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- Private Networks and VPCs ------------------------------------------------------------


def test_a_private_network_is_created_listed_shown_and_deleted(ipam: Ipam,
                                                               project: str) -> None:
    created = ipam("pns", "create", "--name", "web", "--project", project,
                   "--subnet", "10.1.0.0/28", "--subnet", "10.1.1.0/29")
    (header, line) = created.rows()
    assert header == ["ID", "NAME", "PROJECT_ID", "VPC_ID", "SUBNETS", "CREATED_AT"]
    pn_id = line[0]
    pn = ipam.json("pns", "get", pn_id)
    assert line == [pn_id, "web", project, pn["vpc_id"], "10.1.0.0/28,10.1.1.0/29",
                    pn["created_at"]]
    assert [s["subnet"] for s in pn["subnets"]] == ["10.1.0.0/28", "10.1.1.0/29"]
    other = new_pn(ipam, str(uuid.uuid4()), "10.9.0.0/28", name="elsewhere")

    assert [p["id"] for p in ipam.json("pns", "list", "--project", project)] == [pn_id]
    assert [p["id"] for p in ipam.json("pns", "list", "--vpc", pn["vpc_id"])] == [pn_id]
    assert [p["id"] for p in ipam.json("pns", "list")] == [pn_id, other["id"]]
    assert ipam("pns", "list", "--project", project).rows()[1:] == [line]

    vpcs = ipam.json("vpcs", "list", "--project", project)
    assert [(v["id"], v["private_network_count"]) for v in vpcs] == [(pn["vpc_id"], 1)]
    assert ipam("vpcs", "list", "--project", project).rows() == [
        ["ID", "NAME", "PROJECT_ID", "IS_DEFAULT", "PRIVATE_NETWORK_COUNT", "CREATED_AT"],
        [pn["vpc_id"], vpcs[0]["name"], project, "yes" if vpcs[0]["is_default"] else "no",
         "1", vpcs[0]["created_at"]]]

    assert ipam("pns", "delete", pn_id) == Outcome(0, f"deleted {pn_id}\n", "")
    assert ipam("pns", "get", pn_id) == Outcome(
        1, "", f"error 404 not_found: resource is not found (private_network {pn_id})\n")


# -- IPs --------------------------------------------------------------------------------


def test_booked_ips_are_listed_by_each_filter(ipam: Ipam, project: str) -> None:
    pn = new_pn(ipam, project, "10.2.0.0/28", "fd00:2::/64")
    mac = "02:00:00:00:00:0a"
    first = book(ipam, pn, "--address", "10.2.0.2", "--tag", "web", "--tag", "front")
    second = book(ipam, pn, "--address", "10.2.0.5", "--tag", "db")
    third = book(ipam, pn, "--ipv6")
    attached = ipam.json("ips", "attach", first["id"], "--mac", mac, "--name", "web-1")
    custom_id = attached["resource"]["id"]
    elsewhere = new_pn(ipam, str(uuid.uuid4()), "10.3.0.0/28")
    other = book(ipam, elsewhere)
    all_three = [first["id"], second["id"], third["id"]]

    assert second["address"] == "10.2.0.5/28"
    assert (first["project_id"], third["is_ipv6"]) == (project, True)
    assert ipam.ids("--pn", pn["id"]) == all_three
    assert ipam.ids("--project", project) == all_three
    assert ipam.ids("--project", str(uuid.uuid4())) == []
    assert ipam.ids() == [*all_three, other["id"]]
    assert ipam.ids("--tag", "web") == [first["id"]]
    assert ipam.ids("--tag", "db") == [second["id"]]
    assert ipam.ids("--tag", "web", "--tag", "db") == [first["id"], second["id"]]
    assert ipam.ids("--tag", "blue") == []
    assert ipam.ids("--mac", mac) == [first["id"]]
    assert ipam.ids("--resource-id", custom_id) == [first["id"]]
    assert ipam.ids("--pn", pn["id"], "--attached") == [first["id"]]
    assert ipam.ids("--pn", pn["id"], "--detached") == [second["id"], third["id"]]
    assert ipam.ids("--pn", pn["id"], "--ipv6") == [third["id"]]
    assert ipam.ids("--pn", pn["id"], "--ipv4") == [first["id"], second["id"]]
    assert ipam.ids("--pn", pn["id"], "--ipv4", "--detached") == [second["id"]]


def test_the_ip_table_shows_source_resource_and_tags(ipam: Ipam, project: str) -> None:
    pn = new_pn(ipam, project, "10.4.0.0/28")
    ip = book(ipam, pn, "--address", "10.4.0.2", "--tag", "web", "--tag", "blue")
    ipam("ips", "attach", ip["id"], "--mac", "02:00:00:00:00:0b", "--name", "web-1")
    bare = book(ipam, pn, "--address", "10.4.0.3")
    subnet = pn["subnets"][0]["id"]  # the source Scaleway names for a Private Network's IP
    assert ipam("ips", "list", "--pn", pn["id"]).rows() == [
        ["ID", "ADDRESS", "SOURCE", "RESOURCE_TYPE", "RESOURCE_NAME", "MAC", "TAGS"],
        [ip["id"], "10.4.0.2/28", subnet, "custom", "web-1", "02:00:00:00:00:0b",
         "web,blue"],
        [bare["id"], "10.4.0.3/28", subnet, "-", "-", "-", "-"]]
    assert ipam("ips", "get", bare["id"]).rows()[1:] == [
        [bare["id"], "10.4.0.3/28", subnet, "-", "-", "-", "-"]]


def test_zonal_ips_are_listed_by_zone(ipam: Ipam, gateway: GatewayNode) -> None:  # noqa: F811
    pool = ipam.json("pools", "add", "--zone", "fr-par-1", "--subnet", "51.15.20.0/28")
    request = urllib.request.Request(
        f"{gateway.url}/ipam/v1/regions/fr-par/ips", method="POST",
        data=json.dumps({"source": {"zonal": "fr-par-1"},
                         "project_id": str(uuid.uuid4())}).encode(),
        headers={"X-Auth-Token": ADMIN_SECRET, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        zonal = json.loads(resp.read())
    assert ipam.ids("--zonal", "fr-par-1") == [zonal["id"]]
    assert ipam.ids("--zonal", "fr-par-2") == []
    assert ipam("ips", "list", "--zonal", "fr-par-1").rows()[1] == [
        zonal["id"], zonal["address"], "fr-par-1", "-", "-", "-", "-"]
    assert pool["subnet"] == "51.15.20.0/28"


def test_attach_detach_move_and_release_change_the_ip(ipam: Ipam, project: str) -> None:
    pn = new_pn(ipam, project, "10.5.0.0/28")
    ip_id = book(ipam, pn)["id"]
    a, b = "02:00:00:00:00:01", "02:00:00:00:00:02"

    attached = ipam.json("ips", "attach", ip_id, "--mac", a, "--name", "one")
    assert (attached["resource"]["type"], attached["resource"]["mac_address"],
            attached["resource"]["name"]) == ("custom", a, "one")
    moved = ipam.json("ips", "move", ip_id, "--from-mac", a, "--to-mac", b, "--to-name", "two")
    assert (moved["resource"]["mac_address"], moved["resource"]["name"]) == (b, "two")
    assert ipam.json("ips", "move", ip_id, "--from-mac", b)["resource"] is None
    ipam.json("ips", "attach", ip_id, "--resource-type", "custom", "--mac", a)
    assert ipam.json("ips", "detach", ip_id, "--mac", a)["resource"] is None
    assert ipam("ips", "release", ip_id) == Outcome(0, f"released {ip_id}\n", "")
    assert ipam("ips", "get", ip_id) == Outcome(
        1, "", f"error 404 not_found: resource is not found (ip {ip_id})\n")


def test_a_release_refused_while_attached_reads_as_lines(ipam: Ipam, project: str) -> None:
    pn = new_pn(ipam, project, "10.6.0.0/28")
    ip_id = book(ipam, pn)["id"]
    ipam("ips", "attach", ip_id, "--mac", "02:00:00:00:00:03")
    assert ipam("ips", "release", ip_id) == Outcome(
        1, "", f"error 412 precondition_failed: IP {ip_id} is attached to a resource; "
               "detach it before releasing it\n")


def test_a_product_key_attaches_and_detaches_its_own_resources(ipam: Ipam,
                                                                project: str) -> None:
    pn = new_pn(ipam, project, "10.7.0.0/28")
    ip_id = book(ipam, pn)["id"]
    key = ipam.json("keys", "create", "--role", "product",
                    "--resource-types", "instance_server")
    server = str(uuid.uuid4())
    product = ["--resource-type", "instance_server", "--resource-id", server]

    attached = ipam.json("ips", "attach", ip_id, *product, "--name", "vm-1",
                         secret=key["secret_key"])
    assert attached["resource"] == {"type": "instance_server", "id": server,
                                    "mac_address": None, "name": "vm-1"}
    assert ipam.ids("--resource-id", server) == [ip_id]
    refused = ipam("ips", "detach", ip_id, *product)  # the admin does not manage servers
    assert refused == Outcome(1, "", "error 403 permissions_denied: only the product "
                                     "managing instance_server resources may detach this IP\n"
                                     "  action detach, resource instance_server\n")
    other = str(uuid.uuid4())
    moved = ipam.json("ips", "move", ip_id, "--from-resource-type", "instance_server",
                      "--from-resource-id", server, "--to-resource-type", "instance_server",
                      "--to-resource-id", other, secret=key["secret_key"])
    assert moved["resource"]["id"] == other
    detached = ipam.json("ips", "detach", ip_id, "--resource-type", "instance_server",
                         "--resource-id", other, secret=key["secret_key"])
    assert detached["resource"] is None


def test_book_without_project_books_in_the_networks_project(ipam: Ipam,
                                                             project: str) -> None:
    pn = new_pn(ipam, project, "10.8.0.0/29")
    assert book(ipam, pn)["project_id"] == project
    given = book(ipam, pn, "--project", project)
    assert given["project_id"] == project


# -- usage --------------------------------------------------------------------------------


def test_usage_counts_held_and_free_bookable_addresses_per_subnet(ipam: Ipam,
                                                                 project: str) -> None:
    pn = new_pn(ipam, project, "10.10.0.0/28", "10.10.1.0/29")
    for address in ("10.10.0.2", "10.10.0.3", "10.10.0.13", "10.10.1.2", "10.10.1.5"):
        book(ipam, pn, "--address", address)
    ids = {s["subnet"]: s["id"] for s in pn["subnets"]}

    # A /28 has 16 addresses, a /29 8; the first two and the last two are never booked.
    assert ipam("usage", "--pn", pn["id"]).rows() == [
        ["SUBNET", "HELD", "FREE", "USED"],
        ["10.10.0.0/28", "3", "9", "25.0%"],
        ["10.10.1.0/29", "2", "2", "50.0%"]]
    assert ipam.json("usage", "--pn", pn["id"]) == [
        {"subnet_id": ids["10.10.0.0/28"], "subnet": "10.10.0.0/28", "bookable": 12,
         "held": 3, "free": 9, "used_percent": 25.0},
        {"subnet_id": ids["10.10.1.0/29"], "subnet": "10.10.1.0/29", "bookable": 4,
         "held": 2, "free": 2, "used_percent": 50.0}]


def test_usage_of_a_full_subnet_shows_nothing_free(ipam: Ipam, project: str) -> None:
    pn = new_pn(ipam, project, "10.11.0.0/29")
    for _ in range(4):
        book(ipam, pn)
    assert ipam("usage", "--pn", pn["id"]).rows()[1:] == [["10.11.0.0/29", "4", "0", "100.0%"]]
    assert ipam("ips", "book", "--pn", pn["id"]) == Outcome(
        1, "", f"error 409 out_of_stock: no free address left in source {pn['id']}\n")


# -- outputs ------------------------------------------------------------------------------


def test_json_and_yaml_print_the_apis_objects(ipam: Ipam, project: str,
                                               gateway: GatewayNode) -> None:  # noqa: F811
    pn = new_pn(ipam, project, "10.12.0.0/28")
    ip = book(ipam, pn, "--tag", "web")
    with urllib.request.urlopen(urllib.request.Request(
            f"{gateway.url}/ipam/v1/regions/fr-par/ips/{ip['id']}",
            headers={"X-Auth-Token": ADMIN_SECRET}), timeout=10) as resp:
        from_api = json.loads(resp.read())
    assert ipam.json("ips", "get", ip["id"]) == from_api
    as_yaml = ipam("ips", "get", ip["id"], "-o", "yaml")
    assert (as_yaml.code, as_yaml.err) == (0, "")
    assert yaml.safe_load(as_yaml.out) == from_api
    listed = ipam("ips", "list", "--pn", pn["id"], "--output", "yaml")
    assert yaml.safe_load(listed.out) == [from_api]
    ipam("ips", "attach", ip["id"], "--mac", "02:00:00:00:00:0c")
    ipam("ips", "detach", ip["id"], "--mac", "02:00:00:00:00:0c")
    # A change answered by nothing prints nothing for programs.
    assert ipam("ips", "release", ip["id"], "-o", "json") == Outcome(0, "", "")


def test_keys_create_prints_shell_lines_for_the_sdks_environment(
        ipam: Ipam, project: str, operator_env: Path) -> None:
    org = str(uuid.uuid4())
    printed = ipam("keys", "create", "--role", "project_member", "--project-ids",
                   f"{project},{uuid.uuid4()}", "--organization-id", org, "-o", "env")
    assert (printed.code, printed.err) == (0, "")
    key = {line.split("=", 1)[0].removeprefix("export "): line.split("=", 1)[1]
           for line in printed.out.splitlines()}
    assert list(key) == ["SCW_ACCESS_KEY", "SCW_SECRET_KEY", "SCW_DEFAULT_ORGANIZATION_ID",
                         "SCW_DEFAULT_PROJECT_ID", "SCW_DEFAULT_REGION", "SCW_API_URL"]
    assert [k["access_key"] for k in ipam.json("keys", "list")] == [key["SCW_ACCESS_KEY"]]
    assert (key["SCW_DEFAULT_ORGANIZATION_ID"], key["SCW_DEFAULT_PROJECT_ID"],
            key["SCW_DEFAULT_REGION"], key["SCW_API_URL"]) == (org, project, "fr-par",
                                                                ipam.url)
    assert uuid.UUID(key["SCW_SECRET_KEY"])


@pytest.mark.parametrize("organization", [["--organization-id", str(uuid.uuid4())], []],
                         ids=["with_organization", "without_organization"])
def test_eval_of_keys_create_env_prepares_the_sdks_client_from_env(
        ipam: Ipam, project: str, operator_env: Path, organization: list[str]) -> None:
    """The README's promise, in a real shell: eval the lines, then Client.from_env()
    books an IP in the key's project through this gateway."""
    script = (
        'eval "$("$PYTHON" -m gateway.cli keys create --role project_member '
        f'--project-ids "$PROJECT" {" ".join(organization)} -o env --url "$URL" '
        '--secret-key "$SECRET")" && cd "$ROOT" && "$PYTHON" -c "$CLIENT"')
    client = (
        "from scaleway import Client\n"
        "from scaleway.ipam.v1 import IpamV1API, Source\n"
        "from scaleway.vpc.v2 import VpcV2API\n"
        "c = Client.from_env()\n"
        "pn = VpcV2API(c).create_private_network(default_route_propagation_enabled=False,"
        " subnets=['10.13.0.0/28'])\n"
        "ip = IpamV1API(c).book_ip(source=Source(private_network_id=pn.id), is_ipv6=False)\n"
        "print(ip.project_id, ip.address)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IPAM_", "SCW_"))}
    env.update(PYTHON=sys.executable, PROJECT=project, URL=ipam.url,
               SECRET=ADMIN_SECRET, ROOT=str(ROOT), CLIENT=client, PYTHONPATH=str(ROOT))
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    owner, address = done.stdout.split()
    assert owner == project and address.startswith("10.13.0.")


def test_env_output_is_only_for_keys_create(ipam: Ipam,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert ipam("ips", "list", "-o", "env") == Outcome(
        2, "", "ipam ips list: Invalid value for '-o' / '--output': 'env' is not one of "
               "'table', 'json', 'yaml'.\n")
    monkeypatch.setenv("IPAM_OUTPUT", "env")
    assert ipam("ips", "list") == Outcome(
        2, "", "ipam ips list: output 'env' is not one of table, json, yaml\n")


def test_a_list_follows_every_page_up_to_its_bound(ipam: Ipam, project: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pn = new_pn(ipam, project, "10.14.0.0/28")
    booked = [book(ipam, pn, "--address", f"10.14.0.{n}")["id"] for n in range(2, 7)]
    monkeypatch.setattr(session_module, "PAGE_SIZE", 2)
    assert ipam.ids("--pn", pn["id"]) == booked  # three pages
    monkeypatch.setattr(session_module, "MAX_PAGES", 2)
    bounded = ipam("ips", "list", "--pn", pn["id"], "-o", "json")
    assert [ip["id"] for ip in json.loads(bounded.out)] == booked[:4]
    assert (bounded.code, bounded.err) == (
        0, "showing the first 4 of 5 ips; narrow the filters for the rest\n")


# -- where the options come from ----------------------------------------------------------


def test_options_go_before_or_after_the_subcommand_and_after_wins(ipam: Ipam,
                                                                  project: str) -> None:
    pn = new_pn(ipam, project, "10.15.0.0/28")
    ip = book(ipam, pn)
    before = ipam.bare("--url", ipam.url, "--secret-key", ADMIN_SECRET, "-o", "json",
                       "ips", "get", ip["id"])
    assert before.json() == ip
    between = ipam.bare("--url", ipam.url, "ips", "--secret-key", ADMIN_SECRET, "get",
                        ip["id"], "-o", "json")
    assert between.json() == ip
    dead = f"http://127.0.0.1:{closed_port()}"
    overridden = ipam.bare("--url", dead, "-o", "table", "ips", "get", ip["id"],
                           "--url", ipam.url, "--secret-key", ADMIN_SECRET, "-o", "json")
    assert overridden.json() == ip


def test_defaults_come_from_the_config_file_below_flags_and_environment(
        ipam: Ipam, project: str, operator_env: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pn = new_pn(ipam, project, "10.16.0.0/28")
    ip = book(ipam, pn)
    config = operator_env / ".config" / "ipam" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'url = "{ipam.url}"\nsecret_key = "{ADMIN_SECRET}"\n'
                      'region = "fr-par"\noutput = "json"\n')
    assert ipam.bare("ips", "get", ip["id"]).json() == ip  # all from ~/.config/ipam
    assert ipam.bare("ips", "get", ip["id"], "-o", "table").rows()[1][0] == ip["id"]
    monkeypatch.setenv("IPAM_OUTPUT", "yaml")
    assert yaml.safe_load(ipam.bare("ips", "get", ip["id"]).out) == ip

    elsewhere = operator_env / "other.toml"
    dead = f"http://127.0.0.1:{closed_port()}"
    elsewhere.write_text(f'url = "{dead}"\nsecret_key = "{ADMIN_SECRET}"\n')
    assert ipam.bare("--config", str(elsewhere), "ips", "get", ip["id"]).code == 1
    monkeypatch.setenv("IPAM_CONFIG", str(elsewhere))
    assert ipam.bare("ips", "get", ip["id"]) == Outcome(
        1, "", f"cannot reach {dead}: [Errno 111] Connection refused\n")
    monkeypatch.setenv("IPAM_URL", ipam.url)  # the environment beats the file
    assert yaml.safe_load(ipam.bare("ips", "get", ip["id"]).out) == ip


def test_the_admin_secret_is_found_in_the_data_dir_last(
        ipam: Ipam, operator_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = operator_env / "data"
    data_dir.mkdir()
    (data_dir / "admin_secret_key").write_text(ADMIN_SECRET + "\n")
    assert ipam.bare("pools", "list", "--url", ipam.url, "--data-dir", str(data_dir)) == \
        Outcome(0, "ID    ZONE    SUBNET    CREATED_AT\n", "")
    monkeypatch.setenv("IPAM_DATA_DIR", str(data_dir))
    assert ipam.bare("pools", "list", "--url", ipam.url).code == 0
    monkeypatch.setenv("IPAM_SECRET_KEY", str(uuid.uuid4()))  # the environment comes first
    refused = ipam.bare("pools", "list", "--url", ipam.url)
    assert (refused.code, refused.err.split(":")[0]) == (1, "error 401 denied_authentication")


# -- the command itself --------------------------------------------------------------------


def test_version_prints_the_installed_distributions(ipam: Ipam) -> None:
    assert ipam.bare("--version") == Outcome(
        0, f"ipam {importlib.metadata.version('ipam')}\n", "")


def test_shell_completion_goes_through_clicks_mechanism(
        ipam: Ipam, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_IPAM_COMPLETE", "bash_source")
    script = ipam.bare()
    assert script.code == 0
    assert "_ipam_completion()" in script.out
    assert "complete -o nosort -F _ipam_completion ipam" in script.out
    monkeypatch.setenv("_IPAM_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", "ipam ips at")
    monkeypatch.setenv("COMP_CWORD", "2")
    assert ipam.bare() == Outcome(0, "plain,attach\n", "")


def test_a_group_without_its_subcommand_shows_its_help(ipam: Ipam) -> None:
    shown = ipam.bare("ips")
    assert (shown.code, shown.out) == (2, "")
    assert shown.err.startswith("Usage: ipam ips [OPTIONS] COMMAND [ARGS]...\n")
    assert "  attach " in shown.err


def test_serve_parses_its_own_flags() -> None:
    shown = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--help"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert (shown.returncode, shown.stderr) == (0, "")
    assert shown.stdout.startswith("usage: ipam serve ")
    assert "--etcd-endpoints" in shown.stdout
    refused = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--no-such"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60,
                             check=False)
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1] == (
        "ipam serve: error: unrecognized arguments: --no-such")


def test_serve_after_common_options_still_parses_its_own_flags(ipam: Ipam) -> None:
    shown = ipam.bare("--region", "fr-par", "serve", "--help")
    assert (shown.code, shown.err) == (0, "")
    assert shown.out.startswith("usage: ipam serve ")


# -- errors: one line, the right exit code, never a traceback -----------------------------


@pytest.mark.parametrize(("args", "line"), [
    (["ips", "list", "-o", "xml"],
     ("ipam ips list: Invalid value for '-o' / '--output': 'xml' is not one of 'table', "
      "'json', 'yaml'.")),
    (["-o", "xml", "ips", "list"],
     ("ipam: Invalid value for '-o' / '--output': 'xml' is not one of 'table', 'json', "
      "'yaml'.")),
    (["ips", "book"], "ipam ips book: Missing option '--pn'."),
    (["pns", "create", "--subnet", "10.0.0.0/24"], "ipam pns create: Missing option '--name'."),
    (["ips", "get", "abc"], "ipam ips get: Invalid value for 'ID': 'abc' is not a valid UUID."),
    (["ips", "list", "--pn", "abc"],
     "ipam ips list: Invalid value for '--pn': 'abc' is not a valid UUID."),
    (["pools", "delete", "12"],
     "ipam pools delete: Invalid value for 'POOL_ID': '12' is not a valid UUID."),
    (["keys", "create", "--role", "root"],
     ("ipam keys create: Invalid value for '--role': 'root' is not one of 'admin', "
      "'project_member', 'project_reader', 'product'.")),
    (["ips", "attach", str(uuid.UUID(int=1))],
     "ipam ips attach: a custom resource is known by its MAC: give --mac"),
    (["ips", "attach", str(uuid.UUID(int=1)), "--mac", "02:00:00:00:00:01",
      "--resource-id", str(uuid.UUID(int=2))],
     ("ipam ips attach: --resource-id names a product's resource; a custom resource is "
      "known by its --mac")),
    (["ips", "detach", str(uuid.UUID(int=1)), "--resource-type", "instance_server"],
     ("ipam ips detach: a resource of type instance_server is known by its id: give "
      "--resource-id")),
    (["ips", "move", str(uuid.UUID(int=1)), "--from-mac", "02:00:00:00:00:01",
      "--to-resource-type", "lb_server"],
     ("ipam ips move: a resource of type lb_server is known by its id: give "
      "--to-resource-id")),
    (["ips", "list", "--no-such-flag"], "ipam ips list: No such option '--no-such-flag'."),
    (["nets"], "ipam: No such command 'nets'."),
])
def test_bad_input_exits_2_with_one_line(ipam: Ipam, args: list[str], line: str) -> None:
    assert ipam(*args) == Outcome(2, "", line + "\n")


def test_an_api_error_exits_1_with_its_lines(ipam: Ipam) -> None:
    missing = str(uuid.uuid4())
    assert ipam("ips", "get", missing) == Outcome(
        1, "", f"error 404 not_found: resource is not found (ip {missing})\n")
    assert ipam("pns", "create", "--name", "x", "--subnet", "10.0.0.0/24") == Outcome(
        1, "", "error 400 invalid_arguments: invalid argument(s)\n"
               "  project_id: this field is required (required)\n")
    assert ipam("pns", "create", "--name", "x", "--subnet", "8.8.8.0/24", "--project",
                str(uuid.uuid4())) == Outcome(
        1, "", "error 400 invalid_arguments: invalid argument(s)\n  subnets: 8.8.8.0/24 is "
               "not a private range: use 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or "
               "fc00::/7 (constraint)\n")


def test_a_wrong_secret_exits_1_with_the_refusal(ipam: Ipam) -> None:
    refused = ipam("ips", "list", secret=str(uuid.uuid4()))
    assert (refused.code, refused.out) == (1, "")
    assert refused.err.startswith("error 401 denied_authentication: ")
    assert len(refused.err.splitlines()) <= 2


def test_an_unreachable_gateway_exits_1_with_one_line(ipam: Ipam) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    assert ipam.bare("ips", "list", "--url", dead, "--secret-key", ADMIN_SECRET) == Outcome(
        1, "", f"cannot reach {dead}: [Errno 111] Connection refused\n")


@pytest.fixture
def hangs_up() -> Iterator[str]:
    """A server that accepts each connection and closes it without answering."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    thread.join(10)


def test_a_gateway_hanging_up_exits_1_with_one_line(ipam: Ipam, hangs_up: str) -> None:
    assert ipam.bare("ips", "list", "--url", hangs_up, "--secret-key", ADMIN_SECRET) == \
        Outcome(1, "", f"cannot reach {hangs_up}: Remote end closed connection without "
                       "response\n")


class _NotJson(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if "/ips" in self.path:
            body, status = b"<html>welcome</html>", 200
        else:
            body, status = b"<html>bad gateway</html>", 502
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def not_a_gateway() -> Iterator[str]:
    """A web server answering HTML: 200 for the IP list, 502 for the rest."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotJson)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_an_answer_that_is_not_json_exits_1_with_one_line(ipam: Ipam,
                                                          not_a_gateway: str) -> None:
    common = ["--url", not_a_gateway, "--secret-key", ADMIN_SECRET]
    assert ipam.bare("ips", "list", *common) == Outcome(
        1, "", f"error: {not_a_gateway} answered something that is not JSON\n")
    assert ipam.bare("vpcs", "list", *common) == Outcome(
        1, "", "error 502: <html>bad gateway</html>\n")


@pytest.mark.parametrize(("content", "line"), [
    (None, "config file {path}: not found"),
    ("url = ", "config file {path}: Invalid value (at line 1, column 7)"),
    ('secret-key = "x"', ("config file {path}: unknown key 'secret-key' (known: output, "
                         "region, secret_key, url)")),
    ("url = 8080", "config file {path}: url must be a non-empty string"),
    ('output = "env"', ("config file {path}: output must be one of table, json, yaml, "
                       "not 'env'")),
    ('url = "127.0.0.1:8080"', "url '127.0.0.1:8080' is not an http:// or https:// URL"),
])
def test_a_config_file_that_cannot_be_used_exits_2_with_one_line(
        ipam: Ipam, operator_env: Path, content: str | None, line: str) -> None:
    path = operator_env / "config.toml"
    if content is not None:
        path.write_text(content + "\n")
    assert ipam.bare("--config", str(path), "ips", "list", "--secret-key", "x") == Outcome(
        2, "", "ipam ips list: " + line.format(path=path) + "\n")


def test_no_secret_key_anywhere_exits_2_with_one_line(ipam: Ipam,
                                                       operator_env: Path) -> None:
    assert ipam.bare("ips", "list", "--url", ipam.url) == Outcome(
        2, "", "ipam ips list: no secret key: give --secret-key, set IPAM_SECRET_KEY, or put "
               "secret_key in the config file (none in .ipam)\n")
