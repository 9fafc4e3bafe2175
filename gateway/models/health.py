"""The probes' answers: /healthz and /readyz."""

from __future__ import annotations

from typing import Literal

from .fields import Reply


class Health(Reply):
    status: Literal["ok"] = "ok"
    region: str


class EtcdMember(Reply):
    endpoint: str
    answered: bool


class Readiness(Reply):
    """Ready when etcd answers a linearizable read and the node has started; `starting`
    (etcd not reached yet since the start) and `unavailable` come with status 503."""

    status: Literal["ready", "starting", "unavailable"]
    etcd: list[EtcdMember]


class Draining(Reply):
    """Sent with status 503 from the start of a drain: the node is about to stop."""

    status: Literal["draining"] = "draining"
