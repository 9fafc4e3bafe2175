"""The Dockerfile and docker-compose.yml, checked without a container engine.

What `docker compose up` would only show at run time: a variable the command ignores,
a command that repeats the image's entrypoint, a port that does not match, a package
the image leaves out, a health check that asks the wrong port. The known `IPAM_*`
variables come from the commands' own `--help`, and defaults from `gateway.config`.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from gateway.config import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
IPAM_VARIABLE = re.compile(r"\bIPAM_[A-Z0-9_]+\b")


# -- the Dockerfile -----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The arguments of a JSON-array (exec form) instruction."""
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} {self.args}: not an exec form"
        return [str(v) for v in value]


@cache
def dockerfile() -> tuple[Instruction, ...]:
    """The Dockerfile's instructions, continuation lines joined and comments left out."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append(Instruction(keyword.upper(), args.strip()))
    return tuple(out)


def instructions(keyword: str) -> list[Instruction]:
    return [i for i in dockerfile() if i.keyword == keyword]


def image_env() -> dict[str, str]:
    """The image's ENV, in the `ENV A=1 B=2` form."""
    env: dict[str, str] = {}
    for instruction in instructions("ENV"):
        for pair in instruction.args.split():
            name, sep, value = pair.partition("=")
            assert sep, f"ENV {instruction.args}: write ENV NAME=value"
            env[name] = value
    return env


def image_command() -> list[str]:
    (entrypoint,), (cmd,) = instructions("ENTRYPOINT"), instructions("CMD")
    return entrypoint.exec_form() + cmd.exec_form()


def healthcheck() -> list[str]:
    """The image's health check command, in exec form."""
    checks = instructions("HEALTHCHECK")
    assert len(checks) == 1, "the Dockerfile needs one HEALTHCHECK"
    _, sep, command = checks[0].args.partition("CMD ")
    assert sep, f"HEALTHCHECK {checks[0].args}: give a CMD"
    assert command.strip().startswith("["), "HEALTHCHECK CMD: use the exec form (no shell)"
    return Instruction("CMD", command).exec_form()


