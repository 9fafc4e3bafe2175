"""Smoke test of the DHCP/DNS bench: it runs, its self-checks pass, it writes its result.

No rate is asserted: the machine is shared. What is asserted is what the instrument
itself must get right: the relay it plays speaks what the agent reads, a wrong answer
fails its check, and a quick run completes with every check passed and every figure
beside its baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.dhcpload import DONE, Dora, Pending, dhcp_request
from netagent.dhcp4 import Dhcp4Packet, MessageType, Option, decode, encode

ROOT = Path(__file__).resolve().parents[2]
MAC = "02:00:00:00:00:2a"
GIADDR, SERVER, ROUTER = "10.100.0.1", "10.100.255.254", "10.100.0.1"
ADDRESS, OTHER = "10.100.7.9", "10.100.7.10"


def _dora(expect: str | None) -> Dora:
    return Dora({"macs": [MAC], "expect": None if expect is None else [expect],
                 "giaddr": GIADDR, "subnets": [{"cidr": "10.100.0.0/16", "gateway": ROUTER,
                                                "server": SERVER}]})


def _reply(kind: MessageType, xid: int, yiaddr: str) -> bytes:
    options: dict[int, bytes] = {Option.SERVER_ID: bytes(map(int, SERVER.split("."))),
               Option.SUBNET_MASK: bytes((255, 255, 0, 0)),
               Option.ROUTER: bytes(map(int, ROUTER.split("."))),
               Option.LEASE_TIME: (3600).to_bytes(4, "big")}
    return encode(Dhcp4Packet(op=2, message_type=kind, xid=xid,
                              chaddr=bytes.fromhex(MAC.replace(":", "")), yiaddr=yiaddr,
                              giaddr=GIADDR, options=options))


def test_the_relay_speaks_what_the_agent_reads() -> None:
    packet = decode(dhcp_request(3, 0xABCD, bytes.fromhex(MAC.replace(":", "")),
                                 bytes((10, 100, 0, 1)), bytes((10, 100, 7, 9)),
                                 bytes((10, 100, 255, 254))))
    assert (packet.op, packet.message_type, packet.xid, packet.hops) == (
        1, MessageType.REQUEST, 0xABCD, 1)
    assert (packet.mac, packet.giaddr, packet.requested_address, packet.server_id) == (
        MAC, GIADDR, ADDRESS, SERVER)


def test_an_offer_of_another_address_fails_the_check() -> None:
    dora = _dora(expect=ADDRESS)
    pending = Pending(7, 0, b"", 0.0, 0.0)
    assert "IPAM holds 10.100.7.9" in str(dora.answer(pending, _reply(MessageType.OFFER, 7,
                                                                       OTHER)))


def test_the_offered_address_is_requested_then_acked() -> None:
    dora = _dora(expect=ADDRESS)
    pending = Pending(7, 0, b"", 0.0, 0.0)
    request = dora.answer(pending, _reply(MessageType.OFFER, 7, ADDRESS))
    assert isinstance(request, bytes)
    asked = decode(request)
    assert (asked.message_type, asked.requested_address, asked.server_id) == (
        MessageType.REQUEST, ADDRESS, SERVER)
    assert dora.answer(pending, _reply(MessageType.ACK, 7, ADDRESS)) == DONE
    assert dora.extra() == {"bound": [[MAC, ADDRESS]]}


def test_an_ack_of_another_address_than_offered_fails_the_check() -> None:
    dora = _dora(expect=None)
    pending = Pending(7, 0, b"", 0.0, 0.0)
    assert isinstance(dora.answer(pending, _reply(MessageType.OFFER, 7, ADDRESS)), bytes)
    assert "offered 10.100.7.9" in str(dora.answer(pending, _reply(MessageType.ACK, 7, OTHER)))


def test_quick_smoke_run_passes_its_self_checks(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench", "dhcp", "--quick", "--scale", "0.1", "--quiet",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = list(tmp_path.glob("dhcp-quick-*.json"))
    doc = json.loads(path.read_text())

    assert {"plan", "machine", "runs", "echo_runs", "booking_runs", "gateway_booking_runs",
            "watch_lag", "memory", "view", "audit", "checks", "targets", "verified",
            "wall_s"} <= doc.keys()
    # The unknown-MAC target's baseline: a gateway node's bookings over HTTP, all checked.
    assert [r["ok"] for r in doc["gateway_booking_runs"]] == [r["count"] for r in
                                                               doc["gateway_booking_runs"]]
    kinds = {(r["scenario"], r.get("qtype")) for r in doc["runs"]}
    assert kinds == {("1", None), ("2", None), ("3", "A"), ("3", "PTR")}
    for run in doc["runs"]:
        assert run["verify"]["ok"], run["verify"]
        assert (run["lost"], run["wrong"], run["done"]) == (0, 0, run["count"]), run["name"]
        assert run["baseline"]["per_s"] > 0 and run["ratio_to_baseline"] is not None
        assert {"p50_ms", "p99_ms"} <= run["latency"].keys()
    unknown = next(r for r in doc["runs"] if r["scenario"] == "2")
    assert unknown["etcd_check"]["ok"] and unknown["etcd_check"]["duplicates"] == 0
    assert unknown["baseline"]["kind"] == "gateway_bookings"
    assert unknown["ratio_to_allocator"] is not None
    lag = doc["watch_lag"]
    assert lag["seen"] == lag["changes"] > 0 and lag["lag"]["p99_ms"] is not None
    assert doc["memory"]["leases"] == doc["memory"]["ips"] == doc["plan"]["network_ips"]
    assert doc["audit"]["ok"]
    assert all(check["ok"] for check in doc["checks"])
    assert doc["verified"] is True
    assert len(doc["targets"]) == 8  # every target is listed, met or not
