"""A node's view of which offsets of one source are free: a hint, never the truth.

Uniqueness rests on the etcd guard alone; this cache only makes a booking's
first candidate likely to win, and lets a node pick uniformly at random among
free addresses in O(1), so that concurrent bookings spread instead of all trying
the lowest free address.

Two shapes behind one interface:
- `DenseFreeSet` for sources up to a /12-ish size: the exact free list (swap-remove
  arrays) plus one state byte per offset.
- `SparseFreeSet` for huge sources (an IPv6 /64): only the held set, and random
  probing, which almost always hits a free offset at once.

A candidate handed to an in-flight booking leaves the free set at once, so a node
never races itself.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterable
from typing import Protocol

FREE, HELD, TAKEN = 0, 1, 2


class FreeSet(Protocol):
    """What the booking engine needs from a source's cache."""

    def take(self, rng: random.Random) -> int | None: ...
    def claim(self, offset: int) -> bool: ...
    def give_back(self, offset: int) -> None: ...
    def settle_held(self, offset: int) -> None: ...
    def held(self, offset: int) -> None: ...
    def freed(self, offset: int) -> None: ...
    @property
    def free_count(self) -> int: ...
    @property
    def in_flight(self) -> int: ...


class DenseFreeSet:
    """Exact free list of a source, O(1) uniform pick, O(1) updates."""

    def __init__(self, first: int, last: int, held: Iterable[int] = ()) -> None:
        self.first, self.last = first, last
        size = last + 1
        self._state = bytearray(size)
        self._free = array("i")
        self._pos = array("i", bytes(4 * size))
        self._taken = 0
        for o in held:
            if first <= o <= last:
                self._state[o] = HELD
        for o in range(first, last + 1):
            if self._state[o] == FREE:
                self._pos[o] = len(self._free)
                self._free.append(o)

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def in_flight(self) -> int:
        return self._taken

    def _remove_free(self, offset: int) -> None:
        i = self._pos[offset]
        last = self._free.pop()
        if last != offset:
            self._free[i] = last
            self._pos[last] = i

    def _add_free(self, offset: int) -> None:
        self._pos[offset] = len(self._free)
        self._free.append(offset)

    def _in_range(self, offset: int) -> bool:
        return self.first <= offset <= self.last

    def take(self, rng: random.Random) -> int | None:
        """A free offset picked uniformly at random, now in flight; None when none is free."""
        if not self._free:
            return None
        offset = self._free[rng.randrange(len(self._free))]
        self._remove_free(offset)
        self._state[offset] = TAKEN
        self._taken += 1
        return offset

    def claim(self, offset: int) -> bool:
        """Put a chosen offset in flight; False if this node already has it in flight."""
        if not self._in_range(offset):
            return False
        state = self._state[offset]
        if state == TAKEN:
            return False
        if state == FREE:
            self._remove_free(offset)
        self._state[offset] = TAKEN
        self._taken += 1
        return True

    def give_back(self, offset: int) -> None:
        """An in-flight offset was not written: free again."""
        if self._in_range(offset) and self._state[offset] == TAKEN:
            self._taken -= 1
            self._state[offset] = FREE
            self._add_free(offset)

    def settle_held(self, offset: int) -> None:
        """An in-flight offset turned out held (ours or someone else's)."""
        if self._in_range(offset) and self._state[offset] == TAKEN:
            self._taken -= 1
            self._state[offset] = HELD

    def held(self, offset: int) -> None:
        """etcd says the offset is held (watch PUT)."""
        if self._in_range(offset) and self._state[offset] == FREE:
            self._remove_free(offset)
            self._state[offset] = HELD

    def freed(self, offset: int) -> None:
        """etcd says the offset was released (watch DELETE)."""
        if self._in_range(offset) and self._state[offset] == HELD:
            self._state[offset] = FREE
            self._add_free(offset)


class SparseFreeSet:
    """Held set of a huge source; candidates are probed uniformly at random."""

    PROBES = 64

    def __init__(self, first: int, last: int, held: Iterable[int] = ()) -> None:
        self.first, self.last = first, last
        self._held = {o for o in held if first <= o <= last}
        self._taken: set[int] = set()

    @property
    def free_count(self) -> int:
        return (self.last - self.first + 1) - len(self._held) - len(self._taken)

    @property
    def in_flight(self) -> int:
        return len(self._taken)

    def take(self, rng: random.Random) -> int | None:
        for _ in range(self.PROBES):
            offset = rng.randint(self.first, self.last)
            if offset not in self._held and offset not in self._taken:
                self._taken.add(offset)
                return offset
        return None

    def claim(self, offset: int) -> bool:
        if offset in self._taken or not self.first <= offset <= self.last:
            return False
        self._taken.add(offset)
        return True

    def give_back(self, offset: int) -> None:
        self._taken.discard(offset)

    def settle_held(self, offset: int) -> None:
        if offset in self._taken:
            self._taken.discard(offset)
            self._held.add(offset)

    def held(self, offset: int) -> None:
        if offset not in self._taken:
            self._held.add(offset)

    def freed(self, offset: int) -> None:
        self._held.discard(offset)


def free_set_for(first: int, last: int, dense: bool, held: Iterable[int]) -> FreeSet:
    """The right cache shape for a source's bookable range."""
    return DenseFreeSet(first, last, held) if dense else SparseFreeSet(first, last, held)