# -- docker-compose.yml -------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    with (ROOT / "docker-compose.yml").open() as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict) and data.get("services"), "docker-compose.yml has no services"
    return data


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- NAME=value` form
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def built_here(service: dict[str, Any]) -> bool:
    """Whether the service runs the image of this repository's Dockerfile."""
    build = service.get("build")
    if build is None:
        return False
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile_name = "Dockerfile" if isinstance(build, str) else build.get(
        "dockerfile", "Dockerfile")
    return (ROOT / context).resolve() == ROOT and dockerfile_name == "Dockerfile"


def ipam_subcommand(service: dict[str, Any]) -> str:
    """The `ipam` subcommand a service built here runs (its command, else the image's)."""
    command = service.get("command") or image_command()[1:]
    assert isinstance(command, list), f"command {command!r}: use the list form"
    return str(command[0])


def effective_env(service: dict[str, Any]) -> dict[str, str]:
    return {**image_env(), **environment(service)}


def container_port(mapping: str | int | dict[str, Any]) -> int:
    """The container side of a `ports` entry ("127.0.0.1:8080:8080", "8080/tcp", ...)."""
    if isinstance(mapping, dict):
        return int(mapping["target"])
    return int(str(mapping).split(":")[-1].split("/")[0])


# -- what the commands know ---------------------------------------------------------------


@cache
def known_variables(subcommand: str) -> frozenset[str]:
    """The IPAM_* variables `ipam SUBCOMMAND --help` names, from the installed entry point."""
    entrypoint = instructions("ENTRYPOINT")[0].exec_form()[0]
    program = shutil.which(entrypoint, path=str(Path(sys.executable).parent))
    assert program, f"the image's entrypoint {entrypoint!r} is not installed next to " \
                    f"{sys.executable} (pip install -e .)"
    run = subprocess.run([program, subcommand, "--help"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, \
        f"`{entrypoint} {subcommand} --help` failed: is {subcommand!r} an ipam subcommand?" \
        f"\n{run.stderr}"
    names = frozenset(IPAM_VARIABLE.findall(run.stdout))
    assert names, f"`{entrypoint} {subcommand} --help` names no IPAM_ variable"
    return names


def default_of(setting: str) -> str:
    default = next(s.default for s in SETTINGS if s.name == setting)
    assert default is not None
    return default


# -- a stand-in for the checked server ----------------------------------------------------


class _Probe(http.server.BaseHTTPRequestHandler):
    status: ClassVar[int] = 200
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def probed() -> Iterator[tuple[int, type[_Probe]]]:
    """A local HTTP server answering every GET with `handler.status`; (port, handler)."""
    handler = type("Probe", (_Probe,), {"status": 200, "asked": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def run_check(test: list[str], env: dict[str, str]) -> int:
    """Run a health check's exec-form command here, with this interpreter for `python`,
    and a proxy that does not exist (a check must not use one)."""
    assert test[0] in ("python", "python3"), \
        f"health check {test}: the image has python, not {test[0]!r}"
    nowhere = "http://127.0.0.1:9"
    return subprocess.run([sys.executable, *test[1:]], timeout=30, capture_output=True,
                          check=False, env={**env, "HTTP_PROXY": nowhere,
                                            "http_proxy": nowhere}).returncode


# -- the tests -----------------------------------------------------------------------------


def test_every_service_runs_a_pinned_image_or_this_dockerfile() -> None:
    for name, service in services().items():
        image, build = service.get("image"), service.get("build")
        assert bool(image) != bool(build), f"service {name}: give an image or a build"
        if image:
            tag = str(image).rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"service {name}: pin {image} to a version"
        else:
            assert built_here(service), f"service {name}: build {build!r} is not ./Dockerfile"


def test_every_ipam_variable_a_service_sets_is_one_its_command_knows() -> None:
    for name, service in services().items():
        if not built_here(service):
            continue
        subcommand = ipam_subcommand(service)
        known = known_variables(subcommand)
        unknown = sorted(v for v in environment(service) if v.startswith("IPAM_")
                         and v not in known)
        assert unknown == [], f"service {name}: `ipam {subcommand}` ignores {unknown}"


def test_the_image_sets_only_variables_ipam_serve_knows() -> None:
    unknown = sorted(set(image_env()) - known_variables("serve"))
    assert unknown == [], f"Dockerfile ENV: `ipam serve` ignores {unknown}"
    assert image_command()[1:] == ["serve"], "the image's default command is `ipam serve`"


def test_the_image_holds_every_package_of_the_project() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns}
    copied = {i.args.split()[0].rstrip("/") for i in instructions("COPY")}
    assert packages <= copied, f"the Dockerfile does not COPY {sorted(packages - copied)}: " \
                               "`pip install .` would leave them out of the image"


def test_the_image_runs_as_an_unprivileged_user() -> None:
    users = instructions("USER")
    assert users, "the Dockerfile has no USER: the node would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1].args} is root"
    if user.isdigit():  # the numeric uid must be the one the image creates
        assert any(f"--uid {user}" in i.args for i in instructions("RUN")), \
            f"USER {user}: no RUN creates a user with that uid"


def test_the_healthcheck_asks_readyz_on_the_configured_port(
        probed: tuple[int, type[_Probe]]) -> None:
    port, handler = probed
    command = healthcheck()
    script = " ".join(command)
    assert "IPAM_PORT" in script, f"HEALTHCHECK {command}: it must follow IPAM_PORT"
    assert f"'{default_of('port')}'" in script, \
        f"HEALTHCHECK {command}: without IPAM_PORT it must ask ipam serve's default port " \
        f"{default_of('port')}"
    assert run_check(command, {"IPAM_PORT": str(port)}) == 0, \
        "the health check failed against a ready node"
    assert handler.asked == ["/readyz"]
    handler.status = 503
    assert run_check(command, {"IPAM_PORT": str(port)}) != 0, \
        "the health check passed against a node that is not ready"


def test_the_agents_healthcheck_asks_its_metrics_listener(
        probed: tuple[int, type[_Probe]]) -> None:
    port, handler = probed
    for name, service in services().items():
        if not built_here(service) or ipam_subcommand(service) != "dhcp":
            continue
        check = service.get("healthcheck")
        assert check and check.get("test"), \
            f"service {name}: the image's check asks a gateway's port; give the agent its own"
        assert check["test"][0] == "CMD", f"service {name}: use the exec form (CMD)"
        assert "IPAM_DHCP_METRICS_LISTEN" in environment(service), \
            f"service {name}: its health check needs IPAM_DHCP_METRICS_LISTEN"
        env = {"IPAM_DHCP_METRICS_LISTEN": f"127.0.0.1:{port}"}
        assert run_check(check["test"][1:], env) == 0, f"service {name}: the check failed"
        assert handler.asked == ["/metrics"]


def test_the_exposed_port_is_the_one_the_nodes_listen_on_and_haproxy_asks() -> None:
    exposed = {int(p.split("/")[0]) for i in instructions("EXPOSE") for p in i.args.split()}
    listen = int(image_env().get("IPAM_PORT") or default_of("port"))
    assert exposed == {listen}, f"EXPOSE {sorted(exposed)}, but the image listens on {listen}"
    nodes = {}
    for name, service in services().items():
        if built_here(service) and ipam_subcommand(service) == "serve":
            port = int(effective_env(service).get("IPAM_PORT") or default_of("port"))
            assert port in exposed, f"service {name}: IPAM_PORT {port} is not EXPOSEd"
            for mapping in service.get("ports") or ():
                assert container_port(mapping) == port, \
                    f"service {name}: {mapping} does not reach the node's port {port}"
            nodes[name] = port
    assert nodes, "docker-compose.yml runs no `ipam serve`"
    config = "\n".join(str(c.get("content", "")) for c in (compose().get("configs") or {})
                       .values())
    backends = re.findall(r"^\s*server\s+\S+\s+([\w.-]+):(\d+)", config, re.MULTILINE)
    assert backends, "no haproxy backend server in docker-compose.yml's configs"
    for host, port in backends:
        assert host in nodes, f"haproxy backend {host}: no such `ipam serve` service"
        assert int(port) == nodes[host], \
            f"haproxy backend {host}:{port}, but {host} listens on {nodes[host]}"
    binds = {int(p) for p in re.findall(r"^\s*bind\s+\S*:(\d+)", config, re.MULTILINE)}
    for name, service in services().items():
        if str(service.get("image", "")).startswith("haproxy"):
            for mapping in service.get("ports") or ():
                assert container_port(mapping) in binds, \
                    f"service {name}: {mapping} reaches no haproxy bind {sorted(binds)}"


def test_services_on_etcd_start_once_every_member_is_healthy() -> None:
    members = [name for name, service in services().items()
               if "ETCD_NAME" in environment(service)]
    assert members, "docker-compose.yml runs no etcd member"
    for name in members:
        test = (services()[name].get("healthcheck") or {}).get("test")
        assert test and test[0] == "CMD", \
            f"service {name}: an etcd member needs a health check in exec form (no shell)"
    for name, service in services().items():
        if "IPAM_ETCD_ENDPOINTS" not in environment(service):
            continue
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), \
            f"service {name}: depends_on must name conditions (service_healthy)"
        for member in members:
            condition = (depends.get(member) or {}).get("condition")
            assert condition == "service_healthy", \
                f"service {name}: start it once {member} is healthy, not {condition}"
