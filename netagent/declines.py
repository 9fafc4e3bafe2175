"""DHCP declines as both responders handle them: recorded in IPAM, read back from the view.

A DECLINE (RFC 2131 4.3.3, RFC 8415 18.4.8) says the client found the address IPAM
holds for its MAC in use by another machine. The responder hands it to
`DeclineRecorder.record`, which asks the allocator to keep it (`IPAM.record_decline`);
the views of every agent of the network then show it (`LeaseView.declined`) and the
address is withheld from that MAC until an operator clears it
(`ipam dhcp-declines clear`). The responders keep nothing of their own.

A client chooses what it declines, and a DECLINE costs the server I/O: what is known
already costs etcd nothing. A decline the view shows already (a retransmission, or
another agent's record), one being recorded by this agent, or one of a network that
holds `DECLINE_LIMIT` declines already is answered from the view; the allocator checks
the same again, authoritatively, for what does go to etcd.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from allocator.contract import DECLINE_LIMIT, TooManyDeclines, errors

log = logging.getLogger(__name__)

RecordDecline = Callable[[str, str, str], Awaitable[object]]
"""`record_decline(pn_id, mac, address)`: keep, in IPAM, that `mac` declined `address`,
the IP it holds in `pn_id` (the agent's is `IPAM.record_decline`). Raises
TooManyDeclines past the network's bound, another IPAMError when it could not record."""

# A flood of declines past the bound is logged once a minute per network, not per packet.
OVER_LIMIT_LOG_SECONDS = 60.0


class DeclineView(Protocol):
    """What the recorder reads of `allocator.contract.NetworkView`."""

    def declined(self, pn_id: str, mac: str, address: str) -> bool: ...

    def decline_count(self, pn_id: str) -> int: ...


class DeclineCounters(Protocol):
    """The counters of a responder that the recorder keeps."""

    declines_over_limit: int
    decline_failed: int


class DeclineRecorder:
    """Records the declines of one responder (see the module docstring)."""

    def __init__(self, view: DeclineView, record_decline: RecordDecline | None,
                 counters: DeclineCounters, protocol: str) -> None:
        self.view = view
        self.record_decline = record_decline
        self.counters = counters
        self.protocol = protocol  # "dhcp4" or "dhcp6": how log lines start
        self._recording: set[tuple[str, str, str]] = set()
        self._over_limit_logged: dict[str, float] = {}

    async def record(self, pn_id: str, mac: str, address: str) -> bool:
        """Have IPAM keep that `mac` declined `address`, the IP IPAM holds for it in
        `pn_id`. Whether the decline is dealt with: recorded (now or before) or refused
        for good (the network's bound); False when IPAM could not be asked, so that a
        client retransmitting its decline tries again."""
        withheld = (pn_id, mac, address)
        if self.view.declined(*withheld) or withheld in self._recording:
            return True
        if self.view.decline_count(pn_id) >= DECLINE_LIMIT:
            self._over_limit(pn_id, mac, address)
            return True
        if self.record_decline is None:  # a responder without IPAM (tests, the bench)
            log.warning("%s: %s declined %s in %s; not recorded (no IPAM to record it in)",
                        self.protocol, mac, address, pn_id)
            return True
        self._recording.add(withheld)
        try:
            await self.record_decline(pn_id, mac, address)
        except TooManyDeclines:
            self._over_limit(pn_id, mac, address)
            return True
        except errors.IPAMError as err:
            self.counters.decline_failed += 1
            log.warning("%s: the decline of %s by %s in %s is not recorded: %s", self.protocol,
                        address, mac, pn_id, err)
            # Refused for good (no longer the MAC's address): dealt with. Unreachable or
            # outrun: the client's retransmission may have better luck.
            return isinstance(err, (errors.PreconditionFailed, errors.InvalidArgument))
        except Exception:  # the allocator failing must not stop the agent
            self.counters.decline_failed += 1
            log.warning("%s: recording the decline of %s by %s in %s failed", self.protocol,
                        address, mac, pn_id, exc_info=True)
            return False
        finally:
            self._recording.discard(withheld)
        log.warning("%s: %s declined %s in %s (in use elsewhere?); withheld by every agent "
                    "until an operator clears it", self.protocol, mac, address, pn_id)
        return True

    def _over_limit(self, pn_id: str, mac: str, address: str) -> None:
        self.counters.declines_over_limit += 1
        now = time.monotonic()
        last = self._over_limit_logged.get(pn_id)
        if last is None or now - last >= OVER_LIMIT_LOG_SECONDS:
            self._over_limit_logged[pn_id] = now
            log.warning("%s: %s declined %s in %s, which holds %d declines, the most it may: "
                        "not recorded (%d refused so far by this agent; clear some with "
                        "`ipam dhcp-declines clear`)", self.protocol, mac, address, pn_id,
                        DECLINE_LIMIT, self.counters.declines_over_limit)
