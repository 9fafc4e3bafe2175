"""The history checker on hand-made histories: correct ones pass, each rule broken once is
caught, and by that rule alone. Pure logic: no etcd, no clock but the one written here."""

from __future__ import annotations

import asyncio

import pytest

from allocator.errors import Conflict, OutcomeUnknown, StoreError
from bench.history import (
    FAIL,
    OK,
    UNKNOWN,
    FinalState,
    History,
    Operation,
    StoredIP,
    outcome_of_error,
    outcome_of_status,
)
from bench.history_check import check
from gateway.errors import STORAGE_FULL

PN = "pn-1"
A1, A2 = "10.0.0.5/24", "10.0.0.6/24"


def book(t0: float, t1: float, outcome: str = OK, ip: str | None = None,
         address: str | None = None, key: str | None = None, resource: str | None = None,
         pool: str = PN) -> Operation:
    return Operation("book", t0, pool=pool, idempotency_key=key, resource=resource,
                     completed=t1, outcome=outcome, answer_id=ip if outcome == OK else None,
                     answer_address=address if outcome == OK else None)


def change(kind: str, ip: str, t0: float, t1: float, outcome: str = OK,
           resource: str | None = None, key: str | None = None) -> Operation:
    return Operation(kind, t0, ip_ids=(ip,), resource=resource, idempotency_key=key,
                     completed=t1, outcome=outcome)


def stored(*ips: tuple[str, str] | tuple[str, str, str | None],
           idempotency: dict[str, str] | None = None) -> FinalState:
    final = FinalState(idempotency=idempotency or {})
    for ip, address, *resource in ips:
        final.ips[ip] = StoredIP(address, frozenset({PN, "src-1"}),
                                 resource[0] if resource else None)
    return final


def rules(ops: list[Operation], final: FinalState) -> list[str]:
    return [v.rule for v in check(ops, final).violations]


# -- correct histories ----------------------------------------------------------------------


def test_a_full_lifecycle_and_a_reuse_of_the_released_address_is_clean() -> None:
    ops = [book(0, 1, ip="ip1", address=A1),
           change("attach", "ip1", 2, 3, resource="srv"),
           change("detach", "ip1", 4, 5),
           change("release", "ip1", 6, 7),
           book(8, 9, ip="ip2", address=A1),
           change("attach", "ip2", 10, 11, resource="srv")]
    verdict = check(ops, stored(("ip2", A1, "srv")))
    assert verdict.ok, verdict
    assert verdict.reused_addresses == 1
    assert verdict.requests == {"attach": {OK: 2}, "book": {OK: 2}, "detach": {OK: 1},
                                "release": {OK: 1}}


def test_a_booking_may_win_the_address_of_a_release_still_in_flight() -> None:
    # The release committed at ~6.5 and answered at 9; the booking ran in between.
    ops = [book(0, 1, ip="ip1", address=A1), change("release", "ip1", 6, 9),
           book(7, 8, ip="ip2", address=A1)]
    assert rules(ops, stored(("ip2", A1))) == []


def test_retries_with_one_key_are_one_request_and_an_unknown_one_settles_either_way() -> None:
    ops = [book(0, 1, UNKNOWN, key="k1"), book(2, 3, ip="ip1", address=A1, key="k1"),
           book(4, 5, UNKNOWN, key="k2"),  # applied: etcd's key names ip2
           book(6, 7, UNKNOWN, key="k3"),  # not applied: no key in etcd
           book(8, 9, UNKNOWN)]  # no key: may have made one IP
    final = stored(("ip1", A1), ("ip2", A2), ("ip3", "10.0.0.7/24"),
                   idempotency={"k1": "ip1", "k2": "ip2"})
    verdict = check(ops, final)
    assert verdict.ok, verdict
    assert verdict.requests == {"book": {OK: 1, UNKNOWN: 3}}
    assert verdict.unknown_bookings == {"applied": 1, "not_applied": 1,
                                        "undecided_without_key": 1}


def test_an_unknown_release_may_have_freed_the_ip_or_not() -> None:
    ops = [book(0, 1, ip="ip1", address=A1), book(0, 1, ip="ip2", address=A2),
           change("release", "ip1", 2, 3, UNKNOWN), change("release", "ip2", 2, 3, UNKNOWN)]
    assert rules(ops, stored(("ip2", A2))) == []


def test_a_change_racing_the_last_acknowledged_one_may_be_what_etcd_keeps() -> None:
    ops = [book(0, 1, ip="ip1", address=A1),
           change("attach", "ip1", 2, 3, resource="a"),
           change("move", "ip1", 4, 7, resource="b"),
           change("move", "ip1", 5, 6, UNKNOWN, resource="c")]
    for resource in ("b", "c"):
        assert rules(ops, stored(("ip1", A1, resource))) == [], resource


# -- each rule broken once ------------------------------------------------------------------


def test_a_two_ips_holding_one_address_at_once() -> None:
    ops = [book(0, 1, ip="ip1", address=A1), book(2, 3, ip="ip2", address=A1),
           change("release", "ip1", 4, 5)]
    assert rules(ops, stored(("ip2", A1))) == ["a"]


def test_b_an_acknowledged_release_that_left_the_ip_in_etcd() -> None:
    ops = [book(0, 1, ip="ip1", address=A1), change("release", "ip1", 2, 3)]
    assert rules(ops, stored(("ip1", A1))) == ["b"]


def test_b_an_ip_that_still_answers_after_its_release() -> None:
    ops = [book(0, 1, ip="ip1", address=A1), change("release", "ip1", 2, 3),
           change("attach", "ip1", 4, 5, resource="srv")]
    assert rules(ops, stored()) == ["b"]


