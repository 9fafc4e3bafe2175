"""The HTTP load generator, a process of its own: `python -m bench.loadgen < job.json`.

It reads one job (JSON) on stdin, runs C concurrent clients against the gateway
(through haproxy), prints progress on stderr about once a second and writes one
JSON result on stdout. Every loop is bounded by a count and a deadline.

Jobs (`mode`):
- `book`: C clients book from `pns` (one picked at random per booking) until
  `count` bookings were sent or `seconds` passed. With `until_exhausted`, clients
  keep booking once the pool is full, until `exhausted_probes` "out_of_stock"
  answers were collected (their latency is the time to answer "exhausted").
- `lifecycle`: C clients loop book -> attach -> detach -> release, `count` cycles.
- `list`: one client sends the `queries` (paths with query strings) in order, and
  walks `walk` (a query without `page`) page by page.
- `release`: C clients `DELETE .../ips/{id}` each IP of `ips` ([id, address, pn]) once,
  until all were sent or `seconds` passed. A 404 counts as gone (`gone`), not released:
  the balancer may send an idempotent DELETE again after a first one took effect.
- `churn`: C clients, each owning a share of `ips`, loop "release one of my own IPs
  (the oldest), book one in `pns`" for `seconds` (at most `count` loops in all).
- `fill`: C clients book from `pns` until the first "out_of_stock" answer (the pool is
  full), `count` bookings sent or `seconds` passed; `ok_at` gives, in completion order,
  the seconds from the start at which each booking was answered (rates by fullness).
- `get`: C clients GET the `paths` in turn (from the server's root: `/healthz`, or
  `/ipam/v1/...`), `count` requests in all or until `seconds` passed; a 200 is a success.
  What a request costs on this path with the least work behind it (`/healthz`), or a read.

With `record` (the default), every write is noted as a bare tuple while the load runs
(the kind, what was asked, `time.monotonic()` at its start and end, the answer) and
handed over in the result's `history`, one row per attempt (`HISTORY_FIELDS`), after
the clock stopped: the bench checks them with `bench.history_check` (issue 15).
Reads are not recorded.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp

from .stats import summary

TOKEN_HEADER = "X-Auth-Token"
REQUEST_TIMEOUT = 30.0
PROGRESS_SECONDS = 1.0
# One row of `history` per attempt: `subject` is the Private Network of a booking, the
# IP of any other kind; `mac` the MAC of an attach or detach (its custom resource).
HISTORY_FIELDS = ("kind", "subject", "mac", "invoked", "completed", "status", "error",
                  "answer_id", "answer_address")


class Client:
    """One aiohttp session shared by C workers (connection pool of C)."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.url = job["url"].rstrip("/")
        self.base = f"{self.url}/ipam/v1/regions/{job.get('region', 'fr-par')}"
        self.headers = {TOKEN_HEADER: job["token"], "Content-Type": "application/json"}
        conn = aiohttp.TCPConnector(limit=max(1, int(job.get("concurrency", 1))),
                                    force_close=False)
        self.session = aiohttp.ClientSession(
            connector=conn, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            trust_env=False)
        # (kind, subject, mac, invoked, completed, status, body): appended, nothing more,
        # while the clock runs; None when the job asks not to record.
        self.notes: list[tuple[str, str, str, float, float, int, Any]] | None = (
            [] if job.get("record", True) else None)

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   note: tuple[str, str, str] | None = None,
                   root: bool = False) -> tuple[int, Any, float]:
        """(status, JSON body or None, seconds); status 0 with the exception name on failure.
        A write passes `note` (kind, subject, mac) to be recorded. `path` is under the
        region's IPAM base, or the server's root with `root`."""
        data = json.dumps(body).encode() if body is not None else None
        url = (self.url if root else self.base) + path
        t0 = time.monotonic()
        try:
            async with self.session.request(method, url, data=data,
                                            headers=self.headers) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as err:
            t1 = time.monotonic()
            parsed: Any = {"type": type(err).__name__}
            status = 0
        else:
            t1 = time.monotonic()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = {"type": "not_json"}  # e.g. haproxy's own 503: no server up
        if note is not None and self.notes is not None:
            self.notes.append((*note, t0, t1, status, parsed))
        return status, parsed, t1 - t0

    def history(self) -> list[list[Any]]:
        """The notes as rows of `HISTORY_FIELDS` (JSON), once the load is over."""
        rows = []
        for kind, subject, mac, t0, t1, status, body in self.notes or ():
            ok = 200 <= status < 300 and isinstance(body, dict)
            rows.append([kind, subject, mac, t0, t1, status,
                         None if 200 <= status < 300 else error_type(status, body),
                         body.get("id") if ok else None,
                         body.get("address") if ok else None])
        return rows


