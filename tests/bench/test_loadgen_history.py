"""The load generator's history: bare tuples while it measures, rows afterwards, and the
bench's reading of those rows into a `bench.history` History. Pure: no gateway, no etcd."""

from __future__ import annotations

from allocator.records import Resource
from bench.contention import record_loadgen_rows
from bench.history import FAIL, OK, UNKNOWN, History
from bench.loadgen import HISTORY_FIELDS, Client

PN = "pn-1"
MAC = "02:00:00:00:00:01"


async def _client(record: bool) -> Client:
    return Client({"url": "http://127.0.0.1:9", "token": "t", "concurrency": 1,
                   "record": record})


async def test_every_write_is_a_row_with_its_answer_or_its_error() -> None:
    client = await _client(record=True)
    try:
        assert client.notes is not None
        client.notes += [
            ("book", PN, "", 1.0, 2.0, 200, {"id": "ip1", "address": "10.0.0.5/24"}),
            ("attach", "ip1", MAC, 3.0, 4.0, 200, {"id": "ip1", "address": "10.0.0.5/24"}),
            ("book", PN, "", 5.0, 6.0, 409, {"type": "out_of_stock"}),
            ("release", "ip1", "", 7.0, 8.0, 0, {"type": "ServerDisconnectedError"}),
            ("release", "ip1", "", 9.0, 10.0, 204, None),
        ]
        rows = client.history()
    finally:
        await client.close()
    assert [dict(zip(HISTORY_FIELDS, r, strict=True))["error"] for r in rows] == [
        None, None, "409:out_of_stock", "0:ServerDisconnectedError", None]
    assert rows[0] == ["book", PN, "", 1.0, 2.0, 200, None, "ip1", "10.0.0.5/24"]

    history = History()
    record_loadgen_rows(history, rows)
    ops = history.operations
    assert [(op.kind, op.invoked, op.completed, op.outcome) for op in ops] == [
        ("book", 1.0, 2.0, OK), ("attach", 3.0, 4.0, OK), ("book", 5.0, 6.0, FAIL),
        ("release", 7.0, 8.0, UNKNOWN), ("release", 9.0, 10.0, OK)]
    assert (ops[0].pool, ops[0].answer_id, ops[0].answer_address) == (PN, "ip1",
                                                                      "10.0.0.5/24")
    assert (ops[1].ip_ids, ops[1].resource) == (("ip1",), Resource.custom(MAC).id)
    assert (ops[2].error, ops[3].error) == ("409:out_of_stock", "0:ServerDisconnectedError")


async def test_a_job_that_does_not_record_keeps_nothing() -> None:
    client = await _client(record=False)
    try:
        status, body, _ = await client.call("POST", "/ips", {}, ("book", PN, ""))
    finally:
        await client.close()
    assert (status, client.notes, client.history()) == (0, None, [])
    assert isinstance(body, dict) and body["type"]  # port 9: refused, answered as status 0
