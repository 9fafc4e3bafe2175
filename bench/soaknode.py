"""`ipam serve` with its asyncio task count written to a file: the soak bench's gateway.

    python -m bench.soaknode TASKS_FILE [ipam serve flags]

The node is the real `ipam serve` (`gateway.serve.main`, configured by its flags and
its IPAM_* environment), in this process. The one addition is a thread that, every
`INTERVAL` seconds, asks the node's event loop how many tasks it holds and writes
`{"tasks": n, "at": unix time}` to TASKS_FILE (replaced whole, never half written).
The count is taken by a callback inside the loop, not by a task, so it does not count
itself. Why here: the gateway exposes no task count of its own (its /metrics counts
requests, bookings and etcd calls), and no other process can read a loop's tasks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sys
import threading
import time
from pathlib import Path

from gateway.serve import main as serve

INTERVAL = 1.0
ANSWER_TIMEOUT = 5.0


class _LoopWatch(asyncio.DefaultEventLoopPolicy):
    """The default policy, keeping the loops it makes (`asyncio.run` asks it for one)."""

    def __init__(self) -> None:
        super().__init__()
        self.loops: list[asyncio.AbstractEventLoop] = []

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        self.loops.append(loop)
        return loop


def task_count(loop: asyncio.AbstractEventLoop) -> int | None:
    """The tasks of a running `loop`, counted inside it; None if it does not answer."""
    if not loop.is_running():
        return None
    answer: concurrent.futures.Future[int] = concurrent.futures.Future()

    def count() -> None:
        answer.set_result(len(asyncio.all_tasks(loop)))

    try:
        loop.call_soon_threadsafe(count)
        return answer.result(ANSWER_TIMEOUT)
    except (RuntimeError, concurrent.futures.TimeoutError):  # closed, or stuck
        return None


def _report(policy: _LoopWatch, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    while True:
        time.sleep(INTERVAL)
        if not policy.loops:
            continue
        n = task_count(policy.loops[-1])
        if n is not None:
            tmp.write_text(json.dumps({"tasks": n, "at": time.time()}))
            os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    policy = _LoopWatch()
    asyncio.set_event_loop_policy(policy)
    threading.Thread(target=_report, args=(policy, Path(args[0])), daemon=True,
                     name="task-count").start()
    return serve(args[1:])


if __name__ == "__main__":
    sys.exit(main())