def error_type(status: int, body: Any) -> str:
    """`status:type` of a failed answer, e.g. `409:out_of_stock`, `0:ClientOSError`."""
    kind = body.get("type", "?") if isinstance(body, dict) else "?"
    return f"{status}:{kind}"


class Progress:
    """A line on stderr about once a second: done/planned, ok, errors, rate."""

    def __init__(self, label: str, planned: int, quiet: bool) -> None:
        self.label, self.planned, self.quiet = label, planned, quiet
        self.done = self.ok = self.errors = 0
        self.started = time.perf_counter()

    async def run(self) -> None:
        if self.quiet:
            return
        last_done, last_t = 0, self.started
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            t = time.perf_counter()
            rate = (self.done - last_done) / (t - last_t)
            last_done, last_t = self.done, t
            print(f"    {self.label}: {self.done}/{self.planned} ok={self.ok} "
                  f"err={self.errors} {rate:,.0f}/s", file=sys.stderr, flush=True)


def _book_body(job: dict[str, Any], pn: str) -> dict[str, Any]:
    ipv6 = job.get("ipv6_pns", {}).get(pn, job.get("is_ipv6", False))
    return {"project_id": job["project_id"], "source": {"private_network_id": pn},
            "is_ipv6": bool(ipv6)}


async def run_book(job: dict[str, Any], client: Client, progress: Progress) -> dict[str, Any]:
    count, deadline = int(job["count"]), time.perf_counter() + float(job["seconds"])
    pns: list[str] = job["pns"]
    until_exhausted = bool(job.get("until_exhausted"))
    probes = int(job.get("exhausted_probes", 0))
    rng = random.Random()
    ok_lat: list[float] = []
    err_lat: list[float] = []
    exhausted_lat: list[float] = []
    by_pn: dict[str, list[float]] = {pn: [] for pn in pns}
    round_robin = job.get("pick") == "round_robin"  # interleave sources exactly
    errors: Counter[str] = Counter()
    ips: list[list[str]] = []
    issued = 0
    first_exhausted: float | None = None
    last_ok: float | None = None
    t0 = time.perf_counter()

    def more() -> bool:
        if time.perf_counter() >= deadline:
            return False
        if until_exhausted and first_exhausted is not None:
            return len(exhausted_lat) < probes
        return issued < count

    async def worker() -> None:
        nonlocal issued, first_exhausted, last_ok
        while more():
            pn = pns[issued % len(pns)] if round_robin else rng.choice(pns)
            issued += 1
            status, body, dt = await client.call("POST", "/ips", _book_body(job, pn),
                                                 ("book", pn, ""))
            progress.done += 1
            if status == 200 and isinstance(body, dict) and "id" in body:
                ok_lat.append(dt)
                by_pn[pn].append(dt)
                ips.append([body["id"], body["address"], pn])
                progress.ok += 1
                last_ok = time.perf_counter()
                continue
            kind = error_type(status, body)
            progress.errors += 1
            if kind == "409:out_of_stock":
                exhausted_lat.append(dt)
                if first_exhausted is None:
                    first_exhausted = time.perf_counter()
                if until_exhausted:
                    errors[kind] += 1
                    continue
            errors[kind] += 1
            err_lat.append(dt)

    await asyncio.gather(*(worker() for _ in range(int(job["concurrency"]))))
    t1 = time.perf_counter()
    # Throughput counts the bookings over the time it took to make them; in a run
    # that books until the pool is full, that is the time to the last success.
    span = (last_ok - t0) if (until_exhausted and last_ok) else (t1 - t0)
    return {
        "sent": issued, "ok": len(ok_lat), "elapsed_s": round(t1 - t0, 4),
        "throughput_span_s": round(span, 4),
        "per_s": round(len(ok_lat) / span, 2) if span > 0 else 0.0,
        "latency": summary(ok_lat), "error_latency": summary(err_lat),
        "latency_by_pn": {pn: summary(v) for pn, v in by_pn.items()} if len(pns) <= 8 else {},
        "exhausted_latency": summary(exhausted_lat),
        "time_to_exhausted_s": round(first_exhausted - t0, 4) if first_exhausted else None,
        "errors": dict(errors), "ips": ips,
        "timed_out": time.perf_counter() >= deadline,
    }


