"""Every error the allocator raises, in one place.

The tree, and how callers are meant to treat each branch:

    IPAMError                      base of everything below
    ├── InvalidArgument            bad input; nothing was sent to etcd
    ├── NotFound                   a source, IP, VPC, Private Network ... does not exist
    ├── AlreadyExists              the chosen address (or MAC, or name) is held already
    ├── PoolExhausted              no free address left, confirmed by a linearizable count
    ├── PreconditionFailed         the object is in a state that forbids the change
    │                              (still attached, still holding IPs, wrong resource)
    ├── PermissionDenied           the caller may not do this (detach of a product resource)
    ├── QuotaExceeded              the project (or Private Network) holds all its quota
    │                              allows of a resource (`quotas`); nothing was written
    │   └── CredentialRevoked      the caller's API key was revoked before the change applied
    ├── Conflict                   a concurrent change won; bounded retries ran out
    └── StoreError                 etcd could not be reached
        ├── OutcomeUnknown         a write may or may not have been applied, and even the
        │                          read-back failed: retry with the same idempotency key
        └── StorageFull            etcd's backend quota is full (NOSPACE alarm): an IP
                                   change was read back and did not apply; not transient,
                                   an operator clears it

Each carries, where it helps the HTTP layer, the data to build Scaleway's error
body. The gateway maps classes to bodies (one table, `gateway/errors.py`); it never
parses messages.
"""

from __future__ import annotations

from dataclasses import dataclass


class IPAMError(Exception):
    """Base class of every error raised by the allocator."""


    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ArgumentProblem:
    """One rejected argument, in the shape of Scaleway's `invalid_arguments` details."""

    argument_name: str
    reason: str  # unknown | required | format | constraint
    help_message: str


class InvalidArgument(IPAMError):
    """The request is malformed or violates a constraint; nothing was written."""


    def __init__(self, argument: str, help_message: str, reason: str = "constraint") -> None:
        super().__init__(f"{argument}: {help_message}")
        self.problems = [ArgumentProblem(argument, reason, help_message)]


class NotFound(IPAMError):
    """The named object does not exist (or is not visible to the caller)."""


    def __init__(self, resource: str, resource_id: str) -> None:
        super().__init__(f"{resource} {resource_id!r} not found")
        self.resource = resource
        self.resource_id = resource_id


class AlreadyExists(IPAMError):
    """A unique thing (address, MAC in a Private Network) is already held."""


    def __init__(self, resource: str, resource_id: str, message: str | None = None) -> None:
        super().__init__(message or f"{resource} {resource_id!r} already exists")
        self.resource = resource
        self.resource_id = resource_id


class PoolExhausted(IPAMError):
    """No free address is left in the source(s) asked for."""


    def __init__(self, source_id: str) -> None:
        super().__init__(f"no free address left in source {source_id}")
        self.source_id = source_id


class PreconditionFailed(IPAMError):
    """The object's state forbids the change (e.g. releasing an attached IP)."""


    def __init__(self, precondition: str, message: str) -> None:
        super().__init__(message)
        self.precondition = precondition


class PermissionDenied(IPAMError):
    """The caller is not allowed to perform this action on this object."""


    def __init__(self, action: str, resource: str, message: str) -> None:
        super().__init__(message)
        self.action = action
        self.resource = resource


class CredentialRevoked(PermissionDenied):
    """The API key a change was made with no longer exists; nothing was written."""


    def __init__(self) -> None:
        super().__init__("authenticate", "api_key", "the API key was revoked")


class QuotaExceeded(IPAMError):
    """The project (or Private Network) already holds what its quota of `resource` allows:
    `current` of `quota`. Nothing was written; deleting one frees a slot."""


    def __init__(self, resource: str, quota: int, current: int, message: str) -> None:
        super().__init__(message)
        self.resource = resource
        self.quota = quota
        self.current = current


class Conflict(IPAMError):
    """Concurrent changes kept winning and the bounded retries ran out."""



class StoreError(IPAMError):
    """etcd could not be reached or answered with an error."""



class StorageFull(StoreError):
    """etcd's backend quota is full (its NOSPACE alarm is raised): writes are refused.

    etcd refuses every write once its alarm is raised, but applies the one write that
    crosses the quota and answers it "database space exceeded" all the same (its quota
    applier). So IP changes (booking, change, release, release set) read back after it,
    as after any unknown outcome: applied, they answer as such; raised to a caller, it
    means nothing applied. Other writers (networks, keys) raise it as etcd said it: the
    write that filled the quota may have applied. Not transient: every write fails the
    same way until an operator compacts, defragments and disarms the alarm (or raises
    the quota). Never retried. Reads still work.
    """



class OutcomeUnknown(StoreError):
    """A write may have been applied and the read-back could not tell.

    Retrying with the same idempotency key settles it: the key is written in the
    same transaction as the change, so the retry either finds it or applies once.
    """



STILL_ATTACHED = "resource_still_in_use"