def test_c_an_unknown_booking_that_took_effect_twice() -> None:
    ops = [book(0, 1, ip="ip1", address=A1), book(2, 3, UNKNOWN)]
    assert rules(ops, stored(("ip1", A1), ("ip2", A2), ("ip3", "10.0.0.7/24"))) == ["c"]


def test_c_one_key_answered_with_two_ips() -> None:
    ops = [book(0, 1, ip="ip1", address=A1, key="k"), book(2, 3, ip="ip2", address=A2, key="k")]
    assert rules(ops, stored(("ip1", A1), idempotency={"k": "ip1"})) == ["c"]


def test_c_a_failed_booking_that_took_effect() -> None:
    ops = [book(0, 1, FAIL, key="k")]
    assert rules(ops, stored(("ip1", A1), idempotency={"k": "ip1"})) == ["c"]


def test_d_an_acknowledged_booking_lost() -> None:
    ops = [book(0, 1, ip="ip1", address=A1), change("release", "ip1", 2, 3, FAIL)]
    assert rules(ops, stored()) == ["d"]


def test_d_an_acknowledged_booking_stored_with_another_address() -> None:
    ops = [book(0, 1, ip="ip1", address=A1)]
    assert rules(ops, stored(("ip1", A2))) == ["d"]


def test_e_an_acknowledged_detach_that_did_not_stick() -> None:
    ops = [book(0, 1, ip="ip1", address=A1), change("attach", "ip1", 2, 3, resource="srv"),
           change("detach", "ip1", 4, 5)]
    assert rules(ops, stored(("ip1", A1, "srv"))) == ["e"]


def test_audit_findings_are_violations() -> None:
    final = stored()
    final.problems.append("duplicate_addresses: src-1 10.0.0.5/24")
    assert rules([], final) == ["audit"]


def test_the_verdict_lists_its_violations() -> None:
    ops = [book(0, 1, ip="ip1", address=A1)]
    text = str(check(ops, stored()))
    assert "1 violations" in text and "(d) acknowledged IP ip1 (10.0.0.5/24)" in text


# -- recording ------------------------------------------------------------------------------


@pytest.mark.parametrize(("err", "outcome"), [
    (OutcomeUnknown("lost"), UNKNOWN), (StoreError("down"), FAIL), (Conflict("lost"), FAIL),
    (asyncio.CancelledError(), UNKNOWN), (TimeoutError(), UNKNOWN)])
def test_an_error_is_read_as_a_client_must_read_it(err: BaseException, outcome: str) -> None:
    assert outcome_of_error(err) == outcome


@pytest.mark.parametrize(("status", "outcome"), [
    (200, OK), (204, OK), (404, FAIL), (409, FAIL), (412, FAIL),
    (503, UNKNOWN), (500, UNKNOWN), (507, UNKNOWN), (0, UNKNOWN)])
def test_a_status_is_read_as_a_client_must_read_it(status: int, outcome: str) -> None:
    assert outcome_of_status(status) == outcome


@pytest.mark.parametrize(("body", "outcome"), [
    ({"type": "service_unavailable", "message": STORAGE_FULL}, FAIL),
    ({"type": "service_unavailable", "message": "the datastore is unavailable, retry later"},
     UNKNOWN),
    ({"type": "service_unavailable", "message": "x", "help_message": "the change may have "
      "been applied: retry with the same Idempotency-Key to find out"}, UNKNOWN),
    ("not json", UNKNOWN)])
def test_a_503_is_a_refusal_only_when_the_datastore_is_full(body: object, outcome: str) -> None:
    assert outcome_of_status(503, body) == outcome


async def test_a_recorded_call_keeps_its_answer_or_its_error_and_times() -> None:
    ticks = iter(range(100))
    history = History(clock=lambda: float(next(ticks)))

    class Answer:
        id, address = "ip1", A1

    async def answer() -> Answer:
        return Answer()

    async def lost() -> None:
        raise OutcomeUnknown("lost")

    assert (await history.call("book", answer(), pool=PN, idempotency_key="k")).id == "ip1"
    with pytest.raises(OutcomeUnknown):
        await history.call("release", lost(), ip_id="ip1")
    pending = history.invoke("attach", ip_id="ip1", resource="srv")
    first, second, third = history.operations
    assert (first.invoked, first.completed, first.outcome, first.answer_id,
            first.answer_address, first.idempotency_key) == (0.0, 1.0, OK, "ip1", A1, "k")
    assert (second.ip_ids, second.outcome, second.error) == (("ip1",), UNKNOWN,
                                                             "OutcomeUnknown")
    assert third is pending and pending.settled == UNKNOWN  # still in flight
    assert history.counts() == {"book": {OK: 1}, "release": {UNKNOWN: 1},
                                "attach": {UNKNOWN: 1}}


def test_an_operation_timed_by_its_recorder_keeps_its_times_and_reads_its_status() -> None:
    history = History(clock=lambda: 99.0)
    booked = history.record("book", 1.0, 2.0, 200, {"id": "ip1", "address": A1}, pool=PN)
    full = history.record("book", 3.0, 4.0, 409, {"type": "out_of_stock"}, pool=PN)
    lost = history.record("release", 5.0, 6.0, 0, ip_id="ip1")
    assert (booked.invoked, booked.completed, booked.outcome, booked.answer_id,
            booked.answer_address) == (1.0, 2.0, OK, "ip1", A1)
    assert (full.invoked, full.completed, full.outcome, full.answer_id, full.error) == (
        3.0, 4.0, FAIL, None, "409:out_of_stock")
    assert (lost.ip_ids, lost.outcome, lost.error) == (("ip1",), UNKNOWN, "0:?")
    assert check(history.operations, stored()).ok