async def run_lifecycle(job: dict[str, Any], client: Client,
                        progress: Progress) -> dict[str, Any]:
    count, deadline = int(job["count"]), time.perf_counter() + float(job["seconds"])
    pns: list[str] = job["pns"]
    rng = random.Random()
    lat: dict[str, list[float]] = {op: [] for op in ("book", "attach", "detach", "release")}
    errors: Counter[str] = Counter()
    held: list[list[str]] = []  # booked and not (acknowledged as) released
    released: list[str] = []
    cycles = issued = 0
    t0 = time.perf_counter()

    def step(op: str, status: int, body: Any, dt: float, expect: int = 200) -> bool:
        progress.done += 1
        if status == expect:
            lat[op].append(dt)
            progress.ok += 1
            return True
        errors[f"{op} {error_type(status, body)}"] += 1
        progress.errors += 1
        return False

    async def worker() -> None:
        nonlocal cycles, issued
        while issued < count and time.perf_counter() < deadline:
            issued += 1
            pn = rng.choice(pns)
            status, body, dt = await client.call("POST", "/ips", _book_body(job, pn),
                                                 ("book", pn, ""))
            if not step("book", status, body, dt):
                continue
            ip = [body["id"], body["address"], pn]
            held.append(ip)
            mac = "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))
            res = {"mac_address": mac, "name": f"bench-{uuid.uuid4().hex[:8]}"}
            status, body, dt = await client.call("POST", f"/ips/{ip[0]}/attach",
                                                 {"resource": res}, ("attach", ip[0], mac))
            if not step("attach", status, body, dt):
                continue
            status, body, dt = await client.call("POST", f"/ips/{ip[0]}/detach",
                                                 {"resource": res}, ("detach", ip[0], mac))
            if not step("detach", status, body, dt):
                continue
            status, body, dt = await client.call("DELETE", f"/ips/{ip[0]}",
                                                 note=("release", ip[0], ""))
            if not step("release", status, body, dt, expect=204):
                continue
            held.remove(ip)
            released.append(ip[0])
            cycles += 1

    await asyncio.gather(*(worker() for _ in range(int(job["concurrency"]))))
    elapsed = time.perf_counter() - t0
    ops = sum(len(v) for v in lat.values())
    return {
        "sent": issued, "ok": cycles, "elapsed_s": round(elapsed, 4),
        "per_s": round(cycles / elapsed, 2) if elapsed else 0.0,
        "ops_per_s": round(ops / elapsed, 2) if elapsed else 0.0,
        "latency": summary(lat["book"]),
        "op_latency": {op: summary(v) for op, v in lat.items()},
        "errors": dict(errors), "ips": held, "released": released,
        "timed_out": time.perf_counter() >= deadline,
    }


async def run_list(job: dict[str, Any], client: Client, progress: Progress) -> dict[str, Any]:
    deadline = time.perf_counter() + float(job["seconds"])
    lat: dict[str, list[float]] = {}
    errors: Counter[str] = Counter()
    mismatches: list[str] = []
    for q in job.get("queries", []):
        if time.perf_counter() >= deadline:
            break
        status, body, dt = await client.call("GET", "/ips?" + q["query"])
        progress.done += 1
        if status != 200:
            errors[f"{q['kind']} {error_type(status, body)}"] += 1
            continue
        lat.setdefault(q["kind"], []).append(dt)
        progress.ok += 1
        if "expect_total" in q and body.get("total_count") != q["expect_total"]:
            mismatches.append(f"{q['query']}: total_count {body.get('total_count')} "
                              f"!= {q['expect_total']}")
    walk = job.get("walk")
    walked = pages = 0
    total = None
    if walk:
        page = 1
        while page <= int(walk["max_pages"]) and time.perf_counter() < deadline:
            status, body, dt = await client.call("GET", f"/ips?{walk['query']}&page={page}")
            progress.done += 1
            if status != 200:  # counted; the walk goes on (bounded by pages and time)
                errors[f"page {error_type(status, body)}"] += 1
                page += 1
                continue
            lat.setdefault("page", []).append(dt)
            progress.ok += 1
            total = body.get("total_count")
            walked += len(body["ips"])
            pages += 1
            if not body["ips"]:
                break
            page += 1
    return {"ok": progress.ok, "latency_by_kind": {k: summary(v) for k, v in lat.items()},
            "errors": dict(errors), "mismatches": mismatches[:20],
            "pages": pages, "walked": walked, "walk_total_count": total,
            "timed_out": time.perf_counter() >= deadline}


