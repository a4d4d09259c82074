"""Revocations across hub processes: one Redis pub/sub channel, ``<redis_prefix>:auth:revoked``.

The process that revokes drops its own cache entries at once (``TokenCache.apply``) and announces the
``Revocation`` here; every process following the channel drops them too, within the time a message takes.
Publishing is best effort and short (a revocation must not hang on a slow Redis): when a message is lost,
or this process was not listening, the cache TTL (``CODEHUB_TOKEN_CACHE_TTL``) still bounds the damage, and
(re)subscribing clears the whole cache since anything may have been missed meanwhile.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import msgspec
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.pubsub import pump_messages
from app.services.auth.access import Revocation, TokenCache
from app.settings import Settings

log = logging.getLogger(__name__)

PUBLISH_WAIT = 1.0
SUBSCRIBE_WAIT = 2.0
RETRY_MIN = 0.1
RETRY_MAX = 5.0

_decode = msgspec.json.Decoder(Revocation).decode


class RedisRevocations:
    """Announces revocations to the other hub processes and applies theirs (``follow``)."""

    def __init__(self, settings: Settings) -> None:
        self.channel = f"{settings.redis_prefix}:auth:revoked"
        self.listening = False
        common: dict[str, Any] = {"socket_connect_timeout": PUBLISH_WAIT, "socket_keepalive": True}
        self._publisher = Redis.from_url(settings.redis_url, socket_timeout=PUBLISH_WAIT, **common)
        # No retries on the subscriber: a silent reconnect inside redis-py would hide a gap in the messages.
        self._subscriber = Redis.from_url(
            settings.redis_url, socket_timeout=None, retry=Retry(NoBackoff(), 0), **common
        )

    async def announce(self, revocation: Revocation) -> None:
        """Tell the other processes (best effort, at most ``PUBLISH_WAIT`` seconds)."""
        try:
            with anyio.fail_after(PUBLISH_WAIT):
                await self._publisher.publish(self.channel, msgspec.json.encode(revocation))
        except Exception as exc:  # Redis down or slow: the other processes' cache TTL bounds the staleness
            log.warning("could not announce a revocation to the other hub processes: %s", exc)

    async def follow(self, cache: TokenCache) -> None:
        """Apply the revocations every process announces to ``cache``, forever (reconnecting with backoff)."""
        delay = 0.0
        while True:
            try:
                await self._listen(cache)
            except Exception as exc:  # Redis errors and our own bugs alike: the follower must outlive them
                log.warning("lost the revocation channel %s (%s); retrying", self.channel, exc)
            delay = RETRY_MIN if self.listening else min(max(delay * 2, RETRY_MIN), RETRY_MAX)
            self.listening = False
            await anyio.sleep(delay)

    async def aclose(self) -> None:
        """Close both Redis clients."""
        await self._publisher.aclose()
        await self._subscriber.aclose()

    async def _listen(self, cache: TokenCache) -> None:
        pubsub: Any = self._subscriber.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            with anyio.fail_after(SUBSCRIBE_WAIT):
                while (await pubsub.get_message(timeout=SUBSCRIBE_WAIT) or {}).get("type") != "subscribe":
                    pass
            cache.clear()
            self.listening = True
            await pump_messages(pubsub, lambda data: self._apply(cache, data))
        finally:
            with anyio.move_on_after(1, shield=True):
                await pubsub.aclose()

    def _apply(self, cache: TokenCache, data: bytes) -> None:
        try:
            revocation = _decode(data)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed message on %s: %r", self.channel, data[:80])
            return
        cache.apply(revocation)
