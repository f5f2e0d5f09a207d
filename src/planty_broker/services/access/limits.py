"""Failure limits keyed by outside input (client addresses, account ids), bounded in memory.

`FailureLimiter` remembers, per key, the times of its last `limit` failures (a deque of
at most `limit` entries) and at most `max_keys` keys: when a new key comes and the map
is full, the key whose last failure is the oldest is forgotten (counted in `evicted`).
Eviction can only loosen a limit (for whoever floods the map), never refuse anybody.

`client_key` turns a client address into the key: an IPv6 address stands for its /64
network (one host usually holds a whole /64), anything else is used as given; a
forwarded "<peer>><caller>" (scale-out) keys the caller under its peer.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable

DEFAULT_MAX_KEYS = 10_000


def client_key(address: str) -> str:
    """The limit key of a client address: IPv4 as is, IPv6 by its /64, other names as given."""
    peer, sep, caller = address.partition(">")
    if sep:
        return f"{client_key(peer)}>{client_key(caller)}"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureLimiter:
    """At most `limit` failures per key in any `window_s`; see the module docstring."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window_s <= 0 or max_keys < 1:
            raise ValueError("limit, window_s and max_keys must be positive")
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._monotonic = monotonic
        self._keys: OrderedDict[str, deque[float]] = OrderedDict()  # oldest last failure first
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._keys)

    def _live(self, key: str, now: float) -> deque[float] | None:
        q = self._keys.get(key)
        if q is None:
            return None
        while q and now - q[0] >= self.window_s:
            q.popleft()
        if not q:
            del self._keys[key]
            return None
        return q

    def count(self, key: str) -> int:
        """Failures of `key` in the current window."""
        q = self._live(key, self._monotonic())
        return 0 if q is None else len(q)

    def retry_after(self, key: str) -> float | None:
        """Seconds until `key` may try again, or None if it is under its limit."""
        now = self._monotonic()
        q = self._live(key, now)
        if q is None or len(q) < self.limit:
            return None
        return max(1.0, self.window_s - (now - q[0]))

    def failed(self, key: str) -> None:
        """Count one failure of `key`."""
        now = self._monotonic()
        q = self._keys.get(key)
        if q is None:
            while len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
                self.evicted += 1
            q = self._keys[key] = deque(maxlen=self.limit)
        else:
            self._keys.move_to_end(key)
        q.append(now)

    def clear(self, key: str) -> None:
        self._keys.pop(key, None)