def _outcome(status: int, body: Any, expect: int) -> str:
    """`ok`, `gone` (a release answered 404: the IP is not there, e.g. the balancer sent an
    idempotent DELETE again after a first one took effect), `refused` (a definitive error
    answer: nothing was written) or `unknown` (no answer: it may or may not have happened)."""
    if status == expect and (expect == 204 or (isinstance(body, dict) and "id" in body)):
        return "ok"
    if expect == 204 and error_type(status, body) == "404:not_found":
        return "gone"
    return "unknown" if status == 0 or status >= 500 else "refused"


async def run_release(job: dict[str, Any], client: Client,
                      progress: Progress) -> dict[str, Any]:
    deadline = time.perf_counter() + float(job["seconds"])
    todo: list[list[str]] = list(job["ips"])
    lat: list[float] = []
    errors: Counter[str] = Counter()
    released: list[str] = []
    gone: list[str] = []  # answered 404
    kept: list[list[str]] = []  # refused: still held
    unknown: list[str] = []
    issued = 0
    t0 = time.perf_counter()

    async def worker() -> None:
        nonlocal issued
        while issued < len(todo) and time.perf_counter() < deadline:
            ip = todo[issued]
            issued += 1
            status, body, dt = await client.call("DELETE", f"/ips/{ip[0]}",
                                                 note=("release", ip[0], ""))
            progress.done += 1
            outcome = _outcome(status, body, 204)
            if outcome == "ok":
                lat.append(dt)
                released.append(ip[0])
                progress.ok += 1
                continue
            progress.errors += 1
            errors[error_type(status, body)] += 1
            if outcome == "gone":  # not there: checked absent like a release
                gone.append(ip[0])
            else:
                (kept.append(ip) if outcome == "refused" else unknown.append(ip[0]))

    await asyncio.gather(*(worker() for _ in range(int(job["concurrency"]))))
    elapsed = time.perf_counter() - t0
    return {
        "sent": issued, "ok": len(released), "elapsed_s": round(elapsed, 4),
        "per_s": round(len(released) / elapsed, 2) if elapsed else 0.0,
        "latency": summary(lat), "errors": dict(errors), "released": released + gone,
        "gone": len(gone), "ips": kept + todo[issued:], "unknown": unknown,
        "timed_out": time.perf_counter() >= deadline,
    }


async def run_churn(job: dict[str, Any], client: Client,
                    progress: Progress) -> dict[str, Any]:
    count, deadline = int(job["count"]), time.perf_counter() + float(job["seconds"])
    pns: list[str] = job["pns"]
    c = int(job["concurrency"])
    owned: list[list[list[str]]] = [list(job["ips"][i::c]) for i in range(c)]
    rng = random.Random()
    lat: dict[str, list[float]] = {"book": [], "release": []}
    errors: Counter[str] = Counter()
    released: list[str] = []
    gone: list[str] = []  # releases answered 404
    unknown: list[str] = []
    loops = 0
    t0 = time.perf_counter()

    async def worker(mine: list[list[str]]) -> None:
        nonlocal loops
        while loops < count and time.perf_counter() < deadline:
            loops += 1
            if mine:
                ip = mine.pop(0)
                status, body, dt = await client.call("DELETE", f"/ips/{ip[0]}",
                                                     note=("release", ip[0], ""))
                progress.done += 1
                outcome = _outcome(status, body, 204)
                if outcome == "ok":
                    lat["release"].append(dt)
                    released.append(ip[0])
                    progress.ok += 1
                else:
                    progress.errors += 1
                    errors[f"release {error_type(status, body)}"] += 1
                    if outcome == "gone":  # not there: checked absent like a release
                        gone.append(ip[0])
                    else:
                        (mine.append(ip) if outcome == "refused" else unknown.append(ip[0]))
            pn = rng.choice(pns)
            status, body, dt = await client.call("POST", "/ips", _book_body(job, pn),
                                                 ("book", pn, ""))
            progress.done += 1
            outcome = _outcome(status, body, 200)
            if outcome == "ok":
                lat["book"].append(dt)
                mine.append([body["id"], body["address"], pn])
                progress.ok += 1
            else:
                progress.errors += 1
                errors[f"book {error_type(status, body)}"] += 1
                if outcome == "unknown":
                    unknown.append(f"book in {pn}")

    await asyncio.gather(*(worker(mine) for mine in owned))
    elapsed = time.perf_counter() - t0
    return {
        "loops": loops, "ok": len(lat["book"]), "released_ok": len(released),
        "elapsed_s": round(elapsed, 4),
        "per_s": round(len(lat["book"]) / elapsed, 2) if elapsed else 0.0,
        "release_per_s": round(len(released) / elapsed, 2) if elapsed else 0.0,
        "latency": summary(lat["book"]), "release_latency": summary(lat["release"]),
        "errors": dict(errors), "ips": [ip for mine in owned for ip in mine],
        "released": released + gone, "gone": len(gone), "unknown": unknown,
        "timed_out": time.perf_counter() >= deadline,
    }


