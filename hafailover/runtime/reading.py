"""When this node reads its socket, and the receipt time a datagram read late is handled with.

A node that leads groups wakes for its own round anyway; reading every datagram as it comes
adds a wake-up per peer and round (their acknowledgements, their rounds), and each step of a
datagram in a wake-up of its own pays its code cold. Read together at the round, a 50-group
node cost 8-18 % less; the holder of one group, woken half as often, the same until the
datagrams of a drain that came in together were taken as one step (`Engine._gather`;
docs/architecture.md, "Reading the socket at the round"). So while the core says the
node is *settled* (`Groups.settled`: every group has a leader, this node has a round due within
an interval, every peer was heard lately), the socket is taken off the loop (`defer`) and read
when the engine's timer wakes it (`drain`), which is at its round at the latest.

A datagram read late is handled as if it had been read when it came in: the kernel stamps its
arrival (`SO_TIMESTAMPNS`, on the real-time clock) and `receipt` maps the stamp onto the
engine's clock through the offset between the two clocks, measured at the start of the drain.
The core then renews a follower's promise and a peer's contact from arrival, so failure
detection is not delayed by the late read, and what it sends in reply leaves at once.

Safety: a promise must not start before the heartbeat that backs it was sent, so a receipt time
must never be earlier than the true arrival. The offset is the same at arrival and at the drain
unless the real-time clock was stepped in between (slewing moves both clocks alike). The offset
is measured at every drain and compared with the previous drain's: if it moved by more than
`STAMP_TOLERANCE` (or this is the first drain since reading was deferred), no stamp of this
drain is trusted and its datagrams are handled at the time they are read, as they would be
without deferral. A trusted stamp is moved `STAMP_TOLERANCE` later, which covers any step
smaller than the tolerance, and never later than now or earlier than an interval ago. Later is
always the safe direction: a promise then lasts longer than it has to.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Protocol

# A step of the real-time clock this large between two drains makes the stamps of the second
# one untrusted; a trusted stamp is moved this much later.
STAMP_TOLERANCE: Final = 0.001


class Deferrable(Protocol):
    """What of the transport (`TransportPort`) this needs."""

    def defer(self, on: bool) -> None: ...

    def drain(self) -> bool: ...


class SocketReading:
    """The node's way of reading its socket: at once, or deferred to the engine's wake-ups."""

    def __init__(
        self,
        transport: Deferrable,
        clock: Callable[[], float],
        interval: float,
        realtime: Callable[[], float] = time.time,
    ) -> None:
        self._transport = transport
        self._clock = clock
        self._interval = interval
        self._realtime = realtime
        self.deferred = False
        self._offset: float | None = None  # real-time minus engine clock at the last drain
        self._trusted: float | None = None  # that offset during a drain whose stamps are trusted
        self.drains = 0
        self.untrusted_drains = 0

    def settle(self, settled: bool) -> None:
        """Defer reading while `settled`; read every datagram as it comes otherwise."""
        if settled == self.deferred:
            return
        self._transport.defer(settled)
        self.deferred = settled
        self._offset = None  # what came in before this instant has no offset to compare with

    def drain(self) -> None:
        """Read everything that came in since the last drain (the engine calls it when its
        timer wakes it, before the timer's step). More than the transport drains at once:
        back to reading at once, so that the rest is read without waiting for a round."""
        offset = self._realtime() - self._clock()
        previous, self._offset = self._offset, offset
        if previous is not None and abs(offset - previous) <= STAMP_TOLERANCE:
            self._trusted = offset
        else:
            self.untrusted_drains += 1
        self.drains += 1
        try:
            complete = self._transport.drain()
        finally:
            self._trusted = None
        if not complete:
            self.settle(False)

    def receipt(self, stamp: float | None) -> float | None:
        """The time a datagram read now with kernel stamp `stamp` is handled at; None: now."""
        if stamp is None or self._trusted is None:
            return None
        now = self._clock()
        return min(now, max(stamp - self._trusted + STAMP_TOLERANCE, now - self._interval))
