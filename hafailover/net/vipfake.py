"""In-memory `VipPort` for tests (engine, VIP manager, announcer): no kernel, no privileges."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from hafailover.net.vip import Vip, VipError, kernel_lifetime


class FakeVipPort:
    """In-memory VipPort for tests: records every call, keeps the address state and lifetimes.

    `fail[name] = VipError(...)` makes every call of method `name` fail ("add", "renew",
    "remove", "present", "cleanup_stale"); `fail_next(name, error, times)` only the next ones.
    A failed `add` leaves nothing added (as the real port's roll-back). With `clock`, an address
    whose lifetime has run out is gone, as the kernel would do it; `drop()` removes one behind
    the port's back (and `renew` re-creates it, as the kernel does).
    """

    def __init__(
        self,
        *,
        stale: Iterable[Vip] = (),
        macs: dict[str, bytes] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.clock = clock
        self.expiry: dict[Vip, float | None] = dict.fromkeys(stale)  # None: forever
        self.lifetimes: dict[Vip, float | None] = dict.fromkeys(stale)
        self.macs = dict(macs or {})
        self.calls: list[tuple[str, tuple[Vip, ...]]] = []
        self.fail: dict[str, VipError] = {}
        self._fail_next: dict[str, list[VipError]] = {}
        self.closed = False

    def fail_next(self, name: str, error: VipError, times: int = 1) -> None:
        self._fail_next.setdefault(name, []).extend([error] * times)

    @property
    def state(self) -> set[Vip]:
        """Every address currently "on" an interface."""
        self._expire()
        return set(self.expiry)

    def holds(self, vips: Iterable[Vip]) -> bool:
        return all(v in self.state for v in vips)

    def drop(self, vip: Vip) -> None:
        self.expiry.pop(vip, None)

    def _expire(self) -> None:
        if self.clock is None:
            return
        now = self.clock()
        for vip, t in list(self.expiry.items()):
            if t is not None and now >= t:
                del self.expiry[vip]

    def _call(self, name: str, vips: Sequence[Vip] = ()) -> None:
        self.calls.append((name, tuple(vips)))
        if self.closed:
            raise VipError("the VIP port is closed")
        queued = self._fail_next.get(name)
        if queued:
            raise queued.pop(0)
        if name in self.fail:
            raise self.fail[name]
        self._expire()

    def _until(self, lifetime: float | None) -> float | None:
        if lifetime is None or self.clock is None:
            return None
        return self.clock() + kernel_lifetime(lifetime)

    async def add(self, vips: Sequence[Vip], lifetime: float | None) -> None:
        kernel_lifetime(lifetime)
        self._call("add", vips)
        for vip in vips:
            self.expiry[vip] = self._until(lifetime)
            self.lifetimes[vip] = lifetime

    async def renew(self, vips: Sequence[Vip], lifetime: float) -> None:
        kernel_lifetime(lifetime)
        self._call("renew", vips)
        for vip in vips:  # one that is gone is re-created, as by the kernel
            self.expiry[vip] = self._until(lifetime)
            self.lifetimes[vip] = lifetime

    async def remove(self, vips: Sequence[Vip]) -> None:
        self._call("remove", vips)
        for vip in vips:
            self.expiry.pop(vip, None)

    async def present(self, vips: Sequence[Vip]) -> list[Vip]:
        self._call("present", vips)
        return [v for v in dict.fromkeys(vips) if v in self.expiry]

    async def cleanup_stale(self, vips: Sequence[Vip]) -> list[Vip]:
        self._call("cleanup_stale", vips)
        wanted = {(v.ip, v.interface) for v in vips}
        removed = sorted((v for v in self.expiry if (v.ip, v.interface) in wanted), key=str)
        for vip in removed:
            del self.expiry[vip]
        return removed

    def interface_mac(self, ifname: str) -> bytes:
        self.calls.append(("interface_mac", ()))
        if ifname not in self.macs:
            # Locally administered, derived from the name so that it is stable across calls.
            self.macs[ifname] = bytes([0x02, 0, 0, 0, 0, (sum(ifname.encode()) % 254) + 1])
        return self.macs[ifname]

    async def close(self) -> None:
        self.calls.append(("close", ()))
        self.closed = True