async def run_fill(job: dict[str, Any], client: Client, progress: Progress) -> dict[str, Any]:
    count, deadline = int(job["count"]), time.perf_counter() + float(job["seconds"])
    pns: list[str] = job["pns"]
    rng = random.Random()
    lat: list[float] = []
    ok_at: list[float] = []
    errors: Counter[str] = Counter()
    ips: list[list[str]] = []
    unknown: list[str] = []
    issued = 0
    full_at: float | None = None
    t0 = time.perf_counter()

    async def worker() -> None:
        nonlocal issued, full_at
        while full_at is None and issued < count and time.perf_counter() < deadline:
            pn = rng.choice(pns)
            issued += 1
            status, body, dt = await client.call("POST", "/ips", _book_body(job, pn),
                                                 ("book", pn, ""))
            progress.done += 1
            outcome = _outcome(status, body, 200)
            if outcome == "ok":
                ok_at.append(time.perf_counter() - t0)
                lat.append(dt)
                ips.append([body["id"], body["address"], pn])
                progress.ok += 1
                continue
            progress.errors += 1
            kind = error_type(status, body)
            if kind == "409:out_of_stock":
                full_at = full_at or time.perf_counter() - t0
                continue
            errors[kind] += 1
            if outcome == "unknown":
                unknown.append(f"book in {pn}")

    await asyncio.gather(*(worker() for _ in range(int(job["concurrency"]))))
    elapsed = time.perf_counter() - t0
    span = ok_at[-1] if ok_at else elapsed
    return {
        "sent": issued, "ok": len(lat), "elapsed_s": round(elapsed, 4),
        "per_s": round(len(lat) / span, 2) if span > 0 else 0.0,
        "ok_at": [round(t, 5) for t in ok_at],
        "full_at_s": round(full_at, 4) if full_at is not None else None,
        "latency": summary(lat), "errors": dict(errors), "ips": ips, "unknown": unknown,
        "timed_out": time.perf_counter() >= deadline,
    }


async def run_get(job: dict[str, Any], client: Client, progress: Progress) -> dict[str, Any]:
    paths: list[str] = job["paths"]
    count, deadline = int(job["count"]), time.perf_counter() + float(job["seconds"])
    ok_lat: list[float] = []
    errors: Counter[str] = Counter()
    issued = 0
    t0 = time.perf_counter()

    async def worker() -> None:
        nonlocal issued
        while issued < count and time.perf_counter() < deadline:
            path = paths[issued % len(paths)]
            issued += 1
            status, body, dt = await client.call("GET", path, root=True)
            progress.done += 1
            if status == 200:
                ok_lat.append(dt)
                progress.ok += 1
            else:
                errors[error_type(status, body)] += 1
                progress.errors += 1

    await asyncio.gather(*(worker() for _ in range(int(job["concurrency"]))))
    elapsed = time.perf_counter() - t0
    return {"sent": issued, "ok": len(ok_lat), "elapsed_s": round(elapsed, 4),
            "per_s": round(len(ok_lat) / elapsed, 2) if elapsed > 0 else 0.0,
            "latency": summary(ok_lat), "errors": dict(errors)}


MODES = {"book": run_book, "lifecycle": run_lifecycle, "list": run_list,
         "release": run_release, "churn": run_churn, "fill": run_fill, "get": run_get}


async def run(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job and return its result (also usable in-process)."""
    client = Client(job)
    planned = int(job.get("count", len(job.get("ips", ())))) * (
        4 if job["mode"] == "lifecycle" else 1)
    progress = Progress(job.get("label", job["mode"]), planned,
                        bool(job.get("quiet")))
    ticker = asyncio.ensure_future(progress.run())
    try:
        result = await MODES[job["mode"]](job, client, progress)
    finally:
        ticker.cancel()
        await client.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["client_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 3)
    if client.notes is not None:
        result["history"] = client.history()
    return result


def main() -> int:
    job = json.load(sys.stdin)
    result = asyncio.run(run(job))
    json.dump(result, sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
