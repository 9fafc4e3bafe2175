"""`ipam dhcp` refuses bad flags with one line naming the flag, exit 2, before starting."""

from __future__ import annotations

import pytest

from gateway.cli import main as ipam_main
from netagent.cli import main

PN = "6b0a7f57-9a0e-4c47-9d3f-5f4c1c1e0e11"
BASE = ["--etcd-endpoints", "127.0.0.1:1", "--interface", f"eth1={PN}"]


@pytest.mark.parametrize(("argv", "named"), [
    (["--interface", f"eth1={PN}"], "--etcd-endpoints"),
    (["--etcd-endpoints", "127.0.0.1:1"], "--interface"),
    (["--etcd-endpoints", "x", "--interface", "eth1"], "--interface"),
    (["--etcd-endpoints", "x", "--interface", "eth1=nope"], "--interface"),
    (["--etcd-endpoints", "x", "--interface", f"eth1={PN}", "--interface", f"eth1={PN}"],
     "--interface"),
    ([*BASE, "--unknown-mac", "maybe"], "--unknown-mac"),
    ([*BASE, "--unknown-mac", "6b0a7f57-0000-4c47-9d3f-5f4c1c1e0e11=book"], "--unknown-mac"),
    ([*BASE, "--t1", "0"], "--t1"),
    ([*BASE, "--lease-time", "ten"], "--lease-time"),
    ([*BASE, "--t1", "60", "--t2", "30"], "--t1"),
    ([*BASE, "--dns-port", "70000"], "--dns-port"),
    ([*BASE, "--dns-upstream", "resolver"], "--dns-upstream"),
    ([*BASE, "--etcd-cert-file", "/c.pem"], "--etcd-cert-file"),
    ([*BASE, "--etcd-username", "u"], "--etcd-username"),
    ([*BASE, "--metrics-listen", "9547"], "--metrics-listen"),
    ([*BASE, "--metrics-listen", "127.0.0.1:http"], "--metrics-listen"),
    ([*BASE, "--agent-id", ""], "--agent-id"),
    ([*BASE, "--agent-id", "agent\t1"], "--agent-id"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_a_bad_flag_is_one_line_and_exit_2(argv, named, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ipam dhcp: ") and named in err


def test_ipam_dhcp_is_the_agent_and_its_help_lists_its_flags(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        ipam_main(["dhcp", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--interface", "--unknown-mac", "--t1", "--dns-upstream", "--etcd-ca-file"):
        assert flag in out


def test_an_interface_that_does_not_exist_is_named_and_the_agent_exits_1(etcd_single,
                                                                        key_prefix) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "netagent", "--etcd-endpoints",
                           ",".join(etcd_single.endpoints), "--etcd-prefix", key_prefix,
                           "--interface", f"nosuch0={PN}"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("ipam dhcp: cannot serve DHCP on "
                                                           "interface nosuch0")
    assert "Traceback" not in proc.stderr
