"""Versions over HTTP: an IP's ETag, and the If-Match that makes a change conditional.

An IP's version is the etcd mod revision of its record (`IPRecord.revision`): every
change of the IP moves it, and nothing else does. Its ETag is that number, quoted
(`"4711"`), a strong validator. A Private Network's is its record's, which holds its
subnets too; a VPC's adds the count of its Private Networks, which its answer shows
(`"4711-3"`). Only IPs take If-Match. A change sent with `If-Match` applies only while the IP
is at one of the versions named, in the same etcd transaction that checks it (the
guard on the record), so a product that lost track of an IP cannot undo a newer
owner's attach by replaying an old detach: the ETag is a fencing token. A stale one is
answered 412 `precondition_failed` with the precondition `if_match`, and nothing changes.

`If-Match: *` asks only that the IP exists, as every change does already. Weak tags
(`W/"4711"`) never match: If-Match compares strongly (RFC 9110, 13.1.1). A header that
is no list of entity tags is refused 400 by its model (`ConditionalHeaders`), naming it.
`GET` answers `If-None-Match` with 304 when the version is the one named.
"""

from __future__ import annotations

import re

from allocator.contract import IfMatch

_REVISION_DIGITS = 19
_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e]*)"\s*')


def etag(revision: int, *more: int) -> str | None:
    """The ETag of a version (None when it is not known: no ETag is sent). `more`: the
    versions of what else the answer shows (a VPC's count of Private Networks)."""
    if not revision:
        return None
    return '"' + "-".join(str(v) for v in (revision, *more)) + '"'


def if_match(header: str | None) -> IfMatch | None:
    """The versions an `If-Match` header accepts (None: any)."""
    if header is None or header.strip() in ("*", ""):
        return None
    versions = set()
    for item in header.split(","):  # well formed: its model checked it
        tag = _TAG.fullmatch(item)
        # A version is an etcd revision, an int64: a longer tag names none (and int() of
        # thousands of digits raises).
        if (tag is not None and not tag.group(1) and tag.group(2).isdigit()
                and len(tag.group(2)) <= _REVISION_DIGITS):
            versions.add(int(tag.group(2)))
    return frozenset(versions)


def matches(header: str, etag: str) -> bool:
    """Whether an `If-None-Match` header names this ETag (weakly: RFC 9110, 13.1.2)."""
    if header.strip() == "*":
        return True
    return any((tag := _TAG.fullmatch(item)) is not None and f'"{tag.group(2)}"' == etag
               for item in header.split(","))
