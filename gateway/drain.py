"""Draining a node before it stops, so that no client loses an answer.

On SIGTERM `ipam serve` begins the drain: `/readyz` answers 503
`{"status": "draining"}` at once, so a load balancer stops sending, and every
answer carries `Connection: close`, so keep-alive clients open their next
connection elsewhere instead of writing into one that is about to be closed.
After `--drain-seconds` the node stops accepting, gives in-flight requests
`--shutdown-timeout`, and only then closes etcd.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Drain:
    """Whether this node is draining: begun once, never ended (the node then stops)."""

    def __init__(self) -> None:
        self._active = False

    @property
    def active(self) -> bool:
        return self._active

    def begin(self) -> None:
        """From now on: not ready, and every answer closes its connection."""
        self._active = True


DRAIN_KEY = web.AppKey("drain", Drain)


def drain_of(app: web.Application) -> Drain:
    return app[DRAIN_KEY]


@web.middleware
async def drain_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """While draining, answer with `Connection: close` so the client reconnects."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects pass the error middleware as exceptions
        if request.app[DRAIN_KEY].active:
            exc.force_close()
        raise
    if request.app[DRAIN_KEY].active:
        response.force_close()
    return response
