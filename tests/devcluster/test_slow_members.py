"""Slow members under booking load: a link with 200 ms each way, a disk whose fsyncs crawl
(issue 15).

A member paused or cut off answers nothing (tests/devcluster/test_partitions.py); a slow
one answers, late. The bar is the same: no address held twice, no acknowledged booking
lost, no IP leaked, every client's unknown answer settled by retrying its
Idempotency-Key (the retry budget: test_partitions.SETTLE_ATTEMPTS once the load stops),
and no booking refused outright. Each case prints the acknowledged count, those counts,
throughput before and during the fault, the p99 latency of the bookings answered during
it, and the longest window without a successful booking; the window's bound is a
leader cut's (an election and one etcd deadline): a slow member must cost no more than
a dead one.

Same lab and load as test_partitions (its `stack` fixture and `_under_load`): the fault
lasts CUT_SECONDS (10 s). The link cases use tc netem where the kernel has it (the
module sch_netem), a relay process otherwise (`NetLab.delay_link`); the disk cases need
strace and ptrace (`partition.fsync_delay_available()`), and skip with the reason
otherwise.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from bench.history import FAIL, OK
from devcluster import netlab
from devcluster.netlab import NetLab
from devcluster.partition import PartitionLab, fsync_delay_available
from tests.devcluster import test_partitions as partitions
from tests.devcluster.test_partitions import (
    AFTER_SECONDS,
    LEADER_WINDOW,
    WARMUP_SECONDS,
    Report,
    Run,
    Stack,
    _assert_clean,
    _final_verdict,
    _report,
    _under_load,
)

stack = partitions.stack  # the fixture: the same lab, gateway and private network

why_not = netlab.available()
pytestmark = pytest.mark.skipif(why_not is not None, reason=str(why_not))

LINK_DELAY_MS = 200.0  # each way: a round trip through the slow link costs 400 ms more
# Each fdatasync/fsync: a disk of a few IOPS, not a dead one (IPAM_SLOW_FSYNC_MS to change).
FSYNC_DELAY_MS = float(os.environ.get("IPAM_SLOW_FSYNC_MS", "100"))
SLOW_WINDOW = LEADER_WINDOW

no_fsync_delay = fsync_delay_available()
needs_fsync_delay = pytest.mark.skipif(no_fsync_delay is not None,
                                       reason=str(no_fsync_delay))


@dataclass
class Pace:
    """Bookings per second before and during the fault; latencies of those during it."""

    before: float
    during: float
    p50: float
    p99: float
    answered: int  # bookings answered OK during the fault
    refused: int  # attempts answered with a definite failure (4xx), whenever
    out_of_use: dict[str, int]  # the gateway's store: times each endpoint went out of use

    def __str__(self) -> str:
        return (f"throughput {self.before:.1f}/s before, {self.during:.1f}/s during; "
                f"latency during p50={self.p50 * 1000:.0f}ms p99={self.p99 * 1000:.0f}ms "
                f"({self.answered} bookings); refused {self.refused}; "
                f"endpoints out of use {dict(self.out_of_use) or 'never'}")


# What allocator.store logs (at warning) each time an endpoint goes out of use: a probe
# unanswered, or a call's deadline.
_OUT_OF_USE = re.compile(r"etcd endpoint (\S+) out of use")


def _out_of_use(log: str) -> dict[str, int]:
    return dict(Counter(_OUT_OF_USE.findall(log)))


def _pace(run: Run, slowed_at: float, restored_at: float, log: str) -> Pace:
    ops = run.history.operations
    ok = [(op.invoked, op.completed) for op in ops
          if op.outcome == OK and op.completed is not None]
    before = [done for _, done in ok if slowed_at - WARMUP_SECONDS <= done < slowed_at]
    during = [(invoked, done) for invoked, done in ok
              if slowed_at <= invoked and done < restored_at]
    latencies = sorted(done - invoked for invoked, done in during)
    p99 = (statistics.quantiles(latencies, n=100, method="inclusive")[98]
           if len(latencies) > 1 else (latencies[0] if latencies else 0.0))
    return Pace(before=len(before) / WARMUP_SECONDS,
                during=len(during) / (restored_at - slowed_at),
                p50=statistics.median(latencies) if latencies else 0.0, p99=p99,
                answered=len(during),
                refused=sum(op.outcome == FAIL for op in ops), out_of_use=_out_of_use(log))


# What gateway.availability logs when it closes its gate: from then on every request is
# answered 503 until a quorum probe is answered again.
GATEWAY_GATE_CLOSED = "etcd unreachable ("


def _slowed(name: str, stack: Stack, slow: Any, restore: Any,
            window: float | None = SLOW_WINDOW) -> tuple[Report, Pace]:
    """Bookings while `slow()` holds for CUT_SECONDS, then `restore()`: checked, reported.

    Every case asserts the history clean, no booking refused and the window within
    SLOW_WINDOW, and prints whether the gateway's availability gate closed. A slow member
    is not an unreachable one (gateway/availability.py closes the gate only when no quorum
    probe is answered for 2 s), but through a 200 ms leader on a loaded machine a read
    can take 2.2 s (seen once in CI): the gate then closes until the next answer, the
    clients retry the 503 with their keys, and what they see is the window, asserted."""
    lab = stack.lab
    run, slowed_at, restored_at = _under_load(stack, slow, restore)
    lab.wait_healthy()
    report = _report(name, run, _final_verdict(stack, run), slowed_at,
                     restored_at + AFTER_SECONDS)
    log = stack.gateway.log_tail(100_000)
    pace = _pace(run, slowed_at, restored_at, log)
    print(f"{name}: {pace}")
    _assert_clean(report, run)
    assert pace.refused == 0, f"{report}; {pace}"
    assert pace.answered > 0, f"no booking answered while slowed: {report}; {pace}"
    closed = [line for line in log.splitlines() if GATEWAY_GATE_CLOSED in line]
    print(f"{name}: the availability gate closed {len(closed)} time(s) {closed}")
    if window is not None:
        assert report.window <= window, f"{report}; {pace}; target {window:.1f}s"
    return report, pace


def _follower(lab: PartitionLab) -> int:
    leader = lab.leader()
    return next(i for i in range(lab.size) if i != leader)


# -- the relay (where the kernel has no netem) ---------------------------------------------


def _connect_seconds(lab: NetLab, namespace: str, address: str, port: int) -> float:
    """The time a TCP connection from `namespace` to `address` takes: one round trip."""
    done = lab.exec_in(namespace, [sys.executable, "-c", (
        "import socket, time; t = time.monotonic(); "
        f"socket.create_connection(('{address}', {port}), 10).close(); "
        "print(time.monotonic() - t)")])
    return float(done.stdout)


def _listen(address: str) -> socket.socket:
    server = socket.socket()
    server.bind((address, 0))
    server.listen(16)  # the kernel completes handshakes: nobody needs to accept
    return server


def test_a_relayed_link_delays_both_ways_and_rejoins_its_bridge_after() -> None:
    with NetLab() as lab:
        bridge = lab.add_bridge()
        lab.exec_in(lab.namespace, ["ip", "addr", "add", "10.98.0.254/24", "dev", bridge])
        host = lab.add_host(bridge, "10.98.0.1/24")
        server = lab.call(_listen, "10.98.0.254")
        port = server.getsockname()[1]
        try:
            assert lab.delay_link(host, 100, relay=True) == "relay"
            # The SYN waits 100 ms on the way out and the SYN-ACK 100 ms on the way in.
            assert _connect_seconds(lab, host.namespace, "10.98.0.254", port) >= 0.2
            lab.undelay_link(host)
            _connect_seconds(lab, host.namespace, "10.98.0.254", port)  # on the bridge
            lab.undelay_link(host)  # nothing left to undo: no error
        finally:
            server.close()


def test_a_relay_that_does_not_start_raises_and_leaves_the_link_on_its_bridge(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with NetLab() as lab:
        bridge = lab.add_bridge()
        lab.exec_in(lab.namespace, ["ip", "addr", "add", "10.98.0.254/24", "dev", bridge])
        host = lab.add_host(bridge, "10.98.0.1/24")
        server = lab.call(_listen, "10.98.0.254")
        try:
            with monkeypatch.context() as patch:
                patch.setattr(netlab.sys, "executable", "/bin/false")  # exits at once
                with pytest.raises(RuntimeError, match="did not start"):
                    lab.delay_link(host, 100, relay=True)
            _connect_seconds(lab, host.namespace, "10.98.0.254", server.getsockname()[1])
        finally:
            server.close()


# -- slow links -------------------------------------------------------------------------


def test_a_follower_200ms_away_loses_nothing_and_keeps_bookings_flowing(
        stack: Stack) -> None:
    lab = stack.lab
    follower = _follower(lab)
    _slowed(f"follower link +{LINK_DELAY_MS:g}ms", stack,
            lambda: print(f"\ndelayed by {lab.slow(follower, LINK_DELAY_MS)}"),
            lambda: lab.unslow(follower))


def test_a_leader_200ms_away_loses_nothing_and_keeps_bookings_flowing(stack: Stack) -> None:
    lab = stack.lab
    leader = lab.leader()
    # Every commit crosses the slow links: bookings keep flowing (asserted), at a few a
    # second. The window is reported, not bounded: 1.5 to 3.8 s by hand, longer on a
    # loaded CI machine, where a read through the leader can outlast the gate's 2 s.
    _slowed(f"leader link +{LINK_DELAY_MS:g}ms", stack,
            lambda: print(f"\ndelayed by {lab.slow(leader, LINK_DELAY_MS)}"),
            lambda: lab.unslow(leader), window=None)


# -- slow disks -----------------------------------------------------------------------


@needs_fsync_delay
def test_a_follower_with_slow_fsyncs_loses_nothing_and_keeps_bookings_flowing(
        stack: Stack) -> None:
    lab = stack.lab
    follower = _follower(lab)

    def slow() -> None:
        lab.slow_disk(follower, FSYNC_DELAY_MS)
        with pytest.raises(RuntimeError, match="slowed already"):
            lab.slow_disk(follower, FSYNC_DELAY_MS)

    _slowed(f"follower fsync +{FSYNC_DELAY_MS:g}ms", stack, slow,
            lambda: lab.unslow_disk(follower))


@needs_fsync_delay
def test_a_leader_with_slow_fsyncs_loses_nothing_and_keeps_bookings_flowing(
        stack: Stack) -> None:
    lab = stack.lab
    leader = lab.leader()
    _slowed(f"leader fsync +{FSYNC_DELAY_MS:g}ms", stack, lambda: lab.slow_disk(leader, FSYNC_DELAY_MS),
            lambda: lab.unslow_disk(leader))
