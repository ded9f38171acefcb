"""Failed logins slow down further tries, per user name and per client address.

After `FREE` failures a try waits (asynchronously: the gateway keeps serving everyone else)
`BASE_S * 2**n`, up to `MAX_DELAY_S`, before its password is checked; a correct password
still gets in, only later. An address may have only `MAX_WAITING` tries waiting at once:
more are refused at once with 429, so a flood costs the gateway nothing. Counters fade after
`WINDOW_S` of quiet. Failures are logged, each of the first ones and then every 100th.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from qserver.errors import QServerError

logger = logging.getLogger(__name__)

FREE = 5
BASE_S = 0.25
MAX_DELAY_S = 4.0
MAX_WAITING = 4
WINDOW_S = 900.0
LOG_FIRST = 5
LOG_EVERY = 100


class TooManyAttempts(QServerError):
    """Too many failed logins: the client must wait."""

    code = "too_many_requests"


@dataclass
class _Count:
    failures: int = 0
    last: float = 0.0

    def current(self, now: float) -> int:
        if now - self.last > WINDOW_S:
            self.failures = 0
        return self.failures


@dataclass
class LoginThrottle:
    users: dict[str, _Count] = field(default_factory=lambda: defaultdict(_Count))
    addresses: dict[str, _Count] = field(default_factory=lambda: defaultdict(_Count))
    waiting: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    refused: int = 0

    def delay(self, username: str, address: str) -> float:
        now = time.monotonic()
        n = max(self.users[username].current(now), self.addresses[address].current(now))
        return 0.0 if n < FREE else min(BASE_S * 2 ** (n - FREE), MAX_DELAY_S)

    async def wait_turn(self, username: str, address: str) -> None:
        """Wait as long as past failures ask; TooManyAttempts if the address has enough waiting."""
        delay = self.delay(username, address)
        if delay <= 0:
            return
        if self.waiting[address] >= MAX_WAITING:
            self.refused += 1
            if self.refused % LOG_EVERY == 1:
                logger.warning(
                    "login attempts refused without a check: %d so far (latest: %r from %s)",
                    self.refused,
                    username,
                    address,
                )
            raise TooManyAttempts(
                f"Too many failed login attempts: try again in {max(delay, 1.0):.0f} s"
            )
        self.waiting[address] += 1
        try:
            await asyncio.sleep(delay)
        finally:
            self.waiting[address] -= 1
            if not self.waiting[address]:
                del self.waiting[address]

    def failed(self, provider: str, username: str, address: str) -> None:
        now = time.monotonic()
        self._purge(now)
        for count in (self.users[username], self.addresses[address]):
            count.current(now)
            count.failures += 1
            count.last = now
        n = self.users[username].failures
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            logger.warning(
                "failed login %d for %r at provider %r from %s%s",
                n,
                username,
                provider,
                address,
                "" if n < FREE else " (further tries are slowed down)",
            )

    def succeeded(self, username: str) -> None:
        self.users.pop(username, None)

    def _purge(self, now: float) -> None:
        for table in (self.users, self.addresses):
            if len(table) > 10_000:
                for k in [k for k, c in table.items() if now - c.last > WINDOW_S]:
                    del table[k]
